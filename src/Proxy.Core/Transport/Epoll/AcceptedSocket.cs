using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Proxy.Transport.Epoll;

/// <summary>
/// The fd of a connection accepted on the epoll engines, owned without a runtime <see cref="Socket"/>: a plain TCP
/// connection only needs its fd (the <see cref="EpollSocketStream"/> does the I/O), and a Socket per connection cost
/// a finalizable object of its own, its constructor, and a Dispose that goes through the runtime's socket state
/// (about 1% of the CPU of a connection per request). Release closes the fd with close().
/// </summary>
internal sealed class AcceptedSocketHandle : SafeHandle
{
    public AcceptedSocketHandle(int fd)
        : base(invalidHandleValue: -1, ownsHandle: true)
    {
        SetHandle(fd);
    }

    public override bool IsInvalid => handle == -1;

    /// <summary>shutdown(SHUT_WR): sends FIN while reading on (a lingering close). Throws on failure, as Socket.Shutdown does.</summary>
    public void ShutdownSend()
    {
        bool added = false;
        try
        {
            DangerousAddRef(ref added);
            if (EpollNative.Shutdown((int)handle, EpollNative.SHUT_WR) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new SocketException((int)EpollNative.ToSocketError(errno));
            }
        }
        finally
        {
            if (added)
            {
                DangerousRelease();
            }
        }
    }

    /// <summary>TCP_CORK on: short segments wait for the FIN (or a full segment). False if refused or already closed.</summary>
    public unsafe bool Cork()
    {
        bool added = false;
        try
        {
            DangerousAddRef(ref added);
            int on = 1;
            return EpollNative.SetSockOpt((int)handle, LinuxTcp.Level, LinuxTcp.Cork, &on, sizeof(int)) == 0;
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
        finally
        {
            if (added)
            {
                DangerousRelease();
            }
        }
    }

    /// <summary>
    /// Abortive close, like Socket.Close(0): SO_LINGER with a zero timeout, so the close sends RST and drops what is
    /// unsent. Set before the release, so it holds even when the close itself is deferred by a syscall in flight.
    /// </summary>
    public unsafe void CloseAbortively()
    {
        bool added = false;
        try
        {
            DangerousAddRef(ref added);
            EpollNative.Linger linger = new() { OnOff = 1, Seconds = 0 };
            _ = EpollNative.SetSockOpt((int)handle, EpollNative.SOL_SOCKET, EpollNative.SO_LINGER, &linger, sizeof(EpollNative.Linger));
        }
        catch (ObjectDisposedException)
        {
            return; // already closed
        }
        finally
        {
            if (added)
            {
                DangerousRelease();
            }
        }
        Dispose();
    }

    /// <summary>Moves the fd into a <see cref="SafeSocketHandle"/> (for a runtime Socket); this handle no longer owns it.</summary>
    public SafeSocketHandle TransferToSocketHandle()
    {
        var socketHandle = new SafeSocketHandle(handle, ownsHandle: true);
        SetHandleAsInvalid();
        return socketHandle;
    }

    protected override bool ReleaseHandle() => EpollNative.Close((int)handle) == 0;
}

/// <summary>A connection the <see cref="EpollAcceptor"/> just accepted: its fd, owned by the handler from here on, and the peer.</summary>
internal readonly struct AcceptedSocket
{
    private readonly EpollAcceptor _acceptor;

    internal AcceptedSocket(EpollAcceptor acceptor, AcceptedSocketHandle handle, IPEndPoint? remoteEndPoint)
    {
        _acceptor = acceptor;
        Handle = handle;
        RemoteEndPoint = remoteEndPoint;
    }

    public AcceptedSocketHandle Handle { get; }

    /// <summary>The peer's address from accept4 (IPv4-mapped IPv6 on a dual-mode listener, as the runtime reports it).</summary>
    public IPEndPoint? RemoteEndPoint { get; }

    /// <summary>
    /// Wraps the fd in a runtime <see cref="Socket"/> (TLS listeners: SslStream's callers want one), which then owns
    /// it; null when the connection was reset before it could be wrapped (the fd is then closed).
    /// </summary>
    public Socket? ToSocket() => _acceptor.CreateSocket(Handle, RemoteEndPoint);
}
