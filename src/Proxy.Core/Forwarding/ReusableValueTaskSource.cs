using System.Threading.Tasks.Sources;

namespace Proxy.Forwarding;

/// <summary>
/// A resettable <see cref="IValueTaskSource{T}"/>: one instance serves every request of a connection, so awaiting
/// it allocates nothing. Continuations run inline on the completing thread (never blocked here: the socket engine's
/// inline completions already run the whole exchange on one thread).
/// Not thread-safe beyond the await contract: one producer, one awaiter at a time.
/// </summary>
internal sealed class ReusableValueTaskSource<T> : IValueTaskSource<T>
{
    private ManualResetValueTaskSourceCore<T> _core = new() { RunContinuationsAsynchronously = false };

    /// <summary>Prepares for the next operation; call after the previous result was consumed.</summary>
    public void Reset() => _core.Reset();

    public ValueTask<T> Task => new(this, _core.Version);

    public void SetResult(T result) => _core.SetResult(result);

    public void SetException(Exception error) => _core.SetException(error);

    public T GetResult(short token) => _core.GetResult(token);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
