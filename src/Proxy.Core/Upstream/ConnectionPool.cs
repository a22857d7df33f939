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
/// <c>max_connections</c>, with callers waiting up to <c>connect_timeout</c> for a slot. The lock guards only
/// the stack; it is held for a push or a pop.
/// </summary>
internal sealed class ConnectionPool
{
    private readonly DestinationState _destination;
    private readonly Stack<UpstreamConnection> _idle = new();
    private readonly SemaphoreSlim _slots;
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
        _slots = new SemaphoreSlim(cluster.MaxConnections, cluster.MaxConnections);
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

    /// <summary>Opens a new connection within connect_timeout and the max_connections cap.</summary>
    public async ValueTask<(UpstreamConnection? Connection, ConnectError Error)> ConnectAsync()
    {
        long started = Environment.TickCount64;
        if (!_slots.Wait(0))
        {
            if (!await _slots.WaitAsync(_connectTimeout).ConfigureAwait(false))
            {
                _metrics?.ConnectFailed(ConnectError.PoolExhausted);
                return (null, ConnectError.PoolExhausted);
            }
        }
        if (_breaker is not null && !_breaker.TryOpenConnection())
        {
            _slots.Release();
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
        lock (_idle)
        {
            if (!_retired)
            {
                _idle.Push(connection);
                return;
            }
        }
        connection.Dispose();
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
        _slots.Release();
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
            ProxyLog.Write(LogLevel.Debug, "upstream_pool_closed", ("destination", _destination.Address), ("closed", all.Length));
        }
    }
}
