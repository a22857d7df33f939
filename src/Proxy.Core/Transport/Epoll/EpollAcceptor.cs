using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Proxy.Diagnostics;

namespace Proxy.Transport.Epoll;

/// <summary>What an <see cref="EpollAcceptor"/> asks of its listener; called on an engine thread.</summary>
internal interface IEpollAcceptHandler
{
    /// <summary>False at the connection cap: the acceptor pauses and calls <see cref="OnPaused"/>.</summary>
    bool CanAccept();

    /// <summary>
    /// Starts a connection on <paramref name="socket"/>, inline: the code must not block (it runs on the engine thread,
    /// which then accepts the next connection). The callee owns the fd (its handle, or the Socket it wraps it in).
    /// </summary>
    void OnAccepted(in AcceptedSocket socket);

    /// <summary>
    /// The acceptor stopped accepting: at the cap (<paramref name="errno"/> 0) or after accept4 failed (EMFILE and
    /// friends). The handler calls <see cref="EpollAcceptor.Resume"/> when it is time to try again.
    /// </summary>
    void OnPaused(int errno);
}

/// <summary>
/// Accepts connections of one listening socket on the epoll engines, so that a new connection's first request runs on
/// the engine thread its socket will live on (with the runtime's AcceptAsync, the accept completes on the runtime's
/// socket thread and the response then arrives on ours: two threads woken per connection).
///
/// The socket is registered with every engine, level-triggered and EPOLLEXCLUSIVE (Linux 4.5): the kernel wakes one
/// engine that waits rather than all of them, and each report accepts one connection, started inline
/// (<see cref="EpollSocketStream"/> registers an accepted socket on <see cref="EpollEngine.Current"/>). While more
/// wait in the backlog, the next epoll_wait reports the socket again, next to the other sockets' events, as nginx
/// does without multi_accept. Why not accept until EAGAIN (edge-triggered): on Linux an accept4 that finds the backlog
/// empty still allocates and frees a socket and a file first, so it costs as much as one that accepts (about 6 us on
/// the bench machine, as much as 5% of a new-connection-per-request load; see docs/performance.md).
///
/// Pause (connection cap, EMFILE) removes the socket from every engine; resume adds it back, and EPOLL_CTL_ADD reports
/// the connections that waited in the backlog meanwhile. (EPOLL_CTL_MOD cannot do it: it refuses EPOLLEXCLUSIVE.)
/// State changes happen under a lock; the accept loop reads the state before each accept4 and stops at once when it
/// changed. Each accept4 holds its own reference on the listening handle, so a concurrent <see cref="Stop"/> followed
/// by a close fails it (EBADF) rather than accepting on a reused fd number.
/// </summary>
internal sealed unsafe class EpollAcceptor
{
    private const int Created = 0;
    private const int Running = 1;
    private const int Paused = 2;
    private const int Stopped = 3;

    private readonly Socket _listening;
    private readonly SafeSocketHandle _handle;
    private readonly int _fd;
    private readonly IEpollAcceptHandler _handler;
    private readonly Lock _lock = new();
    private readonly Registration[] _registrations;
    private volatile int _state;

    /// <summary>Takes a bound, listening socket (made non-blocking here); the caller closes it after <see cref="Stop"/>.</summary>
    public EpollAcceptor(Socket listening, IEpollAcceptHandler handler)
    {
        _listening = listening;
        _handle = listening.SafeHandle;
        _fd = (int)_handle.DangerousGetHandle();
        // O_NONBLOCK on the fd itself, not Socket.Blocking = false: accepted Sockets copy the listener's managed
        // blocking mode, and a non-blocking one costs two fcntl per connection (accept4 already set SOCK_NONBLOCK).
        int flags = EpollNative.Fcntl(_fd, EpollNative.F_GETFL, 0);
        if (flags < 0 || EpollNative.Fcntl(_fd, EpollNative.F_SETFL, flags | EpollNative.O_NONBLOCK) < 0)
        {
            throw new IOException($"fcntl(O_NONBLOCK) failed: errno {Marshal.GetLastPInvokeError()}");
        }
        _handler = handler;
        EpollEngine[] engines = EpollEngine.All;
        _registrations = new Registration[engines.Length];
        for (int i = 0; i < engines.Length; i++)
        {
            _registrations[i] = new Registration(this, engines[i]);
        }
    }

    /// <summary>One engine's registration of the listening socket: what the engine's slot holds.</summary>
    internal sealed class Registration(EpollAcceptor owner, EpollEngine engine)
    {
        /// <summary>The engine's token (slot and generation); set by the engine on each add.</summary>
        public ulong Token;
        public EpollAcceptor Owner { get; } = owner;
        public EpollEngine Engine { get; } = engine;
    }

    public void Start()
    {
        lock (_lock)
        {
            if (_state == Created)
            {
                // Running before the add: EPOLL_CTL_ADD can report a waiting connection at once, to an engine thread
                // that reads the state before it accepts; seeing it not yet Running, it would drop that only edge.
                _state = Running;
                RegisterAll();
            }
        }
    }

    /// <summary>Accepts again after <see cref="IEpollAcceptHandler.OnPaused"/>; a no-op unless paused.</summary>
    public void Resume()
    {
        lock (_lock)
        {
            if (_state == Paused)
            {
                // As in Start: the add reports the backlog at once, and the engine must find the state Running.
                _state = Running;
                RegisterAll();
            }
        }
    }

    /// <summary>Stops accepting for good, at once: no engine accepts after this returns, except an accept4 already made.</summary>
    public void Stop()
    {
        lock (_lock)
        {
            if (_state == Running)
            {
                DeregisterAll();
            }
            _state = Stopped;
        }
    }

    /// <summary>True once, for the caller that moved Running to Paused.</summary>
    private bool Pause()
    {
        lock (_lock)
        {
            if (_state != Running)
            {
                return false;
            }
            DeregisterAll();
            _state = Paused;
            return true;
        }
    }

    private void RegisterAll()
    {
        // EPOLLIN only: a listening socket is never writable. No RDHUP: it has no peer.
        foreach (Registration registration in _registrations)
        {
            registration.Engine.Register(registration, _fd, EpollNative.EPOLLIN | EpollNative.EPOLLEXCLUSIVE);
        }
    }

    private void DeregisterAll()
    {
        foreach (Registration registration in _registrations)
        {
            registration.Engine.Deregister(registration.Token, _fd);
        }
    }

    /// <summary>
    /// The engine thread's handler of EPOLLIN: accepts one connection (level-triggered, the socket is reported again
    /// while the backlog holds more), or pauses at the cap. A connection reset in the backlog is skipped for the next.
    /// </summary>
    internal void OnReadable()
    {
        // sockaddr_storage (128 bytes): the peer's sockaddr_in or sockaddr_in6.
        byte* address = stackalloc byte[128];
        while (_state == Running)
        {
            if (!_handler.CanAccept())
            {
                if (Pause())
                {
                    _handler.OnPaused(0);
                }
                return;
            }
            int fd = Accept(address, out int errno);
            if (fd < 0)
            {
                if (errno is EpollNative.EINTR or EpollNative.ECONNABORTED)
                {
                    continue; // the connection was reset in the backlog: try the next one
                }
                if (errno is EpollNative.EAGAIN or EpollNative.EBADF or EpollNative.EINVAL)
                {
                    return; // another engine took it (or closed: EBADF, EINVAL)
                }
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources. Pause rather than spin on the same error.
                if (Pause())
                {
                    _handler.OnPaused(errno);
                }
                return;
            }
            var handle = new AcceptedSocketHandle(fd);
            try
            {
                _handler.OnAccepted(new AcceptedSocket(this, handle, ToEndPoint(address)));
            }
            catch (Exception e)
            {
                ProxyLog.Error("accept_failed", ("error", e.ToString()));
                handle.Dispose(); // a no-op once a Socket took the fd
            }
            return;
        }
    }

    /// <summary>
    /// A Socket for an accepted fd, made as the runtime's own accept makes it: Socket.CreateAcceptSocket copies family,
    /// type and protocol from the listener and takes the peer's address from accept4's sockaddr, with no syscall. The
    /// public Socket(SafeSocketHandle) would ask the kernel for all of it (fstat, getsockopt x4, fcntl x3, getsockname,
    /// getpeername: 10 syscalls per connection, measured with strace), and CreateAcceptSocket none. Should a future runtime rename the internal
    /// method, the public constructor takes over (MissingMethodException, once).
    /// </summary>
    internal Socket? CreateSocket(AcceptedSocketHandle accepted, IPEndPoint? remoteEndPoint)
    {
        SafeSocketHandle handle = accepted.TransferToSocketHandle();
        try
        {
            if (!s_publicConstructorOnly)
            {
                try
                {
                    return CreateAcceptSocket(_listening, handle, remoteEndPoint);
                }
                catch (MissingMethodException)
                {
                    s_publicConstructorOnly = true;
                }
            }
            return new Socket(handle);
        }
        catch (SocketException)
        {
            handle.Dispose(); // reset before we looked at it (getpeername: ENOTCONN)
            return null;
        }
    }

    private static bool s_publicConstructorOnly;

    [UnsafeAccessor(UnsafeAccessorKind.Method, Name = "CreateAcceptSocket")]
    private static extern Socket CreateAcceptSocket(Socket listener, SafeSocketHandle fd, EndPoint? remoteEP);

    /// <summary>
    /// The peer's address from a sockaddr (&lt;netinet/in.h&gt;): sa_family (host order) at 0, then sin_port (network
    /// order) at 2; sockaddr_in: the IPv4 address at 4; sockaddr_in6: flow info at 4, the address at 8, scope id at 24.
    /// A dual-mode listener reports IPv4 peers as IPv4-mapped IPv6 addresses, as the runtime's accept does.
    /// </summary>
    private static IPEndPoint? ToEndPoint(byte* address)
    {
        const ushort AF_INET = 2;
        const ushort AF_INET6 = 10;
        ushort family = *(ushort*)address;
        int port = BinaryPrimitives.ReadUInt16BigEndian(new ReadOnlySpan<byte>(address + 2, 2));
        return family switch
        {
            AF_INET => new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(address + 4, 4)), port),
            AF_INET6 => new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(address + 8, 16), *(uint*)(address + 24)), port),
            _ => null,
        };
    }

    private int Accept(byte* address, out int errno)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            int length = 128;
            int fd = EpollNative.Accept4(_fd, address, &length, EpollNative.SOCK_NONBLOCK | EpollNative.SOCK_CLOEXEC);
            errno = fd < 0 ? Marshal.GetLastSystemError() : 0;
            return fd;
        }
        catch (ObjectDisposedException)
        {
            errno = EpollNative.EBADF; // the listener was closed
            return -1;
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }
}
