using System.Diagnostics;
using System.Runtime.CompilerServices;
using Proxy.Model;
using Proxy.Upstream;

namespace Proxy.Http2.Client;

/// <summary>
/// HTTP/2 connections to one destination, each carrying up to min(<c>http2.max_streams_per_connection</c>, the peer's
/// SETTINGS_MAX_CONCURRENT_STREAMS) streams. A stream goes on the first connection with room (so load packs onto few
/// connections and idle ones age out); a new connection is opened only when all are full, by one caller at a time
/// while the others wait for it. Sockets, TLS, <c>max_connections</c> and the breaker's connection limit are the
/// destination's <see cref="ConnectionPool"/>'s: an HTTP/2 connection holds one of its slots for its life.
/// <para>Concurrency: the list and the opener are guarded by locking the list; held for a scan, never across I/O.</para>
/// </summary>
internal sealed class Http2ConnectionPool
{
    private readonly ConnectionPool _pool;
    private readonly List<Http2ClientConnection> _connections = [];
    private readonly TimeSpan _idleTimeout;
    private volatile bool _http1;
    private volatile bool _retired;

    public Http2ConnectionPool(ConnectionPool pool, DestinationState destination, ClusterModel cluster)
    {
        _pool = pool;
        Destination = destination;
        MaxStreamsCap = cluster.Http2MaxStreams;
        _idleTimeout = cluster.IdleTimeout;
    }

    public DestinationState Destination { get; }
    public int MaxStreamsCap { get; }
    public bool Retired => _retired;

    /// <summary>False once an <c>auto</c> destination picked http/1.1 in ALPN: its requests take the HTTP/1.1 path.</summary>
    public bool UseHttp2 => !_http1;

    public int OpenConnections
    {
        get
        {
            lock (_connections)
            {
                return _connections.Count;
            }
        }
    }

    /// <summary>
    /// A reserved stream on a connection with room, opening a connection when every one is full. (null, None): an
    /// <c>auto</c> destination answered ALPN with http/1.1; the connection went to the HTTP/1.1 pool for the caller.
    /// </summary>
    public ValueTask<(Http2ClientStream? Stream, ConnectError Error)> RentStreamAsync(ClusterBreaker? breaker)
    {
        // The common case, a connection with room, completes synchronously and is not timed.
        lock (_connections)
        {
            foreach (Http2ClientConnection connection in _connections)
            {
                if (connection.TryReserveStream() is { } stream)
                {
                    return new ValueTask<(Http2ClientStream?, ConnectError)>((stream, ConnectError.None));
                }
            }
        }
        return WaitForStreamAsync(breaker);
    }

    /// <summary>Every connection is at its stream cap (or there is none): the wait is counted as a pool wait.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<(Http2ClientStream? Stream, ConnectError Error)> WaitForStreamAsync(ClusterBreaker? breaker)
    {
        long started = Stopwatch.GetTimestamp();
        var result = await RentOrOpenAsync(breaker).ConfigureAwait(false);
        // (null, None) is an auto destination that turned out to speak HTTP/1.1: its request takes that path, not counted here.
        if (result.Stream is not null || result.Error != ConnectError.None)
        {
            _pool.Metrics?.PoolWaited(Stopwatch.GetTimestamp() - started);
        }
        return result;
    }

    /// <summary>
    /// Every connection is full: one caller at a time opens a connection, if the destination's <c>max_connections</c>
    /// has a slot free now; everyone else (and the opener, at the cap) waits for something to change (a stream ends, a
    /// connection opens or closes, a slot frees) and looks again, until <c>connect_timeout</c> has passed since the
    /// request began to wait. (Waiting at the cap for a slot alone, as the pool first did, left requests waiting while
    /// streams ended on the open connections: with one connection of two streams, the third request hung.)
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<(Http2ClientStream? Stream, ConnectError Error)> RentOrOpenAsync(ClusterBreaker? breaker)
    {
        long deadline = Environment.TickCount64 + (long)_pool.ConnectTimeout.TotalMilliseconds;
        // Counted before the first look, so that a stream ending between that look and the wait signals (StreamReleased).
        Interlocked.Increment(ref _waiting);
        try
        {
            while (true)
            {
                Task changed;
                bool opener = false;
                lock (_connections)
                {
                    foreach (Http2ClientConnection connection in _connections)
                    {
                        if (connection.TryReserveStream() is { } stream)
                        {
                            return (stream, ConnectError.None);
                        }
                    }
                    if (!_opening && _pool.HasFreeSlot)
                    {
                        _opening = opener = true;
                    }
                    changed = (_changed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
                }
                if (opener)
                {
                    ConnectError error;
                    try
                    {
                        error = await OpenAsync(breaker).ConfigureAwait(false);
                    }
                    finally
                    {
                        lock (_connections)
                        {
                            _opening = false;
                        }
                        SignalChanged();
                    }
                    if (_http1 || (error != ConnectError.None && error != ConnectError.PoolExhausted))
                    {
                        return (null, error);
                    }
                    continue; // opened (the stream is reserved on the next look), or the slot went to someone else
                }
                long left = deadline - Environment.TickCount64;
                if (left <= 0)
                {
                    _pool.Metrics?.ConnectFailed(ConnectError.PoolExhausted);
                    return (null, ConnectError.PoolExhausted);
                }
                try
                {
                    await changed.WaitAsync(TimeSpan.FromMilliseconds(left)).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                }
            }
        }
        finally
        {
            Interlocked.Decrement(ref _waiting);
        }
    }

    /// <summary>Set while one caller opens a connection (under the list's lock).</summary>
    private bool _opening;
    /// <summary>Completed (and replaced) when a waiting caller may find room: under the list's lock.</summary>
    private TaskCompletionSource? _changed;
    /// <summary>Callers in <see cref="RentOrOpenAsync"/>: a stream's end signals only when there are some.</summary>
    private int _waiting;

    /// <summary>Wakes the waiting callers to look again.</summary>
    private void SignalChanged()
    {
        TaskCompletionSource? changed;
        lock (_connections)
        {
            changed = _changed;
            _changed = null;
        }
        changed?.TrySetResult();
    }

    /// <summary>The destination's pool freed a slot: a waiting caller may open a connection.</summary>
    internal void SlotFreed()
    {
        if (Volatile.Read(ref _waiting) > 0)
        {
            SignalChanged();
        }
    }

    private async ValueTask<ConnectError> OpenAsync(ClusterBreaker? breaker)
    {
        if (breaker is not null && !breaker.TryEnterPending())
        {
            return ConnectError.Overloaded;
        }
        var (transport, error) = await _pool.ConnectAsync(wait: false).ConfigureAwait(false);
        breaker?.ExitPending();
        if (transport is null)
        {
            return error;
        }
        if (!transport.IsHttp2)
        {
            // auto, and the peer chose http/1.1: remember it, and hand this connection to the HTTP/1.1 path.
            _http1 = true;
            _pool.Return(transport);
            return ConnectError.None;
        }
        var connection = new Http2ClientConnection(transport, this, MaxStreamsCap);
        if (!await connection.StartAsync().ConfigureAwait(false))
        {
            connection.Close();
            return ConnectError.Refused;
        }
        lock (_connections)
        {
            _connections.Add(connection);
        }
        return ConnectError.None;
    }

    /// <summary>Streams reserved and not yet released on this destination's connections (one interlocked add each way).</summary>
    private int _activeStreams;

    /// <summary>Open streams to this destination, for the <c>proxy_upstream_http2_streams_active</c> gauge.</summary>
    public int ActiveStreams => Volatile.Read(ref _activeStreams);

    internal void StreamReserved() => Interlocked.Increment(ref _activeStreams);

    /// <summary>
    /// A stream ended (its connection's count is already down). The decrement is a full fence before the read of
    /// <see cref="_waiting"/>, which a waiter raises before it looks: either it sees the room, or it is woken.
    /// </summary>
    internal void StreamReleased(Http2ClientConnection connection)
    {
        Interlocked.Decrement(ref _activeStreams);
        if (Volatile.Read(ref _waiting) > 0)
        {
            SignalChanged();
        }
    }

    /// <summary>GOAWAY: no new streams on it; it closes by itself once its last stream ends.</summary>
    internal void ConnectionGoingAway(Http2ClientConnection connection)
    {
        lock (_connections)
        {
            _connections.Remove(connection);
        }
    }

    internal void ConnectionClosed(Http2ClientConnection connection)
    {
        lock (_connections)
        {
            _connections.Remove(connection);
        }
        SlotFreed();
    }

    /// <summary>Closes connections without streams for longer than idle_timeout (heartbeat).</summary>
    public void EvictIdle(long now)
    {
        long limit = now - (long)_idleTimeout.TotalMilliseconds;
        CloseWhere(limit);
    }

    /// <summary>Closes every connection without streams (shutdown, reload).</summary>
    public void CloseIdle() => CloseWhere(long.MaxValue);

    /// <summary>The cluster was replaced: idle connections close now, busy ones when their last stream ends.</summary>
    public void Retire()
    {
        _retired = true;
        CloseIdle();
    }

    private void CloseWhere(long idleBefore)
    {
        List<Http2ClientConnection>? close = null;
        lock (_connections)
        {
            for (int i = _connections.Count - 1; i >= 0; i--)
            {
                Http2ClientConnection c = _connections[i];
                if (c.ActiveStreams == 0 && c.IdleSince < idleBefore)
                {
                    (close ??= []).Add(c);
                    _connections.RemoveAt(i);
                }
            }
        }
        if (close is null)
        {
            return;
        }
        foreach (Http2ClientConnection c in close)
        {
            c.Close();
        }
    }
}
