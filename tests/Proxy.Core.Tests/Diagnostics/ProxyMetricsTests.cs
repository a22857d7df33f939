using System.Diagnostics;
using System.Diagnostics.Metrics;
using Proxy.Configuration;
using Proxy.Diagnostics;
using Proxy.Model;
using Proxy.Transport;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Core.Tests.Diagnostics;

public sealed class ProxyMetricsTests : IDisposable
{
    private const string Yaml = """
        listeners:
          - { name: public, address: "127.0.0.1:0" }
          - { name: echo, address: "127.0.0.1:0", handler: echo }
        admin: { address: "127.0.0.1:0" }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200 } }
          - { id: api, match: { path: "/api/{**rest}" }, cluster: backend }
        clusters:
          backend: { destinations: ["http://127.0.0.1:1"] }
        """;

    private readonly ProxyRuntime _runtime = new(Compile(Yaml));

    private static ProxySnapshot Compile(string yaml)
    {
        var result = ConfigLoader.LoadText(yaml, "t.yaml");
        Assert.True(result.Success, string.Join("\n", result.Errors));
        return result.Snapshot!;
    }

    public void Dispose() => _runtime.Dispose();

    private ListenerModel Listener(string name) => _runtime.Current.Listeners.Single(l => l.Name == name);

    private RouteModel Route(string id) => _runtime.Current.Routes.InMatchOrder.Single(r => r.Id == id);

    private PrometheusTextParser.Result Scrape() => PrometheusTextParser.Parse(PrometheusTextWriter.Write(_runtime.Metrics.Collect()));

    private static long Ticks(double seconds) => (long)(seconds * Stopwatch.Frequency);

    [Fact]
    public void RequestEnded_KnownTraffic_CountsByRouteClusterMethodAndStatusClass()
    {
        var metrics = _runtime.Metrics;
        var start = Stopwatch.GetTimestamp();
        metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Get, 200, start);
        metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Get, 204, start);
        metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Post, 502, start);
        metrics.RequestEnded(Listener("public"), Route("hello"), HttpMethod.Custom, 200, start);
        metrics.RequestEnded(Listener("public"), null, HttpMethod.Get, 404, start);
        metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Get, 0, start);
        // An upstream's 600-999 is relayed as sent and counted as a server error (RFC 9110 section 15).
        metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Post, 999, start);

        var scrape = Scrape();
        Assert.Equal(2, scrape.Value("proxy_requests_total", ("route", "api"), ("cluster", "backend"), ("method", "GET"), ("status_class", "2xx")));
        Assert.Equal(2, scrape.Value("proxy_requests_total", ("route", "api"), ("method", "POST"), ("status_class", "5xx")));
        Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", "api"), ("method", "GET"), ("status_class", "none")));
        Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", "hello"), ("cluster", ""), ("method", "OTHER"), ("status_class", "2xx")));
        Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", ""), ("cluster", ""), ("method", "GET"), ("status_class", "4xx")));
        Assert.Equal(5, scrape.Value("proxy_request_duration_seconds_count", ("route", "api"), ("cluster", "backend")));
    }

    [Fact]
    public void RequestEnded_OnEchoAndAdminListeners_IsNotCounted()
    {
        var start = Stopwatch.GetTimestamp();
        _runtime.Metrics.RequestEnded(Listener("echo"), null, HttpMethod.Get, 200, start);
        _runtime.Metrics.RequestEnded(Listener("admin"), null, HttpMethod.Get, 200, start);

        Assert.Empty(Scrape().Find("proxy_requests_total"));
    }

    [Fact]
    public void Record_DurationOnABound_FallsInThatBucket()
    {
        var route = new RouteMetrics("r", "c");
        route.Record(HttpMethod.Get, 200, DurationBuckets.Ticks[2]);
        route.Record(HttpMethod.Get, 200, DurationBuckets.Ticks[2] + 1);
        route.Record(HttpMethod.Get, 200, Ticks(3600));
        var buckets = new long[DurationBuckets.Seconds.Length + 1];

        route.ReadBuckets(buckets);

        Assert.Equal(1, buckets[2]);
        Assert.Equal(1, buckets[3]);
        Assert.Equal(1, buckets[^1]);
        Assert.Equal(3, buckets.Sum());
    }

    [Fact]
    public void Collect_DurationHistogram_HasCumulativeBucketsAndSum()
    {
        var route = Route("api");
        route.Metrics!.Record(HttpMethod.Get, 200, Ticks(0.003));
        route.Metrics.Record(HttpMethod.Get, 200, Ticks(0.2));

        var scrape = Scrape();

        Assert.Equal(0, scrape.Value("proxy_request_duration_seconds_bucket", ("route", "api"), ("le", "0.0025")));
        Assert.Equal(1, scrape.Value("proxy_request_duration_seconds_bucket", ("route", "api"), ("le", "0.005")));
        Assert.Equal(2, scrape.Value("proxy_request_duration_seconds_bucket", ("route", "api"), ("le", "0.25")));
        Assert.Equal(2, scrape.Value("proxy_request_duration_seconds_bucket", ("route", "api"), ("le", "+Inf")));
        Assert.Equal(0.203, scrape.Value("proxy_request_duration_seconds_sum", ("route", "api")), 3);
        // Configured routes are listed before their first request; the unrouted series only once used.
        Assert.Equal(0, scrape.Value("proxy_request_duration_seconds_count", ("route", "hello")));
        Assert.Empty(scrape.Find("proxy_request_duration_seconds_count", ("route", "")));
    }

    [Fact]
    public void LocalReply_SameCodeTwice_CountsByListenerStatusAndDetails()
    {
        _runtime.Metrics.LocalReply(Listener("public"), 404, "no_route");
        _runtime.Metrics.LocalReply(Listener("public"), 404, "no_route");
        _runtime.Metrics.LocalReply(Listener("public"), 502, "upstream_connect_failed");

        var scrape = Scrape();

        Assert.Equal(2, scrape.Value("proxy_local_replies_total", ("listener", "public"), ("status", "404"), ("details", "no_route")));
        Assert.Equal(1, scrape.Value("proxy_local_replies_total", ("status", "502"), ("details", "upstream_connect_failed")));
    }

    [Fact]
    public void Collect_EveryFamily_IsValidExpositionWithHelpAndType()
    {
        _runtime.Metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Get, 200, Stopwatch.GetTimestamp());
        _runtime.Current.Clusters["backend"].Metrics!.ConnectFailed(Proxy.Upstream.ConnectError.Refused);

        var scrape = Scrape();

        foreach (var name in new[]
        {
            "proxy_info", "proxy_requests_total", "proxy_request_duration_seconds", "proxy_local_replies_total",
            "proxy_connections_active", "proxy_connections_accepted_total", "proxy_accept_paused_total",
            "proxy_upstream_connect_failures_total", "proxy_upstream_connections_opened_total", "proxy_upstream_connections_open",
            "proxy_upstream_connections_idle", "proxy_upstream_requests_active",
            "proxy_request_body_bytes_total", "proxy_response_body_bytes_total", "proxy_http2_streams_active",
            "proxy_upstream_duration_seconds", "proxy_upstream_pool_waits_total", "proxy_upstream_pool_wait_seconds",
            "proxy_upstream_http2_streams_active",
        })
        {
            Assert.True(scrape.Types.ContainsKey(name), $"no TYPE for {name}");
            Assert.False(string.IsNullOrWhiteSpace(scrape.Help[name]), $"no HELP for {name}");
        }
        Assert.Equal(1, scrape.Value("proxy_upstream_connect_failures_total", ("cluster", "backend"), ("reason", "refused")));
        Assert.Equal(0, scrape.Value("proxy_upstream_connect_failures_total", ("cluster", "backend"), ("reason", "timeout")));
        Assert.Equal(0, scrape.Value("proxy_connections_active", ("listener", "admin")));
        Assert.Equal(1, scrape.Value("proxy_info", ("config_version", _runtime.Current.Version)));
    }

    [Fact]
    public void RequestEnded_BodyBytesAndUpstreamTimes_ExportedPerRouteAndCluster()
    {
        _runtime.Metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Post, 200, Stopwatch.GetTimestamp(), 100, 7);
        _runtime.Metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Get, 200, Stopwatch.GetTimestamp(), 0, 5);
        ClusterMetrics cluster = _runtime.Current.Clusters["backend"].Metrics!;
        cluster.UpstreamResponded(Ticks(0.002));
        cluster.UpstreamResponded(Ticks(0.2));
        cluster.PoolWaited(Ticks(0.0004));

        var scrape = Scrape();

        Assert.Equal(100, scrape.Value("proxy_request_body_bytes_total", ("route", "api"), ("cluster", "backend")));
        Assert.Equal(12, scrape.Value("proxy_response_body_bytes_total", ("route", "api"), ("cluster", "backend")));
        Assert.Empty(scrape.Find("proxy_request_body_bytes_total", ("route", "")));
        Assert.Equal(2, scrape.Value("proxy_upstream_duration_seconds_count", ("cluster", "backend")));
        Assert.Equal(0, scrape.Value("proxy_upstream_duration_seconds_bucket", ("cluster", "backend"), ("le", "0.001")));
        Assert.Equal(1, scrape.Value("proxy_upstream_duration_seconds_bucket", ("cluster", "backend"), ("le", "0.0025")));
        Assert.Equal(2, scrape.Value("proxy_upstream_duration_seconds_bucket", ("cluster", "backend"), ("le", "0.25")));
        Assert.Equal(0.202, scrape.Value("proxy_upstream_duration_seconds_sum", ("cluster", "backend")), 6);
        Assert.Equal(1, scrape.Value("proxy_upstream_pool_waits_total", ("cluster", "backend")));
        Assert.Equal(1, scrape.Value("proxy_upstream_pool_wait_seconds_bucket", ("cluster", "backend"), ("le", "0.0005")));
    }

    [Fact]
    public void Adopt_RecompiledConfig_KeepsCountersOfSameRouteAndCluster()
    {
        var before = Route("api").Metrics!;
        before.Record(HttpMethod.Get, 200, 1);
        var next = Compile(Yaml);
        Assert.NotSame(before, next.Routes.InMatchOrder.Single(r => r.Id == "api").Metrics);

        _runtime.Publish(next);

        Assert.Same(before, Route("api").Metrics);
        Assert.Same(next.Clusters["backend"].Metrics, _runtime.Current.Clusters["backend"].Metrics);
        Assert.Equal(1, Scrape().Value("proxy_requests_total", ("route", "api"), ("status_class", "2xx")));
    }

    [Fact]
    public void RequestEnded_WarmedUp_AllocatesNothing()
    {
        var listener = Listener("public");
        var route = Route("api");
        var metrics = _runtime.Metrics;
        metrics.RequestEnded(listener, route, HttpMethod.Get, 200, Stopwatch.GetTimestamp());

        // Every method and status in each round (1000 calls a round, a multiple of 10 and of 500).
        int i = 0;
        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            metrics.RequestEnded(listener, route, (HttpMethod)(i % 10), 100 + i % 500, Stopwatch.GetTimestamp());
            i++;
        }, iterations: 1000);

        Assert.Equal(0, allocated);
    }

    [Fact]
    public void RequestEnded_WithMeterListenerOnDurationHistogram_RecordsRouteTagsWithoutAllocating()
    {
        var recorded = new List<(double Value, string Route, string Cluster)>();
        double last = -1;
        int count = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            // Only this runtime's meter: tests run in parallel, each server with its own meters.
            if (ReferenceEquals(instrument.Meter, _runtime.Metrics.HttpMeter) && instrument.Name == "proxy.request.duration")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<double>((_, value, tags, _) =>
        {
            count++;
            last = value;
            if (recorded.Count == 0)
            {
                recorded.Add((value, (string)tags[0].Value!, (string)tags[1].Value!));
            }
        });
        listener.Start();
        var publicListener = Listener("public");
        var route = Route("api");
        _runtime.Metrics.RequestEnded(publicListener, route, HttpMethod.Get, 200, Stopwatch.GetTimestamp() - Ticks(0.5));

        long allocated = SteadyStateAllocation.BestOfRounds(
            () => _runtime.Metrics.RequestEnded(publicListener, route, HttpMethod.Get, 200, Stopwatch.GetTimestamp()), iterations: 1000);

        Assert.Equal(0, allocated);
        // The first call, a warming round and three measured rounds, each call measured once by the listener.
        Assert.Equal(1 + 4 * 1000, count);
        Assert.Equal(("api", "backend"), (recorded[0].Route, recorded[0].Cluster));
        Assert.InRange(recorded[0].Value, 0.5, 5);
        Assert.InRange(last, 0, 1);
    }

    [Fact]
    public void ObservableRequestCounter_MeterListener_SeesOurCounters()
    {
        _runtime.Metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Get, 200, Stopwatch.GetTimestamp());
        _runtime.Metrics.RequestEnded(Listener("public"), Route("api"), HttpMethod.Get, 200, Stopwatch.GetTimestamp());
        var seen = new List<(string Name, long Value, Dictionary<string, object?> Tags)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (ReferenceEquals(instrument.Meter, _runtime.Metrics.HttpMeter))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            seen.Add((instrument.Name, value, tags.ToArray().ToDictionary(t => t.Key, t => t.Value))));
        listener.Start();

        listener.RecordObservableInstruments();

        var requests = Assert.Single(seen, s => s.Name == "proxy.requests");
        Assert.Equal(2, requests.Value);
        Assert.Equal("api", requests.Tags["route"]);
        Assert.Equal("backend", requests.Tags["cluster"]);
        Assert.Equal("GET", requests.Tags["method"]);
        Assert.Equal("2xx", requests.Tags["status_class"]);
    }
}
