using System.Net;
using System.Net.Sockets;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Hosting;
using Proxy.Pipeline;

namespace Proxy.Benchmarks.Pipeline;

/// <summary>
/// One proxied request over loopback through a route with a filter in every later phase (request_headers in the
/// upstream-request phase, response_headers in the response-headers phase, a counting logging filter), against the
/// same route without policies: the cost of the phases per request. Same shape as
/// <see cref="EndToEnd.ProxyRoundTripBenchmarks"/>.
/// </summary>
[MemoryDiagnoser]
public class FilterPhaseRoundTripBenchmarks
{
    private static readonly byte[] s_response = Encoding.ASCII.GetBytes(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: origin\r\nContent-Length: 100\r\n\r\n" + new string('x', 99) + "\n");

    private static readonly Lazy<bool> s_registered = new(() =>
    {
        PolicyKinds.Register("bench_count_log", _ => new CountingLog());
        return true;
    });

    private ProxyServer? _proxy;
    private EndToEnd.FixedResponseUpstream? _upstream;
    private EndToEnd.RoundTripClient? _client;

    [Params(false, true)]
    public bool Phases { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _ = s_registered.Value;
        Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
        _upstream = new EndToEnd.FixedResponseUpstream(s_response);
        int upstreamPort = _upstream.Port;

        string yaml = $$"""
            policies:
              up: { request_headers: { add: { x-gateway: edge }, remove: [user-agent] } }
              down: { response_headers: { remove: [server], add: { x-frame-options: DENY } } }
              log: { bench_count_log: {} }
            listeners:
              - { name: bench, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: origin, policies: [{{(Phases ? "up, down, log" : "")}}] }
            clusters:
              origin:
                destinations: [{ address: "http://127.0.0.1:{{upstreamPort}}" }]
            insights: { enabled: false }
            """;
        _proxy = ProxyServer.FromYaml(yaml);
        _proxy.StartAsync().GetAwaiter().GetResult();
        _client = new EndToEnd.RoundTripClient(_proxy.GetEndPoint("bench"),
            Encoding.ASCII.GetBytes("GET /api/items?page=2 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"));
    }

    [Benchmark]
    public int ProxiedRequest() => _client!.RoundTrip();

    [GlobalCleanup]
    public void Cleanup()
    {
        _client?.Dispose();
        _proxy?.StopAsync(TimeSpan.FromSeconds(1)).GetAwaiter().GetResult();
        _upstream?.Dispose();
    }

    private sealed class CountingLog : IResponseCompleteFilter
    {
        private long _count;

        public void OnResponseComplete(RequestContext context) => Interlocked.Increment(ref _count);
    }
}
