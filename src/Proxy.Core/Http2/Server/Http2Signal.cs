using System.Threading.Tasks.Sources;

namespace Proxy.Http2.Server;

/// <summary>
/// An auto-reset wake-up for one waiter (a stream waiting for send window or for the connection's output to
/// drain): <see cref="Set"/> from any thread, <see cref="WaitAsync"/> from the owner. A Set that comes before the
/// wait is remembered, so no wake-up is lost. Reused for the stream's life: waiting allocates nothing.
/// </summary>
internal sealed class Http2Signal : IValueTaskSource
{
    private const int Idle = 0, Waiting = 1, Signaled = 2;

    // Continuations go to the thread pool: Set runs on the connection's read loop, which must not run a stream.
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private int _state;

    public ValueTask WaitAsync()
    {
        if (Interlocked.CompareExchange(ref _state, Idle, Signaled) == Signaled)
        {
            return default;
        }
        _core.Reset();
        if (Interlocked.CompareExchange(ref _state, Waiting, Idle) != Idle)
        {
            // Set ran between the two exchanges.
            Volatile.Write(ref _state, Idle);
            return default;
        }
        return new ValueTask(this, _core.Version);
    }

    public void Set()
    {
        while (true)
        {
            int state = Volatile.Read(ref _state);
            if (state == Signaled)
            {
                return;
            }
            if (state == Idle)
            {
                if (Interlocked.CompareExchange(ref _state, Signaled, Idle) == Idle)
                {
                    return;
                }
                continue;
            }
            if (Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting)
            {
                _core.SetResult(true);
                return;
            }
        }
    }

    /// <summary>Forgets a pending wake-up (a pooled stream starting over).</summary>
    public void Reset() => Volatile.Write(ref _state, Idle);

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
