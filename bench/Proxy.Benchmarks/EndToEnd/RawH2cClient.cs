using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// A blocking h2c client (prior knowledge) for allocation tests and benchmarks: it sends one pre-encoded GET per stream and parses only
/// frame headers, so it allocates nothing per request and the process-wide allocation delta is the proxy's. Its windows
/// are opened wide, so the proxy never waits for a WINDOW_UPDATE. One batch of concurrent streams at a time.
/// </summary>
internal sealed class RawH2cClient
{
    private const int FrameHeaderLength = 9;
    private const byte Data = 0x0, Headers = 0x1, Settings = 0x4, WindowUpdate = 0x8, GoAway = 0x7, RstStream = 0x3;
    private const byte EndStream = 0x1, EndHeaders = 0x4, Ack = 0x1;

    private readonly Socket _socket;
    private readonly byte[] _request;
    private readonly byte[] _receive = new byte[64 * 1024];
    private readonly byte[] _settingsAck = [0, 0, 0, Settings, Ack, 0, 0, 0, 0];
    private int _filled;
    private int _nextStream = 1;

    /// <param name="socket">Connected to the proxy's cleartext listener.</param>
    /// <param name="path">The GET's <c>:path</c>.</param>
    /// <param name="userAgent">A <c>user-agent</c> field when not null.</param>
    /// <param name="authority">The GET's <c>:authority</c>.</param>
    public RawH2cClient(Socket socket, string path, string? userAgent = null, string authority = "example.test")
    {
        _socket = socket;
        _request = BuildRequest(path, userAgent, authority);
    }

    public void SendPreface()
    {
        var preface = new List<byte>();
        preface.AddRange("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray());
        // SETTINGS: INITIAL_WINDOW_SIZE (0x4) = 2^30 (RFC 9113 section 6.5.2), so no stream ever waits for our WINDOW_UPDATE.
        preface.AddRange(new byte[] { 0, 0, 6, Settings, 0, 0, 0, 0, 0, 0, 0x4, 0x40, 0, 0, 0 });
        // The connection window (section 6.9.2 starts it at 65,535 whatever SETTINGS say) opened to 2^31-1.
        preface.AddRange(new byte[] { 0, 0, 4, WindowUpdate, 0, 0, 0, 0, 0, 0x7F, 0xFF, 0, 0 });
        _socket.Send(preface.ToArray());
    }

    /// <summary>One GET; returns the response's DATA octets.</summary>
    public int RoundTrip() => RoundTrips(1);

    /// <summary><paramref name="streams"/> concurrent GETs (h2load's -m); returns the responses' DATA octets.</summary>
    public int RoundTrips(int streams)
    {
        int last = _nextStream + 2 * (streams - 1);
        for (int i = 0; i < streams; i++)
        {
            BinaryPrimitives.WriteInt32BigEndian(_request.AsSpan(5), _nextStream);
            _nextStream += 2;
            _socket.Send(_request);
        }
        int left = streams;
        int body = 0;
        while (true)
        {
            while (_filled < FrameHeaderLength || _filled < FrameHeaderLength + Length())
            {
                int n = _socket.Receive(_receive.AsSpan(_filled));
                if (n <= 0)
                {
                    throw new InvalidOperationException("the proxy closed the connection");
                }
                _filled += n;
            }
            int length = Length();
            byte type = _receive[3];
            byte flags = _receive[4];
            int id = BinaryPrimitives.ReadInt32BigEndian(_receive.AsSpan(5)) & 0x7FFF_FFFF;
            if (type is GoAway or RstStream)
            {
                throw new InvalidOperationException($"frame type {type} from the proxy"); // formatted only when failing
            }
            if (type == Settings && (flags & Ack) == 0)
            {
                _socket.Send(_settingsAck);
            }
            bool done = false;
            if (id > last - 2 * streams && id <= last && type is Data or Headers)
            {
                if (type == Data)
                {
                    body += length;
                }
                done = (flags & EndStream) != 0 && --left == 0;
            }
            int frame = FrameHeaderLength + length;
            _receive.AsSpan(frame, _filled - frame).CopyTo(_receive);
            _filled -= frame;
            if (done)
            {
                return body;
            }
        }
    }

    private int Length() => (_receive[0] << 16) | (_receive[1] << 8) | _receive[2];

    private static byte[] BuildRequest(string path, string? userAgent, string authority)
    {
        // HPACK (RFC 7541): :method GET (static 2), :scheme http (static 6), then :path and :authority (and user-agent) as
        // literals without indexing with an indexed name (section 6.2.2), so the proxy's decoder table never changes.
        var block = new List<byte> { 0x82, 0x86 };
        AddLiteral(block, 4, path);
        AddLiteral(block, 1, authority);
        if (userAgent is not null)
        {
            AddLiteral(block, 58, userAgent);
        }
        var frame = new byte[FrameHeaderLength + block.Count];
        frame[0] = (byte)(block.Count >> 16);
        frame[1] = (byte)(block.Count >> 8);
        frame[2] = (byte)block.Count;
        frame[3] = Headers;
        frame[4] = EndStream | EndHeaders;
        block.CopyTo(frame, FrameHeaderLength);
        return frame;
    }

    private static void AddLiteral(List<byte> block, int nameIndex, string value)
    {
        // 0000xxxx: literal without indexing, the name index as a 4-bit prefix integer (section 5.1); short values only.
        if (nameIndex < 15)
        {
            block.Add((byte)nameIndex);
        }
        else
        {
            block.Add(0x0F);
            block.Add((byte)(nameIndex - 15));
        }
        block.Add((byte)value.Length);
        block.AddRange(Encoding.ASCII.GetBytes(value));
    }
}
