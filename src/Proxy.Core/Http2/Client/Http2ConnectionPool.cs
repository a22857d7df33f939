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
    private TaskCompletionSource? _connecting;
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

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<(Http2ClientStream? Stream, ConnectError Error)> RentOrOpenAsync(ClusterBreaker? breaker)
    {
        for (int round = 0; round < 16; round++)
        {
            TaskCompletionSource? pending;
            TaskCompletionSource? mine = null;
            lock (_connections)
            {
                foreach (Http2ClientConnection connection in _connections)
                {
                    if (connection.TryReserveStream() is { } stream)
                    {
                        return (stream, ConnectError.None);
                    }
                }
                pending = _connecting;
                if (pending is null)
                {
                    _connecting = mine = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }
            }
            if (pending is not null)
            {
                await pending.Task.ConfigureAwait(false);
                continue;
            }
            try
            {
                ConnectError error = await OpenAsync(breaker).ConfigureAwait(false);
                if (error != ConnectError.None || _http1)
                {
                    return (null, error);
                }
            }
            finally
            {
                lock (_connections)
                {
                    _connecting = null;
                }
                mine!.SetResult();
            }
        }
        return (null, ConnectError.PoolExhausted);
    }

    private async ValueTask<ConnectError> OpenAsync(ClusterBreaker? breaker)
    {
        if (breaker is not null && !breaker.TryEnterPending())
        {
            return ConnectError.Overloaded;
        }
        var (transport, error) = await _pool.ConnectAsync().ConfigureAwait(false);
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

    internal void StreamReleased(Http2ClientConnection connection) => Interlocked.Decrement(ref _activeStreams);

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
