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

    private ProxyServer? _proxy;
    private FixedResponseUpstream? _upstream;
    private Socket? _socket;
    private RawH2cClient? _client;

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
        _socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 10_000 };
        _socket.Connect(_proxy.GetEndPoint("bench"));
        _client = new RawH2cClient(_socket, "/api/items?page=2", userAgent: "bench", authority: "bench.example");
        _client.SendPreface();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _socket?.Dispose();
        _proxy?.StopAsync(TimeSpan.FromSeconds(2)).GetAwaiter().GetResult();
        _upstream?.Dispose();
    }

    [Benchmark]
    public int ProxiedHttp2Request() => _client!.RoundTrip();
}
