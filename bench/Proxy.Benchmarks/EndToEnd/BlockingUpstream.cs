using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// What the fixed-response upstreams share: a loopback listener on a free port and one blocking thread per accepted
/// connection (Nagle off), which <see cref="Serve"/> owns until it returns. Linked into tests/Proxy.FunctionalTests with them.
/// </summary>
internal abstract class BlockingUpstream : IDisposable
{
    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);

    protected BlockingUpstream(int backlog)
    {
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(backlog);
        Port = ((IPEndPoint)_listener.LocalEndPoint!).Port;
    }

    public int Port { get; }

    /// <summary>Starts accepting; called by the derived constructor once its own fields are set.</summary>
    protected void Start() => new Thread(AcceptLoop) { IsBackground = true }.Start();

    public void Dispose() => _listener.Dispose();

    /// <summary>Serves one connection on its own thread; disposes it.</summary>
    protected abstract void Serve(Socket connection);

    /// <summary>One whole frame read by <see cref="ReadH2cFrames"/>; false ends the connection.</summary>
    protected delegate bool H2cFrameHandler(byte type, byte flags, int stream, ReadOnlySpan<byte> payload);

    /// <summary>
    /// The read side of the h2c upstreams (RFC 9113 section 3.4, prior knowledge): skips the client's 24-octet preface,
    /// then hands each whole frame to <paramref name="onFrame"/> until the peer closes or the handler says stop.
    /// Allocates nothing per frame.
    /// </summary>
    protected static void ReadH2cFrames(Socket connection, byte[] buffer, H2cFrameHandler onFrame)
    {
        int filled = 0;
        bool preface = false;
        while (true)
        {
            int n = connection.Receive(buffer.AsSpan(filled));
            if (n == 0)
            {
                return;
            }
            filled += n;
            int at = 0;
            if (!preface)
            {
                if (filled < 24)
                {
                    continue;
                }
                preface = true;
                at = 24;
            }
            while (filled - at >= 9)
            {
                int length = (buffer[at] << 16) | (buffer[at + 1] << 8) | buffer[at + 2];
                if (filled - at < 9 + length)
                {
                    break;
                }
                int stream = (int)(BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(at + 5)) & 0x7FFF_FFFF);
                if (!onFrame(buffer[at + 3], buffer[at + 4], stream, buffer.AsSpan(at + 9, length)))
                {
                    return;
                }
                at += 9 + length;
            }
            buffer.AsSpan(at, filled - at).CopyTo(buffer);
            filled -= at;
        }
    }

    private void AcceptLoop()
    {
        while (true)
        {
            Socket connection;
            try
            {
                connection = _listener.Accept();
            }
            catch (Exception)
            {
                return;
            }
            connection.NoDelay = true;
            new Thread(() => Serve(connection)) { IsBackground = true }.Start();
        }
    }
}
