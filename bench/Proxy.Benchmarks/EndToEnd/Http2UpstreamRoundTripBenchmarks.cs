using System.Net;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Hosting;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// One proxied request to an h2c upstream over real loopback sockets: HTTP/1.1 client -> proxy -> one stream on a
/// warm multiplexed HTTP/2 connection -> proxy -> client. The upstream, <see cref="FixedH2cResponseUpstream"/>, answers
/// every request stream with a pre-encoded HEADERS + DATA (100-byte body), so the Allocated column (all threads) is the
/// proxy's per-request allocation on the HTTP/2 path. <see cref="ProxiedPostOverH2c"/> sends a 100-byte body (content
/// length) the same way: the request pump, its DATA frame and the window the upstream gives back.
/// </summary>
[MemoryDiagnoser]
public class Http2UpstreamRoundTripBenchmarks
{
    private ProxyServer? _proxy;
    private FixedH2cResponseUpstream? _upstream;
    private RoundTripClient? _client;
    private RoundTripClient? _postClient;

    [GlobalSetup]
    public void Setup()
    {
        _upstream = new FixedH2cResponseUpstream();
        int upstreamPort = _upstream.Port;

        string yaml = $$"""
            listeners:
              - { name: bench, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: origin }
            clusters:
              origin:
                protocol: h2c
                destinations: [{ address: "http://127.0.0.1:{{upstreamPort}}" }]
            """;
        _proxy = ProxyServer.FromYaml(yaml);
        _proxy.StartAsync().GetAwaiter().GetResult();
        _client = new RoundTripClient(_proxy.GetEndPoint("bench"), Encoding.ASCII.GetBytes(
            "GET /api/items?page=2 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"));
        _postClient = new RoundTripClient(_proxy.GetEndPoint("bench"), Encoding.ASCII.GetBytes(
            "POST /api/items HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nContent-Type: application/json\r\n"
            + "Content-Length: 100\r\n\r\n" + "{\"name\":\"" + new string('x', 89) + "\"}"));
    }

    [Benchmark]
    public int ProxiedRequestOverH2c() => _client!.RoundTrip();

    [Benchmark]
    public int ProxiedPostOverH2c() => _postClient!.RoundTrip();

    [GlobalCleanup]
    public void Cleanup()
    {
        _client?.Dispose();
        _postClient?.Dispose();
        _proxy?.StopAsync(TimeSpan.FromSeconds(1)).GetAwaiter().GetResult();
        _upstream?.Dispose();
    }
}
