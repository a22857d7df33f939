using System.Buffers.Binary;
using System.Net;
using System.Runtime.InteropServices;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// A blocking IPv4 TCP client straight on libc's socket calls: unlike <see cref="System.Net.Sockets.Socket"/>, which
/// allocates a handle, a socket object and addresses per connection, it allocates nothing, so a test can count the
/// proxy's allocations per connection from the process-wide total (tests and benchmarks). Linux only.
/// </summary>
internal static unsafe class LibcClient
{
    private const int AF_INET = 2;
    private const int SOCK_STREAM = 1;
    private const int IPPROTO_TCP = 6;
    private const int TCP_NODELAY = 1;

    /// <summary>
    /// Connects to <paramref name="endPoint"/>, sends <paramref name="request"/>, reads until the proxy closes and
    /// returns the number of bytes received (0 when the connect or the send failed).
    /// </summary>
    public static int Exchange(IPEndPoint endPoint, ReadOnlySpan<byte> request, Span<byte> receive)
    {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
        {
            return 0;
        }
        try
        {
            // struct sockaddr_in: family (host order), port and address (network order), 8 bytes of zeros.
            byte* address = stackalloc byte[16];
            new Span<byte>(address, 16).Clear();
            *(ushort*)address = AF_INET;
            BinaryPrimitives.WriteUInt16BigEndian(new Span<byte>(address + 2, 2), (ushort)endPoint.Port);
            endPoint.Address.TryWriteBytes(new Span<byte>(address + 4, 4), out _);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int));
            if (connect(fd, address, 16) != 0)
            {
                return 0;
            }
            fixed (byte* bytes = request)
            {
                if (send(fd, bytes, request.Length, 0) != request.Length)
                {
                    return 0;
                }
            }
            int total = 0;
            fixed (byte* buffer = receive)
            {
                while (total < receive.Length)
                {
                    nint n = recv(fd, buffer + total, receive.Length - total, 0);
                    if (n <= 0)
                    {
                        break;
                    }
                    total += (int)n;
                }
            }
            return total;
        }
        finally
        {
            close(fd);
        }
    }

    [DllImport("libc.so.6", EntryPoint = "socket")]
    private static extern int socket(int domain, int type, int protocol);

    [DllImport("libc.so.6", EntryPoint = "connect")]
    private static extern int connect(int fd, byte* address, int length);

    [DllImport("libc.so.6", EntryPoint = "setsockopt")]
    private static extern int setsockopt(int fd, int level, int name, int* value, int length);

    [DllImport("libc.so.6", EntryPoint = "send")]
    private static extern nint send(int fd, byte* buffer, nint length, int flags);

    [DllImport("libc.so.6", EntryPoint = "recv")]
    private static extern nint recv(int fd, byte* buffer, nint length, int flags);

    [DllImport("libc.so.6", EntryPoint = "close")]
    private static extern int close(int fd);
}
