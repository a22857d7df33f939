using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Proxy.Transport.Epoll;

namespace Proxy.Transport;

/// <summary>
/// The byte stream under one client connection, as the HTTP layer sees it: a pipe pair plus the few socket-level
/// actions a server needs (half-close for a lingering close, abortive close). Plain TCP is <see cref="SocketTransport"/>;
/// TLS wraps a socket in a stream; an HTTP/2 stream can be bridged in memory. The HTTP/1.1 connection never touches a
/// <see cref="Socket"/> directly, so every kind of transport gets the same parser, limits, routing and filters.
/// </summary>
internal abstract class ClientTransport : IDisposable
{
    protected ClientTransport(IPEndPoint? remoteEndPoint)
    {
        RemoteEndPoint = remoteEndPoint;
        IPAddress address = remoteEndPoint?.Address ?? IPAddress.None;
        RemoteAddress = address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
    }

    public abstract PipeReader Input { get; }
    public abstract PipeWriter Output { get; }

    /// <summary>The peer's address (IPv4-mapped IPv6 addresses unmapped), for filters, logs and X-Forwarded-For.</summary>
    public IPAddress RemoteAddress { get; }
    public IPEndPoint? RemoteEndPoint { get; }

    /// <summary>
    /// True for one HTTP/2 stream carried over a client connection: per-connection limits (connections per client IP)
    /// were already applied to the connection that carries it.
    /// </summary>
    public virtual bool IsStream => false;

    /// <summary>
    /// True when <c>limits.max_connections_per_ip</c> was already applied where the connection was accepted (TLS: before
    /// the handshake, whatever ALPN then makes of it), so the HTTP/1.1 connection running on it must not count it again.
    /// </summary>
    public bool ClientIpCounted { get; init; }

    /// <summary>True when the client reached us over TLS (X-Forwarded-Proto: https).</summary>
    public virtual bool IsSecure => false;

    /// <summary>TLS with a verified client certificate (mTLS): its subject ("CN=client, O=Example"); null otherwise.</summary>
    public virtual string? ClientCertificateSubject => null;

    /// <summary><see cref="ClientCertificateSubject"/> as a field value (UTF-8, no control characters), for forwarding.</summary>
    public virtual byte[]? ClientCertificateSubjectBytes => null;

    /// <summary>Sends FIN while still reading: the first half of a lingering close.</summary>
    public abstract void ShutdownSend();

    /// <summary>Closes at once (RST where the transport has one): for timeouts and broken exchanges.</summary>
    public abstract void Abort();

    /// <summary>Releases the transport after both pipes were completed.</summary>
    public abstract void Dispose();
}

/// <summary>Plain TCP: pipes over the socket's stream (<see cref="SocketPipes.OpenStream"/>) with the shared socket pipe options.</summary>
internal sealed class SocketTransport : ClientTransport
{
    private readonly Socket _socket;
    private readonly Stream _stream;

    public SocketTransport(Socket socket)
        : base(socket.RemoteEndPoint as IPEndPoint)
    {
        _socket = socket;
        (_stream, Input, Output) = SocketPipes.Create(socket);
    }

    public override PipeReader Input { get; }
    public override PipeWriter Output { get; }

    public override void ShutdownSend() => _socket.Shutdown(SocketShutdown.Send);

    public override void Abort() => SocketPipes.Abort(_socket, _stream);

    public override void Dispose() => SocketPipes.Close(_socket, _stream);
}

/// <summary>
/// Plain TCP accepted on the epoll engines: the pipes work on the fd itself (<see cref="EpollSocketStream"/>), and the
/// connection owns the fd through an <see cref="AcceptedSocketHandle"/>, with no runtime <see cref="Socket"/>.
/// </summary>
internal sealed class EpollSocketTransport : ClientTransport
{
    private readonly AcceptedSocketHandle _handle;
    private readonly EpollSocketStream _stream;

    public EpollSocketTransport(AcceptedSocketHandle handle, IPEndPoint? remoteEndPoint)
        : base(remoteEndPoint)
    {
        _handle = handle;
        _stream = new EpollSocketStream(handle);
        (Input, Output) = SocketPipes.Create(_stream);
    }

    public override PipeReader Input { get; }
    public override PipeWriter Output { get; }

    public override void ShutdownSend() => _handle.ShutdownSend();

    /// <summary>RST: the stream leaves its engine (its parked operations fail), then the fd closes with SO_LINGER 0.</summary>
    public override void Abort()
    {
        _stream.Dispose();
        _handle.CloseAbortively();
    }

    /// <summary>The stream first (it leaves its engine), then the fd: closed once no syscall holds it any more.</summary>
    public override void Dispose()
    {
        _stream.Dispose();
        _handle.Dispose();
    }
}

