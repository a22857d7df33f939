using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Hosting;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// One proxied HTTP/2 request over real loopback sockets: h2c client (prior knowledge, one stream at a time on a warm
/// connection) -> proxy (the stream bridged onto the HTTP/1.1 pipeline) -> HTTP/1.1 upstream -> proxy -> client. The
/// client sends a pre-encoded HEADERS frame and parses only frame headers, the upstream answers a pre-encoded 100-byte
/// response, both on blocking sockets: neither allocates per request, so the Allocated column (all threads) is the
/// proxy's per-request allocation on the HTTP/2 server path.
/// </summary>
[MemoryDiagnoser]
public class Http2ServerRoundTripBenchmarks
{
    private static readonly byte[] s_response = Encoding.ASCII.GetBytes(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + new string('x', 99) + "\n");

    private static readonly byte[] s_settingsAck = [0, 0, 0, 0x4, 0x1, 0, 0, 0, 0];

    private ProxyServer? _proxy;
    private FixedResponseUpstream? _upstream;
    private Socket? _client;
    private readonly byte[] _request = BuildRequest();
    private readonly byte[] _receive = new byte[64 * 1024];
    private int _filled;
    private int _nextStream = 1;

    [GlobalSetup]
    public void Setup()
    {
        _upstream = new FixedResponseUpstream(s_response);
        int upstreamPort = _upstream.Port;

        string yaml = $$"""
            listeners:
              - { name: bench, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: origin }
            clusters:
              origin:
                destinations: [{ address: "http://127.0.0.1:{{upstreamPort}}" }]
            """;
        _proxy = ProxyServer.FromYaml(yaml);
        _proxy.StartAsync().GetAwaiter().GetResult();
        _client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 10_000 };
        _client.Connect(_proxy.GetEndPoint("bench"));
        // Preface, SETTINGS INITIAL_WINDOW_SIZE = 2^30, connection window opened to 2^31-1 (RFC 9113 sections 3.4, 6.5.2,
        // 6.9): the client never has to send WINDOW_UPDATE.
        byte[] preface = [.. "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8, 0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0x40, 0, 0, 0,
            0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0x7F, 0xFF, 0, 0];
        _client.Send(preface);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _client?.Dispose();
        _proxy?.StopAsync(TimeSpan.FromSeconds(2)).GetAwaiter().GetResult();
        _upstream?.Dispose();
    }

    [Benchmark]
    public int ProxiedHttp2Request()
    {
        Socket client = _client!;
        int stream = _nextStream;
        _nextStream += 2;
        BinaryPrimitives.WriteInt32BigEndian(_request.AsSpan(5), stream);
        client.Send(_request);
        int body = 0;
        while (true)
        {
            while (_filled < 9 || _filled < 9 + FrameLength())
            {
                int n = client.Receive(_receive.AsSpan(_filled));
                if (n <= 0)
                {
                    throw new InvalidOperationException("the proxy closed the connection");
                }
                _filled += n;
            }
            int length = FrameLength();
            byte type = _receive[3];
            byte flags = _receive[4];
            int id = BinaryPrimitives.ReadInt32BigEndian(_receive.AsSpan(5)) & 0x7FFF_FFFF;
            if (type is 0x3 or 0x7)
            {
                throw new InvalidOperationException("RST_STREAM or GOAWAY from the proxy");
            }
            if (type == 0x4 && (flags & 0x1) == 0)
            {
                client.Send(s_settingsAck);
            }
            bool done = id == stream && type is 0x0 or 0x1 && (flags & 0x1) != 0;
            if (id == stream && type == 0x0)
            {
                body += length;
            }
            int frame = 9 + length;
            _receive.AsSpan(frame, _filled - frame).CopyTo(_receive);
            _filled -= frame;
            if (done)
            {
                return body;
            }
        }
    }

    private int FrameLength() => (_receive[0] << 16) | (_receive[1] << 8) | _receive[2];

    /// <summary>HEADERS (END_STREAM | END_HEADERS): GET, http, then :path, :authority, user-agent as literals without indexing.</summary>
    private static byte[] BuildRequest()
    {
        byte[] block = [0x82, 0x86, 0x04, 17, .. "/api/items?page=2"u8, 0x01, 13, .. "bench.example"u8, 0x0F, 58 - 15, 5, .. "bench"u8];
        var frame = new byte[9 + block.Length];
        frame[2] = (byte)block.Length;
        frame[3] = 0x1;
        frame[4] = 0x5;
        block.CopyTo(frame, 9);
        return frame;
    }
}
