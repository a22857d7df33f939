using System.Diagnostics.CodeAnalysis;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
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
    protected ClientTransport(IPEndPoint? remoteEndPoint) => SetPeer(remoteEndPoint);

    public abstract PipeReader Input { get; }
    public abstract PipeWriter Output { get; }

    /// <summary>The peer's address (IPv4-mapped IPv6 addresses unmapped), for filters, logs and X-Forwarded-For.</summary>
    public IPAddress RemoteAddress { get; private set; }
    public IPEndPoint? RemoteEndPoint { get; private set; }

    /// <summary>The peer, at construction and for a reused transport's next connection (<see cref="EpollSocketTransport.Rent"/>).</summary>
    [MemberNotNull(nameof(RemoteAddress))]
    private protected void SetPeer(IPEndPoint? remoteEndPoint)
    {
        RemoteEndPoint = remoteEndPoint;
        IPAddress address = remoteEndPoint?.Address ?? IPAddress.None;
        RemoteAddress = address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
    }

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

    /// <summary>
    /// TLS on a listener with <c>client_certificates.mode: require</c> whose client sent no certificate: the handshake
    /// completed, and every request on the connection (every stream, over HTTP/2) is answered 400
    /// <c>client_certificate_required</c> before routing. A plain field, not virtual: it is read once per request.
    /// </summary>
    public bool ClientCertificateMissing { get; private protected init; }

    /// <summary>Sends FIN while still reading: the first half of a lingering close.</summary>
    public abstract void ShutdownSend();

    /// <summary>
    /// The bytes flushed from now on are the connection's last, and <see cref="ShutdownSend"/> follows them at once.
    /// True when the transport then holds a short last segment back (a plain socket: MSG_MORE or TCP_CORK) until the FIN, so
    /// both leave in one packet: the peer gets one segment less to receive and acknowledge per connection. False
    /// where the transport cannot (TLS, an HTTP/2 stream), and the caller closes as usual.
    /// </summary>
    public virtual bool HoldTailForClose() => false;

    /// <summary>
    /// <see cref="HoldTailForClose"/> for a flush whose <see cref="ShutdownSend"/> comes only after awaits (a pumped
    /// body's last flush, a flush that did not complete at once). The hold must then outlast the kernel's own pushes in
    /// between: an acknowledgement of earlier bytes that arrives meanwhile sends a short segment that MSG_MORE held, and the
    /// FIN follows alone. TCP_CORK holds it through them (one setsockopt), so this sets TCP_CORK where the transport has it.
    /// </summary>
    public virtual bool CorkTailForClose() => HoldTailForClose();

    /// <summary>Closes at once (RST where the transport has one): for timeouts and broken exchanges.</summary>
    public abstract void Abort();

    /// <summary>
    /// True when the client has closed its side (FIN) or reset the connection, found without reading: the heartbeat
    /// asks while an exchange waits for the upstream and nothing reads the client (<see cref="HasHungUp"/>). False
    /// when it cannot tell (an HTTP/2 stream: its connection sees the client go).
    /// </summary>
    public virtual bool PeerHungUp() => false;

    /// <summary>The connection was reset or broke (POLLHUP, POLLERR; not a FIN); false where unknown.</summary>
    public virtual bool PeerReset() => false;

    /// <summary>
    /// poll() with POLLRDHUP and no wait: the peer sent FIN (POLLRDHUP), or the connection is reset or broken (POLLHUP,
    /// POLLERR). Bytes waiting to be read (a pipelined request, a TLS close_notify) neither hide it nor are consumed,
    /// which a zero-byte read or Socket.Poll with Available could not promise. Linux only: false elsewhere. The handle's
    /// reference keeps its fd from being closed, and reused by another socket, during the call.
    /// </summary>
    protected static bool HasHungUp(SafeHandle handle)
        => HasPollEvent(handle, EpollNative.POLLRDHUP | EpollNative.POLLHUP | EpollNative.POLLERR);

    /// <summary>As <see cref="HasHungUp"/>, for a reset or broken connection only (POLLHUP, POLLERR).</summary>
    protected static bool HasReset(SafeHandle handle) => HasPollEvent(handle, EpollNative.POLLHUP | EpollNative.POLLERR);

    private static unsafe bool HasPollEvent(SafeHandle handle, short events)
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var poll = new EpollNative.PollFd { Fd = (int)handle.DangerousGetHandle(), Events = EpollNative.POLLRDHUP };
            return EpollNative.Poll(&poll, 1, 0) == 1
                && (poll.Revents & events) != 0;
        }
        catch (ObjectDisposedException)
        {
            return false; // closed meanwhile: whoever closed it ends the exchange
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>Releases the transport after both pipes were completed.</summary>
    public abstract void Dispose();

    /// <summary>
    /// After <see cref="Dispose"/>, from an owner that knows nothing else will touch this transport any more (no abort,
    /// timeout or drain still running on it, nothing of its last exchange in flight): it may serve another connection.
    /// Most transports are simply dropped.
    /// </summary>
    public virtual void Recycle()
    {
    }
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

    /// <summary>
    /// Linux: TCP_CORK, which holds a short segment until the FIN pushes it (the runtime's sends take no MSG_MORE). One
    /// setsockopt for the two segments the merged FIN saves; elsewhere, or if the option is refused, the usual close.
    /// </summary>
    public override bool HoldTailForClose()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        try
        {
            LinuxTcp.Set(_socket, LinuxTcp.Cork, 1);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
    }

    public override void Abort() => SocketPipes.Abort(_socket, _stream);

    public override bool PeerHungUp() => HasHungUp(_socket.SafeHandle);

    public override bool PeerReset() => HasReset(_socket.SafeHandle);

    public override void Dispose() => SocketPipes.Close(_socket, _stream);
}

/// <summary>
/// Plain TCP accepted on the epoll engines: the pipes work on the fd itself (<see cref="EpollSocketStream"/>), and the
/// connection owns the fd through an <see cref="AcceptedSocketHandle"/>, with no runtime <see cref="Socket"/>.
/// <para>Reused: a connection that ends cleanly hands its transport back (<see cref="Recycle"/>), and the next socket
/// accepted on the thread of the transport's engine takes it with its stream (two operations and a lock) and its pipes
/// (with their spare segments): about nine objects that a connection per request would otherwise allocate and drop.
/// Only the fd's handle and the peer's address are new. The free list is the engine's
/// (<see cref="EpollEngine.Transports"/>), last in first out: the objects handed out are the ones most recently touched,
/// still in the cache.</para>
/// </summary>
internal sealed class EpollSocketTransport : ClientTransport
{
    /// <summary>How many closed transports an engine keeps for its next connections.</summary>
    internal const int FreeListCapacity = 64;

    private AcceptedSocketHandle _handle;
    private readonly EpollSocketStream _stream;
    private readonly EpollPipeReader _reader;
    private readonly EpollPipeWriter _writer;
    private bool _recycled;

    public EpollSocketTransport(AcceptedSocketHandle handle, IPEndPoint? remoteEndPoint)
        : base(remoteEndPoint)
    {
        _handle = handle;
        _stream = new EpollSocketStream(handle);
        var (input, output) = SocketPipes.Create(_stream);
        _reader = (EpollPipeReader)input;
        _writer = (EpollPipeWriter)output;
    }

    /// <summary>
    /// A transport for a socket just accepted: one its engine thread's free list holds (see
    /// <see cref="EpollEngine.Transports"/>), or a new one.
    /// </summary>
    public static EpollSocketTransport Rent(AcceptedSocketHandle handle, IPEndPoint? remoteEndPoint)
    {
        if (EpollEngine.Current?.Transports.TryPop() is { } transport)
        {
            transport.Reuse(handle, remoteEndPoint);
            return transport;
        }
        return new EpollSocketTransport(handle, remoteEndPoint);
    }

    private void Reuse(AcceptedSocketHandle handle, IPEndPoint? remoteEndPoint)
    {
        _handle = handle;
        SetPeer(remoteEndPoint);
        _stream.Reuse(handle);
        _reader.Reuse();
        _writer.Reuse();
        _recycled = false;
    }

    public override PipeReader Input => _reader;
    public override PipeWriter Output => _writer;

    public override void ShutdownSend() => _handle.ShutdownSend();

    public override bool HoldTailForClose()
    {
        _stream.HoldTailForClose();
        return true;
    }

    public override bool CorkTailForClose() => _handle.Cork() || HoldTailForClose();

    /// <summary>RST: the stream leaves its engine (its parked operations fail), then the fd closes with SO_LINGER 0.</summary>
    public override void Abort()
    {
        _stream.Dispose();
        _handle.CloseAbortively();
    }

    public override bool PeerHungUp() => HasHungUp(_handle);

    public override bool PeerReset() => HasReset(_handle);

    /// <summary>The stream first (it leaves its engine), then the fd: closed once no syscall holds it any more.</summary>
    public override void Dispose()
    {
        _stream.Dispose();
        _handle.Dispose();
    }

    /// <summary>
    /// Onto its engine's free list when the stream and both pipes ended idle; anything else, or a full list, leaves it
    /// to the collector.
    /// </summary>
    public override void Recycle()
    {
        if (!_recycled && _stream.IsReusable && _reader.IsReusable && _writer.IsReusable)
        {
            _recycled = true;
            _stream.Engine.Transports.TryPush(this);
        }
    }
}
