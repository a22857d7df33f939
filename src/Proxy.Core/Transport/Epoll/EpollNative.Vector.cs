using System.Runtime.InteropServices;

namespace Proxy.Transport.Epoll;

/// <summary>sendmsg() for <see cref="EpollPipeWriter"/>: several pooled blocks leave in one syscall.</summary>
internal static unsafe partial class EpollNative
{
    /// <summary>struct iovec (&lt;sys/uio.h&gt;): pointer and length, naturally aligned on every 64-bit ABI.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    /// <summary>
    /// struct msghdr (&lt;sys/socket.h&gt;), 64-bit Linux layout: name, namelen (padded to 8), iov, iovlen, control,
    /// controllen, flags. Sequential layout with pointer-sized fields gives the same offsets.
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public void* Name;
        public uint NameLen;
        public IoVec* Iov;
        public nuint IovLen;
        public void* Control;
        public nuint ControlLen;
        public int Flags;
    }

    [LibraryImport(Libc, EntryPoint = "sendmsg")]
    [SuppressGCTransition]
    public static partial nint SendMsg(int fd, MsgHdr* message, int flags);
}
