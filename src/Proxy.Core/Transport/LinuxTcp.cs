using System.Net.Sockets;

namespace Proxy.Transport;

/// <summary>
/// Options at level IPPROTO_TCP from Linux's netinet/tcp.h that the runtime's <see cref="SocketOptionName"/> lacks, and
/// one way to set them on a runtime <see cref="Socket"/>. The epoll engine's fds take the same names through setsockopt.
/// </summary>
internal static class LinuxTcp
{
    public const int Level = (int)SocketOptionLevel.Tcp; // IPPROTO_TCP, 6
    public const int Cork = 3;
    public const int DeferAccept = 9;
    public const int Info = 11;
    public const int QuickAck = 12;

    /// <summary>Sets an integer option; nothing on other systems. Throws as <see cref="Socket.SetRawSocketOption"/> does.</summary>
    public static void Set(Socket socket, int name, int value)
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }
        Span<byte> bytes = stackalloc byte[sizeof(int)];
        BitConverter.TryWriteBytes(bytes, value);
        socket.SetRawSocketOption(Level, name, bytes);
    }
}
