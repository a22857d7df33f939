using System.Net;
using System.Net.Sockets;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Hosting;

namespace Proxy.Benchmarks.Observability;

/// <summary>
/// One proxied request over loopback, with the access log (to a file), tracing (sampling 0, traceparent
/// propagated) and insights on, against the same request with all three off: the cost of observability per request.
/// Metrics are always on. Same shape as <see cref="EndToEnd.ProxyRoundTripBenchmarks"/>.
/// </summary>
[MemoryDiagnoser]
public class ObservabilityRoundTripBenchmarks
{
    private static readonly byte[] s_response = Encoding.ASCII.GetBytes(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + new string('x', 99) + "\n");

    private ProxyServer? _proxy;
    private EndToEnd.FixedResponseUpstream? _upstream;
    private EndToEnd.RoundTripClient? _client;
    private string _log = "";

    [Params(false, true)]
    public bool Observability { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
        _upstream = new EndToEnd.FixedResponseUpstream(s_response);
        int upstreamPort = _upstream.Port;

        _log = Path.Combine(Path.GetTempPath(), $"proxy-bench-{Environment.ProcessId}.log");
        string observability = Observability
            ? $$"""
              tracing: { sampling: 0 }
              access_log: { path: "{{_log}}" }
              insights: { enabled: true }
              """
            : "insights: { enabled: false }";
        string yaml = $$"""
            listeners:
              - { name: bench, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: origin }
            clusters:
              origin:
                destinations: [{ address: "http://127.0.0.1:{{upstreamPort}}" }]
            {{observability}}
            """;
        _proxy = ProxyServer.FromYaml(yaml);
        _proxy.StartAsync().GetAwaiter().GetResult();
        _client = new EndToEnd.RoundTripClient(_proxy.GetEndPoint("bench"), Encoding.ASCII.GetBytes("GET /api/items?page=2 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n"
            + "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"));
    }

    [Benchmark]
    public int ProxiedRequest()
    {
        return _client!.RoundTrip();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _client?.Dispose();
        _proxy?.StopAsync(TimeSpan.FromSeconds(1)).GetAwaiter().GetResult();
        _upstream?.Dispose();
        File.Delete(_log);
    }
}
