using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Proxy.Diagnostics;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Transport.Tls;

namespace Proxy.Upstream;

internal enum ConnectError : byte
{
    None = 0,
    Refused,
    Timeout,
    /// <summary>max_connections reached and no connection freed up within connect_timeout.</summary>
    PoolExhausted,
    /// <summary>The cluster's circuit breaker max_connections is reached (no wait: refused at once).</summary>
    Overloaded,
    /// <summary>An https:// destination: the TLS handshake failed (untrusted or expired certificate, name mismatch, protocol).</summary>
    TlsFailed,
}

/// <summary>
/// Keep-alive connections to one destination. Idle connections sit in a LIFO stack (the most recently used
/// one is the warmest and least likely to have been closed by the peer); opening is capped by
/// <c>max_connections</c>. At the cap, callers queue (first come, first served) for up to <c>connect_timeout</c>:
/// a connection that comes back from an exchange goes straight to the oldest caller that can take one, and a
/// connection that closes hands its slot to the oldest caller, who opens a new one. (Waiting only for a slot, as the
/// pool first did, left callers queued while connections sat idle: under a burst above the cap, requests were turned
/// away with 503 <c>upstream_pool_exhausted</c> that a returning connection could have served.) One lock guards the
/// stack, the free slots and the queue; it is held for a push, a pop or a hand-over.
/// </summary>
internal sealed class ConnectionPool
{
    private readonly DestinationState _destination;
    private readonly Stack<UpstreamConnection> _idle = new();
    /// <summary>Connections that may still be opened (max_connections minus the open and opening ones); under the idle lock.</summary>
    private int _freeSlots;
    /// <summary>Callers waiting at the cap, oldest first; under the idle lock.</summary>
    private readonly LinkedList<PoolWaiter> _waiters = new();
    private readonly TimeSpan _connectTimeout;
    private readonly TimeSpan _idleTimeout;
    private readonly IPEndPoint? _endPoint;
    private readonly ClusterMetrics? _metrics;
    private readonly ClusterBreaker? _breaker;
    /// <summary>Client options for an https:// destination (built once, copied by each SslStream); null for http://.</summary>
    private readonly SslClientAuthenticationOptions? _tls;
    private int _open;
    /// <summary>Set under the idle lock once a reload dropped the cluster: returned connections are closed, not kept.</summary>
    private bool _retired;
    private readonly UpstreamProtocol _protocol;

    public ConnectionPool(DestinationState destination, ClusterModel cluster)
    {
        _destination = destination;
        _freeSlots = cluster.MaxConnections;
        _connectTimeout = cluster.ConnectTimeout;
        _idleTimeout = cluster.IdleTimeout;
        _metrics = cluster.Metrics;
        _breaker = cluster.Breaker;
        if (IPAddress.TryParse(destination.Host, out var address))
        {
            _endPoint = new IPEndPoint(address, destination.Port);
        }
        _protocol = cluster.Protocol;
        if (destination.Secure)
        {
            _tls = (cluster.Tls ?? UpstreamTlsModel.Default).ClientOptions(destination.Host, _protocol);
        }
        // auto on a cleartext destination is HTTP/1.1 (no ALPN to ask with; docs/http2.md).
        if (_protocol is UpstreamProtocol.H2 or UpstreamProtocol.H2c || (_protocol == UpstreamProtocol.Auto && destination.Secure))
        {
            Http2 = new Proxy.Http2.Client.Http2ConnectionPool(this, destination, cluster);
        }
    }

    /// <summary>The multiplexed HTTP/2 pool when the cluster's protocol is h2, h2c or auto over TLS; null for HTTP/1.1.</summary>
    public Proxy.Http2.Client.Http2ConnectionPool? Http2 { get; }

    public int OpenConnections => Volatile.Read(ref _open);

    /// <summary>The cluster's counters (null when the pool was built without them, as in unit tests).</summary>
    internal ClusterMetrics? Metrics => _metrics;

    public int IdleConnections
    {
        get
        {
            lock (_idle)
            {
                return _idle.Count;
            }
        }
    }

    /// <summary>Takes a live idle connection, or null when there is none.</summary>
    public UpstreamConnection? TryRentIdle()
    {
        while (true)
        {
            UpstreamConnection? connection;
            lock (_idle)
            {
                if (!_idle.TryPop(out connection))
                {
                    return null;
                }
            }
            if (!connection.LooksDead())
            {
                return connection;
            }
            connection.Dispose();
        }
    }

    /// <summary>The cluster's connect_timeout: also how long a request waits at the max_connections cap.</summary>
    public TimeSpan ConnectTimeout => _connectTimeout;

    /// <summary>A connection may be opened now (a hint: another caller may take the slot first).</summary>
    public bool HasFreeSlot
    {
        get
        {
            lock (_idle)
            {
                return _freeSlots > 0;
            }
        }
    }

    /// <summary>
    /// Opens a new connection within connect_timeout and the max_connections cap. At the cap the caller waits in line;
    /// with <paramref name="takesReturned"/> it may be handed a kept-alive connection that an exchange just gave back
    /// (HTTP/1.1 requests) instead of a slot to open one. Without <paramref name="wait"/> (the HTTP/2 pool, which also
    /// waits for streams to end), PoolExhausted at once when no slot is free.
    /// </summary>
    public async ValueTask<(UpstreamConnection? Connection, ConnectError Error)> ConnectAsync(bool takesReturned = false, bool wait = true)
    {
        long started = Environment.TickCount64;
        PoolWaiter? waiter = null;
        lock (_idle)
        {
            if (_freeSlots > 0)
            {
                _freeSlots--;
            }
            else if (!wait)
            {
                return (null, ConnectError.PoolExhausted); // the HTTP/2 pool waits in its own way (for a stream or a slot)
            }
            else
            {
                waiter = new PoolWaiter(takesReturned);
                waiter.Node = _waiters.AddLast(waiter);
            }
        }
        if (waiter is not null)
        {
            UpstreamConnection? handed;
            try
            {
                handed = await waiter.Task.WaitAsync(_connectTimeout).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                bool queued;
                lock (_idle)
                {
                    queued = waiter.Node!.List is not null;
                    if (queued)
                    {
                        _waiters.Remove(waiter.Node);
                    }
                }
                if (queued)
                {
                    _metrics?.ConnectFailed(ConnectError.PoolExhausted);
                    return (null, ConnectError.PoolExhausted);
                }
                // Handed a connection or a slot just as the wait ran out: take it (it is being completed now).
                handed = await waiter.Task.ConfigureAwait(false);
            }
            if (handed is not null)
            {
                return (handed, ConnectError.None);
            }
            // A slot: open a connection below.
        }
        if (_breaker is not null && !_breaker.TryOpenConnection(destinationHasNone: Volatile.Read(ref _open) == 0))
        {
            ReleaseSlot();
            return (null, ConnectError.Overloaded);
        }
        Interlocked.Increment(ref _open);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        SslStream? tls = null;
        try
        {
            // One deadline for connect and handshake: connect_timeout bounds the whole wait for a usable connection.
            var remaining = _connectTimeout - TimeSpan.FromMilliseconds(Environment.TickCount64 - started);
            using var cts = new CancellationTokenSource(remaining > TimeSpan.Zero ? remaining : TimeSpan.FromMilliseconds(1));
            Stream network;
            if (_endPoint is not null)
            {
                network = await SocketPipes.ConnectAsync(socket, _endPoint, cts.Token).ConfigureAwait(false);
            }
            else
            {
                // A host name (every address tried in turn): the runtime connects, and its engine then owns the
                // socket, so the stream is a NetworkStream whatever PROXY_SOCKET_ENGINE says.
                await socket.ConnectAsync(_destination.Host, _destination.Port, cts.Token).ConfigureAwait(false);
                network = new NetworkStream(socket, ownsSocket: false);
            }
            if (_tls is not null)
            {
                tls = new SslStream(network, leaveInnerStreamOpen: false);
                try
                {
                    await tls.AuthenticateAsClientAsync(_tls, cts.Token).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    TlsLog.UpstreamHandshakeFailed(_destination.Address, _tls.TargetHost ?? "", e);
                    tls.Dispose();
                    socket.Dispose();
                    OnConnectionClosed();
                    _metrics?.ConnectFailed(ConnectError.TlsFailed);
                    return (null, ConnectError.TlsFailed);
                }
                bool h2 = tls.NegotiatedApplicationProtocol == SslApplicationProtocol.Http2;
                if (_protocol == UpstreamProtocol.H2 && !h2)
                {
                    // protocol h2 requires the peer to pick h2 (RFC 9113 section 3.2): fail the connect, not the exchange.
                    TlsLog.UpstreamHandshakeFailed(_destination.Address, _tls.TargetHost ?? "",
                        new AuthenticationException("the upstream did not select h2 in ALPN (protocol: h2)"));
                    tls.Dispose();
                    socket.Dispose();
                    OnConnectionClosed();
                    _metrics?.ConnectFailed(ConnectError.TlsFailed);
                    return (null, ConnectError.TlsFailed);
                }
                _metrics?.ConnectionOpened();
                return (new UpstreamConnection(socket, network, tls, _destination) { IsHttp2 = h2 && _protocol != UpstreamProtocol.Http1 }, ConnectError.None);
            }
            _metrics?.ConnectionOpened();
            return (new UpstreamConnection(socket, network, _destination) { IsHttp2 = _protocol == UpstreamProtocol.H2c }, ConnectError.None);
        }
        catch (OperationCanceledException)
        {
            tls?.Dispose();
            socket.Dispose();
            OnConnectionClosed();
            _metrics?.ConnectFailed(ConnectError.Timeout);
            return (null, ConnectError.Timeout);
        }
        catch (Exception)
        {
            tls?.Dispose();
            socket.Dispose();
            OnConnectionClosed();
            _metrics?.ConnectFailed(ConnectError.Refused);
            return (null, ConnectError.Refused);
        }
    }

    /// <summary>Returns a connection whose last exchange completed cleanly.</summary>
    public void Return(UpstreamConnection connection)
    {
        connection.RequestCount++;
        connection.IdleSince = Environment.TickCount64;
        PoolWaiter? waiter = null;
        lock (_idle)
        {
            if (!_retired)
            {
                waiter = TakeWaiter(takesReturned: true);
                if (waiter is null)
                {
                    _idle.Push(connection);
                    return;
                }
            }
        }
        if (waiter is null)
        {
            connection.Dispose();
            return;
        }
        waiter.SetResult(connection);
    }

    /// <summary>The oldest waiter (that takes a returned connection, when asked), out of the queue; null if none. Under the idle lock.</summary>
    private PoolWaiter? TakeWaiter(bool takesReturned)
    {
        for (LinkedListNode<PoolWaiter>? node = _waiters.First; node is not null; node = node.Next)
        {
            if (!takesReturned || node.Value.TakesReturned)
            {
                _waiters.Remove(node);
                return node.Value;
            }
        }
        return null;
    }

    /// <summary>A connection closed (or was never opened): its slot goes to the oldest waiter, or back to the free ones.</summary>
    private void ReleaseSlot()
    {
        PoolWaiter? waiter;
        lock (_idle)
        {
            waiter = TakeWaiter(takesReturned: false);
            if (waiter is null)
            {
                _freeSlots++;
            }
        }
        if (waiter is null)
        {
            Http2?.SlotFreed();
            return;
        }
        waiter.SetResult(null);
    }

    /// <summary>
    /// A reload replaced or removed the cluster: closes the idle connections now, and each busy one when its
    /// exchange ends (requests in flight finish on the snapshot they started with).
    /// </summary>
    public void Retire()
    {
        lock (_idle)
        {
            _retired = true;
        }
        Http2?.Retire();
        CloseIdle();
    }

    internal void OnConnectionClosed()
    {
        _breaker?.ConnectionClosed();
        Interlocked.Decrement(ref _open);
        ReleaseSlot();
    }

    /// <summary>Closes connections idle for longer than idle_timeout (heartbeat).</summary>
    public void EvictIdle(long now)
    {
        Http2?.EvictIdle(now);
        List<UpstreamConnection>? expired = null;
        lock (_idle)
        {
            if (_idle.Count == 0)
            {
                return;
            }
            long limit = now - (long)_idleTimeout.TotalMilliseconds;
            var keep = new List<UpstreamConnection>(_idle.Count);
            // Stack enumerates newest first.
            foreach (var c in _idle)
            {
                if (c.IdleSince < limit)
                {
                    (expired ??= []).Add(c);
                }
                else
                {
                    keep.Add(c);
                }
            }
            if (expired is null)
            {
                return;
            }
            _idle.Clear();
            for (int i = keep.Count - 1; i >= 0; i--)
            {
                _idle.Push(keep[i]);
            }
        }
        foreach (var c in expired)
        {
            c.Dispose();
        }
    }

    /// <summary>Closes every idle connection (shutdown).</summary>
    public void CloseIdle()
    {
        Http2?.CloseIdle();
        UpstreamConnection[] all;
        lock (_idle)
        {
            all = _idle.ToArray();
            _idle.Clear();
        }
        foreach (var c in all)
        {
            c.Dispose();
        }
        if (all.Length > 0)
        {
            ProxyLog.Write(ProxyLogLevel.Debug, "upstream_pool_closed", ("destination", _destination.Address), ("closed", all.Length));
        }
    }
}

/// <summary>
/// A caller waiting at the max_connections cap: completed with a returned connection, or with null for a slot to open
/// one. Continuations run asynchronously: the hand-over happens inside another exchange's return of its connection.
/// </summary>
internal sealed class PoolWaiter(bool takesReturned) : TaskCompletionSource<UpstreamConnection?>(TaskCreationOptions.RunContinuationsAsynchronously)
{
    public bool TakesReturned { get; } = takesReturned;
    /// <summary>Its place in the pool's queue; detached (List null) once taken out.</summary>
    public LinkedListNode<PoolWaiter>? Node { get; set; }
}
