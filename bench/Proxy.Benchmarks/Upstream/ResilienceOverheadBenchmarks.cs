using System.Net;
using System.Net.Sockets;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Hosting;

namespace Proxy.Benchmarks.Upstream;

/// <summary>
/// What the resilience machinery costs per proxied request, side by side in one run: the same warm keep-alive round
/// trip over loopback (client -> proxy -> upstream -> proxy -> client, as in EndToEnd/ProxyRoundTripBenchmarks) with
/// the cluster's resilience blocks off, with health checks + outlier detection + retries + circuit breaker on, and
/// with that plus the traffic features (route timeouts and per-try timeout, per-IP caps, a canary header rule and a
/// weighted split evaluated on every request). The upstream never fails, so this is the steady-state price of the
/// bookkeeping, which is what every request pays.
/// </summary>
[MemoryDiagnoser]
public class ResilienceOverheadBenchmarks
{
    public enum Machinery
    {
        Off,
        Resilience,
        ResilienceAndTraffic,
    }

    private static readonly byte[] s_response = Encoding.ASCII.GetBytes(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + new string('x', 99) + "\n");

    private ProxyServer? _proxy;
    private EndToEnd.FixedResponseUpstream? _upstream;
    private EndToEnd.RoundTripClient? _client;

    [Params(Machinery.Off, Machinery.Resilience, Machinery.ResilienceAndTraffic)]
    public Machinery Mode { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _upstream = new EndToEnd.FixedResponseUpstream(s_response);
        int port = _upstream.Port;

        const string resilience = """
                health_check: { path: /healthz, interval: 1s, timeout: 500ms }
                outlier_detection: { consecutive_failures: 5, base_ejection: 30s, max_ejection_percent: 50 }
                retry: { attempts: 2, on: [connect_failure, reset, 502, 503, 504], backoff: { base: 25ms, max: 250ms }, budget_percent: 20 }
                circuit_breaker: { max_connections: 1024, max_pending: 1024, max_requests: 10000 }
            """;
        string cluster = Mode switch
        {
            Machinery.Off => "",
            Machinery.Resilience => resilience,
            _ => resilience.Replace("budget_percent: 20 }", "budget_percent: 20, per_try_timeout: 5s }", StringComparison.Ordinal),
        };
        string traffic = Mode == Machinery.ResilienceAndTraffic
            ? """, clusters: [{ name: origin, weight: 99 }, { name: twin, weight: 1 }], canary: { cluster: twin, header: { name: x-canary, value: "1" } }, request_timeout: 30s, response_timeout: 10s"""
            : ", cluster: origin";
        string limits = Mode == Machinery.ResilienceAndTraffic ? "limits: { max_connections_per_ip: 1000, max_requests_per_ip: 1000 }" : "";
        string yaml = $$"""
            {{limits}}
            listeners:
              - { name: bench, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }{{traffic}} }
            clusters:
              origin:
                destinations: [{ address: "http://127.0.0.1:{{port}}" }]
            {{cluster}}
              twin:
                destinations: [{ address: "http://127.0.0.1:{{port}}" }]
            {{cluster}}

            """;
        _proxy = ProxyServer.FromYaml(yaml);
        _proxy.StartAsync().GetAwaiter().GetResult();

        _client = new EndToEnd.RoundTripClient(_proxy.GetEndPoint("bench"), Encoding.ASCII.GetBytes("GET /api/items?page=2 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"));
    }

    [Benchmark]
    public int ProxiedRequest()
    {
        return _client!.RoundTrip();
    }

    /// <summary>
    /// The side-by-side run (<c>dotnet run -c Release --project bench/Proxy.Benchmarks -- resilience-ab [rounds]</c>):
    /// the three proxies run at once in this process and take turns, 2,000 requests each per round in a rotating
    /// order, so drift in the machine's load (other processes, frequency) hits all three alike; BenchmarkDotNet's
    /// one-after-the-other runs cannot cancel that on a shared machine. Prints the median time per request of each
    /// and its cost relative to Off.
    /// </summary>
    public static void RunSideBySide(int rounds)
    {
        Machinery[] modes = [Machinery.Off, Machinery.Resilience, Machinery.ResilienceAndTraffic];
        var benches = new ResilienceOverheadBenchmarks[modes.Length];
        var perRequest = new List<double>[modes.Length];
        for (int m = 0; m < modes.Length; m++)
        {
            benches[m] = new ResilienceOverheadBenchmarks { Mode = modes[m] };
            benches[m].Setup();
            perRequest[m] = [];
        }
        const int Block = 2000;
        for (int warm = 0; warm < 3; warm++)
        {
            foreach (var bench in benches)
            {
                for (int i = 0; i < Block; i++)
                {
                    bench.ProxiedRequest();
                }
            }
        }
        var ratios = new List<double>[modes.Length];
        for (int m = 0; m < modes.Length; m++)
        {
            ratios[m] = [];
        }
        var clock = new System.Diagnostics.Stopwatch();
        var roundTimes = new double[modes.Length];
        // CPU time of this whole process (client, proxy and upstream threads alike in all three) per request: less
        // disturbed than wall time when other processes compete for the cores.
        var cpuPerRequest = new List<double>[modes.Length];
        var cpuRatios = new List<double>[modes.Length];
        var roundCpu = new double[modes.Length];
        for (int m = 0; m < modes.Length; m++)
        {
            cpuPerRequest[m] = [];
            cpuRatios[m] = [];
        }
        for (int round = 0; round < rounds; round++)
        {
            for (int k = 0; k < modes.Length; k++)
            {
                int m = (round + k) % modes.Length;
                TimeSpan cpuBefore = Environment.CpuUsage.TotalTime;
                clock.Restart();
                for (int i = 0; i < Block; i++)
                {
                    benches[m].ProxiedRequest();
                }
                roundTimes[m] = clock.Elapsed.TotalMicroseconds / Block;
                roundCpu[m] = (Environment.CpuUsage.TotalTime - cpuBefore).TotalMicroseconds / Block;
                perRequest[m].Add(roundTimes[m]);
                cpuPerRequest[m].Add(roundCpu[m]);
            }
            for (int m = 0; m < modes.Length; m++)
            {
                ratios[m].Add(roundTimes[m] / roundTimes[0]);
                cpuRatios[m].Add(roundCpu[m] / roundCpu[0]);
            }
        }
        Console.WriteLine($"side by side, {rounds} rounds x {Block} requests per proxy per round (one warm keep-alive connection each):");
        for (int m = 0; m < modes.Length; m++)
        {
            Console.WriteLine($"  {modes[m],-22} wall: median {Median(perRequest[m]),7:0.00} us/request, ratio to Off {Median(ratios[m]):0.000} ({(Median(ratios[m]) - 1) * 100:+0.0;-0.0}%)"
                + $"   CPU: median {Median(cpuPerRequest[m]),7:0.00} us/request, ratio to Off {Median(cpuRatios[m]):0.000} ({(Median(cpuRatios[m]) - 1) * 100:+0.0;-0.0}%)");
        }
        foreach (var bench in benches)
        {
            foreach (var cluster in bench._proxy!.Snapshot.Clusters.Values)
            {
                Console.WriteLine($"  {bench.Mode}/{cluster.Name}: connections opened {cluster.Metrics?.ConnectionsOpened}, retries {cluster.Metrics?.Retries}");
            }
            bench.Cleanup();
        }
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _client?.Dispose();
        _proxy?.StopAsync(TimeSpan.FromSeconds(1)).GetAwaiter().GetResult();
        _upstream?.Dispose();
    }
}
