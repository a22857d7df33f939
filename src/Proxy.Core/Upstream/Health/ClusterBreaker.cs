using Proxy.Model;

namespace Proxy.Upstream;

/// <summary>
/// Circuit breaker counters of one cluster (Envoy's sense: hard concurrency limits, not an open/closed state
/// machine). Each limit is an interlocked counter taken optimistically and given back when over: a request past a
/// limit is refused at once, never queued. Shared by every connection; one interlocked add per request and limit.
/// </summary>
internal sealed class ClusterBreaker
{
    private readonly CircuitBreakerModel _limits;
    private int _requests;
    private int _pending;
    private int _connections;
    private long _overflows;

    public ClusterBreaker(CircuitBreakerModel limits) => _limits = limits;

    public CircuitBreakerModel Limits => _limits;
    public int Requests => Volatile.Read(ref _requests);
    public int Pending => Volatile.Read(ref _pending);
    public int Connections => Volatile.Read(ref _connections);
    /// <summary>Requests refused because a limit was reached, since start.</summary>
    public long Overflows => Interlocked.Read(ref _overflows);

    public bool TryEnterRequest() => TryEnter(ref _requests, _limits.MaxRequests);
    public void ExitRequest() => Interlocked.Decrement(ref _requests);

    public bool TryEnterPending() => TryEnter(ref _pending, _limits.MaxPending);
    public void ExitPending() => Interlocked.Decrement(ref _pending);

    /// <summary>
    /// A connection may open below max_connections, and always when its destination has none: the limit counts idle
    /// pooled connections too, so without that a destination could be starved by another's idle ones and refuse every
    /// request while nothing is in flight (Envoy's pools make the same exception). The count goes past the limit then.
    /// </summary>
    public bool TryOpenConnection(bool destinationHasNone)
    {
        if (destinationHasNone)
        {
            Interlocked.Increment(ref _connections);
            return true;
        }
        return TryEnter(ref _connections, _limits.MaxConnections);
    }
    public void ConnectionClosed() => Interlocked.Decrement(ref _connections);

    private bool TryEnter(ref int counter, int limit)
    {
        if (Interlocked.Increment(ref counter) <= limit)
        {
            return true;
        }
        Interlocked.Decrement(ref counter);
        Interlocked.Increment(ref _overflows);
        return false;
    }
}
