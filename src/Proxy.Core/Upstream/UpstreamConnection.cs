using System.IO.Pipelines;
using System.Net.Security;
using System.Net.Sockets;
using Proxy.Http;
using Proxy.Transport;
using Proxy.Transport.Epoll;

namespace Proxy.Upstream;

/// <summary>One keep-alive HTTP/1.1 connection to a destination, owned by one request at a time.</summary>
internal sealed class UpstreamConnection
{
    private readonly Socket _socket;
    /// <summary>The socket's NetworkStream, or for an https:// destination the SslStream over it (which owns it).</summary>
    private readonly Stream _stream;
    /// <summary>The stream straight over the socket (the same as <see cref="_stream"/> without TLS), for <see cref="Abort"/>.</summary>
    private readonly Stream _network;
    private readonly bool _secure;
    private int _disposed;

    /// <summary>A connected socket and its stream (<see cref="SocketPipes.ConnectAsync"/>).</summary>
    public UpstreamConnection(Socket socket, Stream network, DestinationState destination)
    {
        _socket = socket;
        Destination = destination;
        _stream = _network = network;
        (Input, Output) = SocketPipes.Create(network, upstream: true);
    }

    /// <summary>A connection whose TLS handshake completed; <paramref name="tls"/> owns <paramref name="network"/>.</summary>
    public UpstreamConnection(Socket socket, Stream network, SslStream tls, DestinationState destination)
    {
        _socket = socket;
        Destination = destination;
        _network = network;
        _stream = tls;
        _secure = true;
        (Input, Output) = SocketPipes.Create(tls, upstream: true);
    }

    /// <summary>On the runtime's engine, how long a connection may sit idle and be reused without a poll.</summary>
    private const long UnpolledIdleMilliseconds = 20;

    public DestinationState Destination { get; }
    /// <summary>Speaks HTTP/2: h2c by configuration, or "h2" chosen in ALPN (set by the pool when it connects).</summary>
    public bool IsHttp2 { get; init; }
    public PipeReader Input { get; }
    public PipeWriter Output { get; }

    /// <summary>
    /// Completes when the connection has bytes to read (or is at its end, or failed): a zero-byte read on the stream,
    /// which both socket engines complete without a buffer and without allocating (SslStream passes it down). After it,
    /// a read of <see cref="Input"/> completes synchronously.
    /// </summary>
    public ValueTask<int> WaitForDataAsync() => _stream.ReadAsync(Memory<byte>.Empty);
    public ResponseHead Response { get; } = new();

    /// <summary>Requests completed on this connection; greater than zero means it came from the pool.</summary>
    public int RequestCount { get; set; }
    public long IdleSince { get; set; }

    /// <summary>
    /// The last response was one that has no body by rule (to a HEAD, a 204 or a 304): an upstream that sends the body
    /// anyway, in a second write, leaves it on the connection, where it would be read as the next request's response
    /// (response queue poisoning). Such a connection is polled before reuse however briefly it was idle.
    /// </summary>
    public bool PollBeforeReuse { get; set; }

    /// <summary>
    /// True when the peer has closed (or sent unsolicited bytes on) an idle connection, which is then not reused: bytes
    /// that arrived while idle would be taken for the next request's response. On our epoll engine the engine's
    /// readiness says it without a syscall (<see cref="EpollSocketStream.MayHaveData"/>), and the poll runs only when
    /// it says the socket may be readable. On the runtime's engine a non-blocking poll, skipped for a connection idle
    /// under <see cref="UnpolledIdleMilliseconds"/> (under load a connection is back in use within microseconds, where
    /// the poll would be a syscall per request) unless <see cref="PollBeforeReuse"/>.
    /// </summary>
    public bool LooksDead()
    {
        if (_network is EpollSocketStream epoll)
        {
            if (!epoll.MayHaveData)
            {
                return false;
            }
        }
        else if (!PollBeforeReuse && Environment.TickCount64 - IdleSince < UnpolledIdleMilliseconds)
        {
            return false;
        }
        try
        {
            if (!_socket.Connected)
            {
                return true;
            }
            if (!_socket.Poll(0, SelectMode.SelectRead))
            {
                return false;
            }
            // Over TLS, bytes on an idle connection are usually a TLS 1.3 NewSessionTicket (RFC 8446 section 4.6.1)
            // that SslStream reads with the next response: only end of stream (readable, nothing to read) is dead.
            return !_secure || _socket.Available == 0;
        }
        catch (Exception)
        {
            return true;
        }
    }

    /// <summary>
    /// True when the upstream sent something nobody has read yet (bytes, or its close): a non-blocking poll, asked by the
    /// heartbeat while a request body is being sent (<see cref="Forwarding.HttpForwarder.WatchForEarlyAnswer"/>), when
    /// nothing reads the connection. On our epoll engine the engine's readiness rules most connections out without a syscall.
    /// </summary>
    public bool HasData()
    {
        if (_network is EpollSocketStream epoll && !epoll.MayHaveData)
        {
            return false;
        }
        try
        {
            return _socket.Poll(0, SelectMode.SelectRead);
        }
        catch (Exception)
        {
            return false; // closed under us: the exchange's own write or read sees it
        }
    }

    /// <summary>
    /// <see cref="Abort"/> (or <see cref="Dispose"/>) ran: the connection must not go back to its pool. Read by the
    /// forwarder after it took the connection back from a client's abort (<c>HttpForwarder.TakeBackActive</c>).
    /// </summary>
    public bool WasAborted => Volatile.Read(ref _aborted) != 0;

    private int _aborted;

    /// <summary>Forcibly closes the socket; pending reads and writes fail. Safe from any thread.</summary>
    public void Abort()
    {
        Volatile.Write(ref _aborted, 1);
        try
        {
            SocketPipes.Abort(_socket, _network);
        }
        catch (Exception)
        {
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        Abort();
        // Completing a StreamPipeWriter flushes what is buffered; on an aborted socket that throws, and the
        // bytes are meant to be dropped anyway.
        try
        {
            Output.Complete();
        }
        catch (Exception)
        {
        }
        try
        {
            Input.Complete();
        }
        catch (Exception)
        {
        }
        _stream.Dispose();
        Destination.Pool?.OnConnectionClosed();
    }
}
