using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.Benchmarks.EndToEnd;
using Proxy.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// An HTTP/2 client's requests (h2c, prior knowledge) bridged to an HTTP/1.1 upstream allocate (almost) nothing once
/// warm: the pooled stream keeps its bridge, forwarder and loops. The client is a blocking socket that sends
/// pre-encoded frames and never decodes HPACK, and the upstream is the blocking <see cref="FixedResponseUpstream"/>, so the process-wide allocation delta is the proxy's.
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class Http2SteadyStateAllocationTests(ITestOutputHelper output)
{
    private const int FrameHeaderLength = 9;
    private const byte Data = 0x0, Headers = 0x1, Settings = 0x4, WindowUpdate = 0x8, GoAway = 0x7, RstStream = 0x3;
    private const byte EndStream = 0x1, EndHeaders = 0x4, Ack = 0x1;

    [Fact]
    public async Task ProxiedHttp2Requests_WarmConnection_AllocateUnder400BytesEach()
    {
        using var upstream = new FixedResponseUpstream(SteadyStateAllocationTests.FixedResponse);
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.ReceiveTimeout = 5000;
        client.Connect(proxy.Public);
        var h2 = new RawH2c(client);
        h2.SendPreface();

        Assert.Equal(100, h2.RoundTrip());
        for (int i = 0; i < 3000; i++)
        {
            h2.RoundTrip();
        }
        // The counter is process-wide: work left over from earlier tests (connections closing, hosts stopping) lands in
        // it too, and the stream's pooled async boxes miss their per-thread caches more when the thread pool has grown.
        // The best of five rounds is the proxy's own steady state (14-99 B alone); a parallel test can still add 600 KB to
        // every round of three (201 and 242 B were seen in full runs), so the bound is 400 B: a bridge built per stream
        // (~1.7 KB per request, the regression this guards) still fails it.
        const int Requests = 3000;
        long best = long.MaxValue;
        for (int round = 0; round < 5; round++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < Requests; i++)
            {
                h2.RoundTrip();
            }
            long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / Requests;
            output.WriteLine($"round {round}: {perRequest} bytes per proxied HTTP/2 request");
            best = Math.Min(best, perRequest);
        }

        Assert.True(best < 400, $"{best} bytes allocated per proxied HTTP/2 request in steady state (best of five rounds)");
    }

    /// <summary>A blocking h2c client: one stream at a time, request frames encoded once, only frame headers parsed.</summary>
    private sealed class RawH2c(Socket socket)
    {
        private readonly byte[] _request = BuildRequest();
        private readonly byte[] _receive = new byte[64 * 1024];
        private readonly byte[] _settingsAck = [0, 0, 0, Settings, Ack, 0, 0, 0, 0];
        private int _filled;
        private int _nextStream = 1;

        public void SendPreface()
        {
            var preface = new List<byte>();
            preface.AddRange("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray());
            // SETTINGS: INITIAL_WINDOW_SIZE (0x4) = 2^30, so no stream ever waits for a WINDOW_UPDATE from us.
            preface.AddRange(new byte[] { 0, 0, 6, Settings, 0, 0, 0, 0, 0, 0, 0x4, 0x40, 0, 0, 0 });
            // The connection window (section 6.9.2 starts it at 65,535 whatever SETTINGS say) opened to 2^31-1.
            preface.AddRange(new byte[] { 0, 0, 4, WindowUpdate, 0, 0, 0, 0, 0, 0x7F, 0xFF, 0, 0 });
            socket.Send(preface.ToArray());
        }

        /// <summary>One GET; returns the response's DATA octets.</summary>
        public int RoundTrip()
        {
            int stream = _nextStream;
            _nextStream += 2;
            BinaryPrimitives.WriteInt32BigEndian(_request.AsSpan(5), stream);
            socket.Send(_request);
            int body = 0;
            while (true)
            {
                while (_filled < FrameHeaderLength || _filled < FrameHeaderLength + Length())
                {
                    int n = socket.Receive(_receive.AsSpan(_filled));
                    Assert.True(n > 0, "the proxy closed the connection");
                    _filled += n;
                }
                int length = Length();
                byte type = _receive[3];
                byte flags = _receive[4];
                int id = BinaryPrimitives.ReadInt32BigEndian(_receive.AsSpan(5)) & 0x7FFF_FFFF;
                if (type is GoAway or RstStream)
                {
                    Assert.Fail($"frame type {type} from the proxy"); // formatted only when failing: no allocation per frame
                }
                if (type == Settings && (flags & Ack) == 0)
                {
                    socket.Send(_settingsAck);
                }
                bool done = false;
                if (id == stream && type is Data or Headers)
                {
                    if (type == Data)
                    {
                        body += length;
                    }
                    done = (flags & EndStream) != 0;
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

        private static byte[] BuildRequest()
        {
            // HPACK (RFC 7541): :method GET (static 2), :scheme http (static 6), then :path and :authority as literals
            // without indexing with an indexed name (section 6.2.2), so the proxy's decoder table never changes.
            var block = new List<byte> { 0x82, 0x86 };
            AddLiteral(block, 4, "/api/items?page=2");
            AddLiteral(block, 1, "example.test");
            AddLiteral(block, 58, "test"); // user-agent
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
            // 0000xxxx: literal without indexing, the name index as a 4-bit prefix integer (section 5.1).
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
}
