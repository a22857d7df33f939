using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// The h2c upstream (RFC 9113 section 3.4, prior knowledge) of the HTTP/2 upstream round-trip benchmark and of the
/// functional tests' steady-state allocation test (linked into tests/Proxy.FunctionalTests as
/// Infrastructure/FixedH2cResponseUpstream.cs): sends an empty SETTINGS, acknowledges the proxy's, and answers every
/// request stream with the same pre-encoded HEADERS + DATA (a 100-byte body), once the request ends (END_STREAM on its
/// HEADERS, or on its last DATA frame). Request body octets are credited back to the connection's window at once
/// (WINDOW_UPDATE on stream 0), so a stream of uploads never runs the proxy out of send window; each stream's own window
/// (65,535 octets) covers its small body. One blocking thread per connection; it allocates nothing per request, so the
/// measured allocation is the proxy's.
/// </summary>
internal sealed class FixedH2cResponseUpstream : BlockingUpstream
{
    // HEADERS (END_HEADERS): 0x88 ":status: 200"; content-type (static 31) and content-length (static 28) as
    // literals without indexing (RFC 7541 section 6.2.2). Then DATA (END_STREAM) with the body.
    private static readonly byte[] s_headerBlock = [0x88, 0x0F, 0x10, 0x0A, .. "text/plain"u8, 0x0F, 0x0D, 0x03, .. "100"u8];
    private static readonly byte[] s_response = BuildResponse();
    private static readonly byte[] s_settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    private static readonly byte[] s_settingsAck = [0, 0, 0, 0x4, 0x1, 0, 0, 0, 0];

    public FixedH2cResponseUpstream() : base(backlog: 16) => Start();

    private static byte[] BuildResponse()
    {
        byte[] body = Encoding.ASCII.GetBytes(new string('x', 99) + "\n");
        var frames = new byte[9 + s_headerBlock.Length + 9 + body.Length];
        WriteHeader(frames, s_headerBlock.Length, type: 0x1, flags: 0x4);
        s_headerBlock.CopyTo(frames, 9);
        int data = 9 + s_headerBlock.Length;
        WriteHeader(frames.AsSpan(data), body.Length, type: 0x0, flags: 0x1);
        body.CopyTo(frames, data + 9);
        return frames;
    }

    private static void WriteHeader(Span<byte> destination, int length, byte type, byte flags)
    {
        destination[0] = (byte)(length >> 16);
        destination[1] = (byte)(length >> 8);
        destination[2] = (byte)length;
        destination[3] = type;
        destination[4] = flags;
    }

    /// <summary>Skips the preface, sends an empty SETTINGS, acknowledges the proxy's, answers each request stream.</summary>
    protected override void Serve(Socket connection)
    {
        var buffer = new byte[256 * 1024];
        var response = (byte[])s_response.Clone();
        int dataHeader = 9 + s_headerBlock.Length;
        var windowUpdate = new byte[] { 0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
        try
        {
            connection.Send(s_settings);
            ReadH2cFrames(connection, buffer, (type, flags, stream, payload) =>
            {
                if (type == 0x0 && payload.Length > 0)
                {
                    // Request body octets: back to the connection's window (padding is never sent by the proxy).
                    BinaryPrimitives.WriteUInt32BigEndian(windowUpdate.AsSpan(9), (uint)payload.Length);
                    connection.Send(windowUpdate);
                }
                if (type is 0x0 or 0x1 && (flags & 0x1) != 0)
                {
                    // The request ended (END_STREAM on its HEADERS or on its last DATA): answer on its stream id.
                    BinaryPrimitives.WriteUInt32BigEndian(response.AsSpan(5), (uint)stream);
                    BinaryPrimitives.WriteUInt32BigEndian(response.AsSpan(dataHeader + 5), (uint)stream);
                    connection.Send(response);
                }
                else if (type == 0x4 && (flags & 0x1) == 0)
                {
                    connection.Send(s_settingsAck);
                }
                return true;
            });
        }
        catch (Exception)
        {
        }
        finally
        {
            connection.Dispose();
        }
    }
}
