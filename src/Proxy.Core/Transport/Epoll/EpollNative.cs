using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Proxy.Transport.Epoll;

/// <summary>
/// The few libc calls the epoll engine needs, through source-generated <see cref="LibraryImportAttribute"/> stubs
/// (no runtime marshalling, so they work under NativeAOT and trimming). Linux only: callers check
/// <see cref="OperatingSystem.IsLinux"/>.
/// <para>Two kinds. The calls of every request (recv, send, sendmsg, accept4, epoll_ctl) never block (non-blocking
/// sockets, MSG_DONTWAIT) and take microseconds: they are <see cref="SuppressGCTransitionAttribute"/>, with no
/// SetLastError. With no transition, no runtime code runs between the call and the caller's
/// <see cref="Marshal.GetLastSystemError"/>, which reads errno only when the call failed: the transition frames and
/// the two errno accesses of a SetLastError stub around every call were 2-3% of the proxy's CPU with a new connection
/// per request. Everything else (epoll_wait, which blocks; close, which may linger; the set-up calls) keeps the
/// ordinary transition and reports errno through <see cref="Marshal.GetLastPInvokeError"/>.</para>
/// </summary>
internal static unsafe partial class EpollNative
{
    private const string Libc = "libc";

    // <sys/epoll.h>
    public const uint EPOLLIN = 0x001;
    public const uint EPOLLOUT = 0x004;
    public const uint EPOLLERR = 0x008;
    public const uint EPOLLHUP = 0x010;
    public const uint EPOLLRDHUP = 0x2000;
    public const uint EPOLLEXCLUSIVE = 1u << 28;
    public const uint EPOLLET = 1u << 31;
    public const int EPOLL_CTL_ADD = 1;
    public const int EPOLL_CTL_DEL = 2;
    public const int EPOLL_CTL_MOD = 3;
    public const int EPOLL_CLOEXEC = 0x80000;

    // <sys/socket.h>
    public const int MSG_DONTWAIT = 0x40;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int MSG_MORE = 0x8000;
    public const int SOCK_NONBLOCK = 0x800;
    public const int SOCK_CLOEXEC = 0x80000;

    // <poll.h>
    public const short POLLIN = 0x001;
    public const short POLLOUT = 0x004;
    public const short POLLERR = 0x008;
    public const short POLLHUP = 0x010;
    public const short POLLRDHUP = 0x2000;

    // <errno.h> (Linux numbering)
    public const int EINTR = 4;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int EINVAL = 22;
    public const int ECONNABORTED = 103;

    /// <summary>
    /// struct epoll_event is packed on x86-64 (12 bytes: events at 0, data at 4) and naturally aligned elsewhere
    /// (16 bytes: data at 8); the engine reads its event buffer with the stride of the running architecture.
    /// </summary>
    public static readonly int EventSize = RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.X86 ? 12 : 16;
    public static readonly int EventDataOffset = EventSize == 12 ? 4 : 8;

    [LibraryImport(Libc, EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int EpollCreate1(int flags);

    [LibraryImport(Libc, EntryPoint = "epoll_ctl")]
    [SuppressGCTransition]
    public static partial int EpollCtl(int epfd, int op, int fd, byte* evt);

    [LibraryImport(Libc, EntryPoint = "epoll_wait", SetLastError = true)]
    public static partial int EpollWait(int epfd, byte* events, int maxEvents, int timeout);

    [LibraryImport(Libc, EntryPoint = "recv")]
    [SuppressGCTransition]
    public static partial nint Recv(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport(Libc, EntryPoint = "send")]
    [SuppressGCTransition]
    public static partial nint Send(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport(Libc, EntryPoint = "accept4")]
    [SuppressGCTransition]
    public static partial int Accept4(int fd, byte* address, int* addressLength, int flags);

    // <fcntl.h> (variadic in C; the third argument is an int in the integer registers either way on Linux ABIs)
    public const int F_GETFL = 3;
    public const int F_SETFL = 4;
    public const int O_NONBLOCK = 0x800;

    [LibraryImport(Libc, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport(Libc, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    // <sys/socket.h>: shutdown() and SO_LINGER for connections owned without a runtime Socket (AcceptedSocketHandle)
    public const int SHUT_WR = 1;
    public const int SOL_SOCKET = 1;
    public const int SO_LINGER = 13;

    [StructLayout(LayoutKind.Sequential)]
    public struct Linger
    {
        public int OnOff;
        public int Seconds;
    }

    [LibraryImport(Libc, EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    [LibraryImport(Libc, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, void* value, int length);

    [LibraryImport(Libc, EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint count, int timeout);

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    /// <summary>Writes one struct epoll_event into <paramref name="destination"/> with the architecture's layout.</summary>
    public static void WriteEvent(byte* destination, uint events, ulong data)
    {
        *(uint*)destination = events;
        Unsafe.WriteUnaligned(destination + EventDataOffset, data);
    }

    /// <summary>The errno of a failed send/recv as the <see cref="SocketError"/> NetworkStream would report.</summary>
    public static SocketError ToSocketError(int errno) => errno switch
    {
        104 => SocketError.ConnectionReset,     // ECONNRESET
        32 => SocketError.Shutdown,             // EPIPE: we shut down sending, or the peer reset
        107 => SocketError.NotConnected,        // ENOTCONN
        110 => SocketError.TimedOut,            // ETIMEDOUT
        111 => SocketError.ConnectionRefused,   // ECONNREFUSED
        103 => SocketError.ConnectionAborted,   // ECONNABORTED
        113 => SocketError.HostUnreachable,     // EHOSTUNREACH
        101 => SocketError.NetworkUnreachable,  // ENETUNREACH
        EBADF => SocketError.OperationAborted,
        _ => SocketError.SocketError,
    };
}
