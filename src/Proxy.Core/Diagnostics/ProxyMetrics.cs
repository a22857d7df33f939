using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Reflection;
using System.Runtime.CompilerServices;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Transport;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Diagnostics;

/// <summary>
/// The metrics of one server. Counting happens in handles pre-bound to their labels at config compile time
/// (<see cref="RouteMetrics"/>, <see cref="ClusterMetrics"/>, <see cref="ListenerMetrics"/>): a request does a few
/// interlocked adds and allocates nothing. The same numbers are read two ways: <see cref="Collect"/> for our own
/// Prometheus endpoint, and observable instruments on the meters <c>Proxy.Http</c> and <c>Proxy.Upstream</c> for
/// OpenTelemetry or <c>dotnet-counters</c>. The duration histogram is also recorded into a real
/// <see cref="Histogram{T}"/>, but only while something listens to it.
/// </summary>
internal sealed class ProxyMetrics : IDisposable
{
    public const string HttpMeterName = "Proxy.Http";
    public const string UpstreamMeterName = "Proxy.Upstream";

    private readonly ProxyRuntime _runtime;
    private readonly Meter _httpMeter;
    private readonly Meter _upstreamMeter;
    private readonly Histogram<double> _duration;
    private readonly Histogram<double> _upstreamDuration;
    private readonly Histogram<double> _poolWait;

    // Registries of every handle ever adopted, in first-seen order, keyed by their labels: a recompiled config gets
    // the handles of its predecessor so counters never go backwards. Guarded by _lock (control plane only).
    private readonly Lock _lock = new();
    private readonly Dictionary<(string Route, string Cluster), RouteMetrics> _routes = [];
    private readonly List<RouteMetrics> _routeList = [];
    private readonly Dictionary<string, ClusterMetrics> _clusters = new(StringComparer.Ordinal);
    private readonly List<ClusterMetrics> _clusterList = [];
    private readonly Dictionary<string, ListenerMetrics> _listeners = new(StringComparer.Ordinal);
    private readonly List<ListenerMetrics> _listenerList = [];

    /// <summary>Local replies are an error path: a dictionary lookup on constant strings is cheap enough there.</summary>
    private readonly ConcurrentDictionary<(string Listener, int Status, string Details), StrongBox<long>> _localReplies = new();

    public ProxyMetrics(ProxyRuntime runtime)
    {
        _runtime = runtime;
        string version = Version;
        _httpMeter = new Meter(HttpMeterName, version);
        _upstreamMeter = new Meter(UpstreamMeterName, version);

        _duration = _httpMeter.CreateHistogram<double>("proxy.request.duration", "s",
            "Time from a parsed request head to the end of its response.", tags: null,
            new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets.Seconds });
        _httpMeter.CreateObservableCounter("proxy.requests", () => Observe(CollectRequests()), "{request}",
            "Requests handled, by route, cluster, method and status class.");
        _httpMeter.CreateObservableCounter("proxy.request.body.bytes", () => Observe(CollectBodyBytes(response: false)), "By",
            "Request body bytes received from clients (content, without heads or chunk framing), by route and cluster.");
        _httpMeter.CreateObservableCounter("proxy.response.body.bytes", () => Observe(CollectBodyBytes(response: true)), "By",
            "Response body bytes sent to clients (content, without heads or chunk framing), by route and cluster.");
        _httpMeter.CreateObservableGauge("proxy.http2.streams.active", () => Observe(CollectServerStreams()), "{stream}",
            "Open HTTP/2 streams on client connections, by listener.");
        _httpMeter.CreateObservableCounter("proxy.local_replies", () => Observe(CollectLocalReplies()), "{response}",
            "Answers the proxy wrote itself, by listener, status and details code.");
        _httpMeter.CreateObservableGauge("proxy.connections.active", () => Observe(CollectActiveConnections()), "{connection}",
            "Open client connections, by listener.");
        _httpMeter.CreateObservableCounter("proxy.connections.accepted", () => Observe(CollectListeners(refused: false)), "{connection}",
            "Client connections accepted, by listener.");
        _httpMeter.CreateObservableCounter("proxy.client_ip.refused", () => Observe(CollectClientIpRefused()), "{refusal}",
            "Connections and requests refused by limits.max_connections_per_ip and max_requests_per_ip, by kind.");
        _httpMeter.CreateObservableCounter("proxy.accept.paused", () => Observe(CollectListeners(refused: true)), "{pause}",
            "Times a listener stopped accepting because server.max_connections was reached.");

        _upstreamDuration = _upstreamMeter.CreateHistogram<double>("proxy.upstream.duration", "s",
            "Time from the start of an upstream try (connection rent or connect) to the upstream's response head.", tags: null,
            new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets.Seconds });
        _poolWait = _upstreamMeter.CreateHistogram<double>("proxy.upstream.pool.wait.duration", "s",
            "Time a request waited for an upstream connection or HTTP/2 stream when none was ready.", tags: null,
            new InstrumentAdvice<double> { HistogramBucketBoundaries = DurationBuckets.Seconds });
        _upstreamMeter.CreateObservableCounter("proxy.upstream.pool.waits", () => Observe(CollectPoolWaits()), "{request}",
            "Requests that found no ready upstream connection and waited for one, by cluster.");
        _upstreamMeter.CreateObservableGauge("proxy.upstream.http2.streams.active", () => Observe(CollectDestinations(DestinationValue.Http2Streams)), "{stream}",
            "Open HTTP/2 streams to each destination, by cluster and destination.");
        _upstreamMeter.CreateObservableCounter("proxy.upstream.connect_failures", () => Observe(CollectConnectFailures()), "{connection}",
            "Upstream connections that could not be opened, by cluster and reason.");
        _upstreamMeter.CreateObservableCounter("proxy.upstream.connections.opened", () => Observe(CollectConnectionsOpened()), "{connection}",
            "Upstream connections opened, by cluster.");
        _upstreamMeter.CreateObservableGauge("proxy.upstream.connections.open", () => Observe(CollectDestinations(DestinationValue.Open)), "{connection}",
            "Open upstream connections (busy and idle), by cluster and destination.");
        _upstreamMeter.CreateObservableGauge("proxy.upstream.connections.idle", () => Observe(CollectDestinations(DestinationValue.Idle)), "{connection}",
            "Idle pooled upstream connections, by cluster and destination.");
        _upstreamMeter.CreateObservableGauge("proxy.upstream.requests.active", () => Observe(CollectDestinations(DestinationValue.Active)), "{request}",
            "Requests in flight to each destination, by cluster and destination.");
    }

    /// <summary>This server's <c>Proxy.Http</c> meter (several servers in one process each have their own).</summary>
    internal Meter HttpMeter => _httpMeter;

    internal Meter UpstreamMeter => _upstreamMeter;

    /// <summary>
    /// Requests that ended before a route was chosen (no match, CONNECT, body too large, a head refused by the parser,
    /// a head limit or header_timeout).
    /// </summary>
    public RouteMetrics Unrouted { get; } = new("", "");

    public static string Version =>
        typeof(ProxyMetrics).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion?.Split('+')[0] ?? "0.0.0";

    // ---- data plane -----------------------------------------------------------------------------

    /// <summary>
    /// Called once per request when its response is complete. Requests on echo and admin listeners are not
    /// counted: they are not proxy traffic. <paramref name="startTimestamp"/> is from <see cref="Stopwatch.GetTimestamp"/>.
    /// </summary>
    public void RequestEnded(ListenerModel listener, RouteModel? route, HttpMethod method, int status, long startTimestamp,
        long requestBodyBytes = 0, long responseBodyBytes = 0)
    {
        if (listener.Handler != ListenerHandler.Proxy)
        {
            return;
        }
        long elapsed = Stopwatch.GetTimestamp() - startTimestamp;
        RouteMetrics handle = route?.Metrics ?? Unrouted;
        handle.Record(method, status, elapsed, requestBodyBytes, responseBodyBytes);
        if (_duration.Enabled)
        {
            _duration.Record(elapsed / (double)Stopwatch.Frequency, handle.Tags);
        }
    }

    /// <summary>
    /// A head refused before routing (by the parser, a head limit or header_timeout): counted as a request under the
    /// unrouted labels, as a 404 no_route is, with a duration of 0 (no head was parsed, so the request never started;
    /// the access log's line says 0 too). <paramref name="method"/> is <see cref="HttpMethod.Custom"/> ("OTHER") when
    /// the request line was not parsed. Error path, but as allocation-free as <see cref="RequestEnded"/>.
    /// </summary>
    public void HeadRejected(ListenerModel listener, HttpMethod method, int status)
    {
        if (listener.Handler != ListenerHandler.Proxy)
        {
            return;
        }
        Unrouted.Record(method, status, 0);
        if (_duration.Enabled)
        {
            _duration.Record(0, Unrouted.Tags);
        }
    }

    /// <summary>Counts an answer the proxy wrote itself (error path: called from the one place local replies are sent).</summary>
    public void LocalReply(ListenerModel listener, int status, string details)
    {
        var counter = _localReplies.GetOrAdd((listener.Name, status, details), static _ => new StrongBox<long>());
        Interlocked.Increment(ref counter.Value);
    }

    // ---- control plane --------------------------------------------------------------------------

    private long _reloadsSucceeded;
    private long _reloadsFailed;

    /// <summary>Counts one config reload attempt (<c>proxy_config_reloads_total{result}</c>).</summary>
    public void ConfigReloaded(bool success)
    {
        if (success)
        {
            Interlocked.Increment(ref _reloadsSucceeded);
        }
        else
        {
            Interlocked.Increment(ref _reloadsFailed);
        }
    }

    /// <summary>
    /// Registers the handles of a compiled snapshot before it is published. A route, cluster or listener whose
    /// labels are still registered gets the earlier handle, so its counters continue across a config reload.
    /// Handles that neither <paramref name="snapshot"/> nor <paramref name="replaced"/> (the snapshot it replaces)
    /// uses are dropped with their series: requests still running on the replaced snapshot count into its handles,
    /// so a removed name is exported until the reload after the one that removed it. Without this, every reload
    /// that renames a route or cluster (versioned names) would add series for the life of the process.
    /// </summary>
    public void Adopt(ProxySnapshot snapshot, ProxySnapshot? replaced)
    {
        lock (_lock)
        {
            foreach (RouteModel route in snapshot.Routes.InMatchOrder)
            {
                var fresh = route.Metrics ?? new RouteMetrics(route.Id, route.Cluster?.Name ?? "");
                var key = (fresh.RouteId, fresh.ClusterName);
                if (_routes.TryGetValue(key, out var existing))
                {
                    route.Metrics = existing;
                }
                else
                {
                    _routes.Add(key, fresh);
                    _routeList.Add(fresh);
                    route.Metrics = fresh;
                }
            }
            foreach (ClusterModel cluster in snapshot.Clusters.Values)
            {
                if (_clusters.TryGetValue(cluster.Name, out var existing))
                {
                    cluster.Metrics = existing;
                }
                else
                {
                    var fresh = cluster.Metrics ?? new ClusterMetrics(cluster.Name);
                    fresh.UpstreamDurationInstrument = _upstreamDuration;
                    fresh.PoolWaitInstrument = _poolWait;
                    _clusters.Add(cluster.Name, fresh);
                    _clusterList.Add(fresh);
                    cluster.Metrics = fresh;
                }
            }
            foreach (ListenerModel listener in snapshot.Listeners)
            {
                if (_listeners.TryGetValue(listener.Name, out var existing))
                {
                    listener.Metrics = existing;
                }
                else
                {
                    var fresh = listener.Metrics ?? new ListenerMetrics(listener.Name);
                    _listeners.Add(listener.Name, fresh);
                    _listenerList.Add(fresh);
                    listener.Metrics = fresh;
                }
            }
            DropUnused(snapshot, replaced);
        }
    }

    /// <summary>Removes the handles (and local reply counters) of names in neither snapshot. Caller holds _lock.</summary>
    private void DropUnused(ProxySnapshot snapshot, ProxySnapshot? replaced)
    {
        var routes = new HashSet<RouteMetrics>(ReferenceEqualityComparer.Instance);
        var clusters = new HashSet<string>(StringComparer.Ordinal);
        var listeners = new HashSet<string>(StringComparer.Ordinal);
        foreach (ProxySnapshot? s in (ReadOnlySpan<ProxySnapshot?>)[snapshot, replaced])
        {
            if (s is null)
            {
                continue;
            }
            foreach (RouteModel route in s.Routes.InMatchOrder)
            {
                if (route.Metrics is { } handle)
                {
                    routes.Add(handle);
                }
            }
            foreach (string name in s.Clusters.Keys)
            {
                clusters.Add(name);
            }
            foreach (ListenerModel listener in s.Listeners)
            {
                listeners.Add(listener.Name);
            }
        }
        if (_routeList.RemoveAll(h => !routes.Contains(h)) > 0)
        {
            foreach (var (key, handle) in _routes)
            {
                if (!routes.Contains(handle))
                {
                    _routes.Remove(key); // removing the current entry while enumerating is allowed for Dictionary
                }
            }
        }
        if (_clusterList.RemoveAll(h => !clusters.Contains(h.Name)) > 0)
        {
            foreach (string name in _clusters.Keys)
            {
                if (!clusters.Contains(name))
                {
                    _clusters.Remove(name);
                }
            }
        }
        if (_listenerList.RemoveAll(h => !listeners.Contains(h.Name)) > 0)
        {
            foreach (string name in _listeners.Keys)
            {
                if (!listeners.Contains(name))
                {
                    _listeners.Remove(name);
                }
            }
        }
        foreach (var key in _localReplies.Keys)
        {
            if (!listeners.Contains(key.Listener))
            {
                _localReplies.TryRemove(key, out _);
            }
        }
    }

    /// <summary>Every metric family, for the Prometheus endpoint. Allocates freely: runs once per scrape.</summary>
    public List<MetricFamily> Collect()
    {
        ProxySnapshot snapshot = _runtime.Current;
        var families = new List<MetricFamily>
        {
            new("proxy_info", MetricType.Gauge, "Build and config version of the running proxy; always 1.",
                [new([new("version", Version), new("config_version", snapshot.Version)], 1)]),
            new("proxy_requests_total", MetricType.Counter,
                "Requests handled on proxy listeners, by route, cluster, method and status class (status_class none: no response was sent).",
                CollectRequests()),
            new("proxy_request_duration_seconds", MetricType.Histogram,
                "Time from a parsed request head to the end of its response, by route and cluster.", [])
            {
                Histograms = CollectDurations(),
            },
            new("proxy_request_body_bytes_total", MetricType.Counter,
                "Request body bytes received from clients on proxy listeners (content: no heads, no chunk framing), by route and cluster.",
                CollectBodyBytes(response: false)),
            new("proxy_response_body_bytes_total", MetricType.Counter,
                "Response body bytes sent to clients on proxy listeners (content: no heads, no chunk framing), by route and cluster.",
                CollectBodyBytes(response: true)),
            new("proxy_http2_streams_active", MetricType.Gauge, "Open HTTP/2 streams on client connections, by listener.",
                CollectServerStreams()),
            new("proxy_local_replies_total", MetricType.Counter,
                "Answers the proxy wrote itself instead of relaying an upstream response, by listener, status and details code.",
                CollectLocalReplies()),
            new("proxy_connections_active", MetricType.Gauge, "Open client connections, by listener.", CollectActiveConnections()),
            new("proxy_connections_accepted_total", MetricType.Counter, "Client connections accepted, by listener.",
                CollectListeners(refused: false)),
            new("proxy_accept_paused_total", MetricType.Counter,
                "Times a listener stopped accepting because server.max_connections was reached, by listener.",
                CollectListeners(refused: true)),
            new("proxy_client_ip_refused_total", MetricType.Counter,
                "Client connections closed unanswered past limits.max_connections_per_ip (kind connection) and requests answered 503 past limits.max_requests_per_ip (kind request).",
                CollectClientIpRefused()),
            new("proxy_upstream_connect_failures_total", MetricType.Counter,
                "Upstream connections that could not be opened, by cluster and reason (refused, timeout, pool_exhausted).",
                CollectConnectFailures()),
            new("proxy_upstream_connections_opened_total", MetricType.Counter, "Upstream connections opened, by cluster.",
                CollectConnectionsOpened()),
            new("proxy_upstream_duration_seconds", MetricType.Histogram,
                "Time from the start of an upstream try (connection rent or connect) to the upstream's final response head, by cluster.", [])
            {
                Histograms = CollectClusterHistograms(poolWait: false),
            },
            new("proxy_upstream_pool_waits_total", MetricType.Counter,
                "Requests that found no ready upstream connection (HTTP/1.1: none idle; HTTP/2: every connection at its stream cap) and waited for one, by cluster.",
                CollectPoolWaits()),
            new("proxy_upstream_pool_wait_seconds", MetricType.Histogram,
                "Time those requests waited for a connection or stream (connect included; also when the wait failed), by cluster.", [])
            {
                Histograms = CollectClusterHistograms(poolWait: true),
            },
            new("proxy_upstream_http2_streams_active", MetricType.Gauge,
                "Open HTTP/2 streams to each destination, by cluster and destination.", CollectDestinations(DestinationValue.Http2Streams)),
            new("proxy_upstream_connections_open", MetricType.Gauge,
                "Open upstream connections (busy and idle), by cluster and destination.", CollectDestinations(DestinationValue.Open)),
            new("proxy_upstream_connections_idle", MetricType.Gauge,
                "Idle pooled upstream connections, by cluster and destination.", CollectDestinations(DestinationValue.Idle)),
            new("proxy_upstream_requests_active", MetricType.Gauge,
                "Requests in flight to each destination, by cluster and destination.", CollectDestinations(DestinationValue.Active)),
            new("proxy_policy_decisions_total", MetricType.Counter,
                "Built-in policy decisions, by policy and decision (rate_limit: allowed, limited, quota_exceeded, store_error; ip_filter: denied); a reload that keeps a policy's name and kind goes on counting.",
                CollectPolicies(snapshot)),
            new("proxy_jwt_signature_checks_total", MetricType.Counter,
                "Tokens a jwt policy checked against their key (verified-token cache misses), by policy; a reload that keeps the policy's name and kind goes on counting.",
                CollectJwtSignatureChecks(snapshot)),
            new("proxy_upstream_destination_healthy", MetricType.Gauge,
                "1 when the destination may take requests (not marked down by health checks, not ejected), by cluster and destination.",
                CollectDestinations(DestinationValue.Healthy)),
            new("proxy_upstream_retries_total", MetricType.Counter, "Requests tried again (retry block), by cluster.",
                CollectClusterCounter(overloaded: false)),
            new("proxy_upstream_retries_skipped_total", MetricType.Counter,
                "Requests that could have been retried but lost the ability, by cluster and reason (body_too_large: the request body passed retry.max_replay_body_bytes, so no copy was kept to replay).",
                CollectRetriesSkipped()),
            new("proxy_upstream_overloaded_total", MetricType.Counter,
                "Requests refused by the circuit breaker with 503 upstream_overloaded, by cluster.", CollectClusterCounter(overloaded: true)),
            new("proxy_filter_failures_total", MetricType.Counter,
                "Response-headers and logging phase filters that threw (caught and logged as filter_failed; the request went on).",
                [new([], Pipeline.FilterChain.PhaseFailures)]),
            new("proxy_access_log_lines_total", MetricType.Counter, "Access log lines written.",
                [new([], _runtime.Observability.AccessLogWritten)]),
            new("proxy_access_log_dropped_total", MetricType.Counter,
                "Access log lines dropped because the buffer was full (the writer could not keep up); requests never wait for the log.",
                [new([], _runtime.Observability.AccessLogDropped)]),
            new("proxy_log_dropped_total", MetricType.Counter,
                "Engine log lines lost: the queue was full (the output could not keep up) or the output threw while writing their batch. Process-wide; requests never wait for the log.",
                [new([], ProxyLog.DroppedLines)]),
            new("proxy_traffic_anomalies_total", MetricType.Counter,
                "Intervals in which a route's rate, error ratio or p99 latency exceeded insights.spike_factor times its baseline, by route and kind (rate, error_ratio, latency_p99).",
                _runtime.Observability.Insights.AnomalyCounts()),
            new("proxy_config_reloads_total", MetricType.Counter,
                "Config reload attempts (admin POST /reload, SIGHUP, file watch), by result (failure: the old config stays).",
                [
                    new([new("result", "success")], Interlocked.Read(ref _reloadsSucceeded)),
                    new([new("result", "failure")], Interlocked.Read(ref _reloadsFailed)),
                ]),
        };
        return families;
    }

    /// <summary>The per-IP tables count their refusals themselves (one interlocked add on a refusal, nothing otherwise).</summary>
    private List<MetricSample> CollectClientIpRefused() =>
    [
        new([new("kind", "connection")], _runtime.ConnectionsPerIp.Refused),
        new([new("kind", "request")], _runtime.RequestsPerIp.Refused),
    ];

    /// <summary>
    /// The built-in filters count their decisions themselves (<see cref="Pipeline.Filters.PolicyDecisionCounts"/>); a
    /// reload that keeps a policy's name and kind hands its counts to the new filter, so they never go back. Only the
    /// running snapshot's policies are exported: a policy a reload removes (or renames) stops being exported.
    /// </summary>
    private static List<MetricSample> CollectPolicies(ProxySnapshot snapshot)
    {
        var samples = new List<MetricSample>();
        foreach (var (name, filter) in snapshot.Policies)
        {
            switch (filter)
            {
                case Pipeline.Filters.RateLimitFilter rateLimit:
                    samples.Add(new([new("policy", name), new("decision", "allowed")], rateLimit.AllowedCount));
                    samples.Add(new([new("policy", name), new("decision", "limited")], rateLimit.LimitedCount));
                    samples.Add(new([new("policy", name), new("decision", "quota_exceeded")], rateLimit.QuotaExceededCount));
                    samples.Add(new([new("policy", name), new("decision", "store_error")], rateLimit.StoreErrorCount));
                    break;
                case Pipeline.Filters.IpFilter ipFilter:
                    samples.Add(new([new("policy", name), new("decision", "denied")], ipFilter.DeniedCount));
                    break;
                case Pipeline.Filters.JwtFilter jwt:
                    samples.Add(new([new("policy", name), new("decision", "allowed")], jwt.AllowedCount));
                    samples.Add(new([new("policy", name), new("decision", "rejected")], jwt.RejectedCount));
                    break;
                case Pipeline.Filters.IPolicyDecisionCounters counters:
                    foreach (var (decision, count) in counters.Decisions)
                    {
                        samples.Add(new([new("policy", name), new("decision", decision)], count));
                    }
                    break;
            }
        }
        return samples;
    }

    /// <summary>
    /// Each <c>jwt</c> policy's signature checks (<see cref="Pipeline.Filters.JwtFilter.VerificationCount"/>), kept
    /// across reloads as the decision counts are; beside <c>allowed</c>, the cache's hit rate.
    /// </summary>
    private static List<MetricSample> CollectJwtSignatureChecks(ProxySnapshot snapshot)
    {
        var samples = new List<MetricSample>();
        foreach (var (name, filter) in snapshot.Policies)
        {
            if (filter is Pipeline.Filters.JwtFilter jwt)
            {
                samples.Add(new([new("policy", name)], jwt.VerificationCount));
            }
        }
        return samples;
    }

    /// <summary>Every route handle so far, the unrouted one first (for traffic insights).</summary>
    internal IReadOnlyList<RouteMetrics> RouteHandles() => Routes();

    private RouteMetrics[] Routes()
    {
        lock (_lock)
        {
            return [Unrouted, .. _routeList];
        }
    }

    private List<MetricSample> CollectRequests()
    {
        var samples = new List<MetricSample>();
        foreach (RouteMetrics route in Routes())
        {
            for (int m = 0; m < RequestLabels.MethodCount; m++)
            {
                for (int s = 0; s < RequestLabels.StatusSlots; s++)
                {
                    long value = route.Requests(m, s);
                    // Only combinations that happened: 60 zero series per route would drown the useful ones.
                    if (value != 0)
                    {
                        samples.Add(new([new("route", route.RouteId), new("cluster", route.ClusterName),
                            new("method", RequestLabels.Methods[m]), new("status_class", RequestLabels.StatusClasses[s])], value));
                    }
                }
            }
        }
        return samples;
    }

    private List<HistogramSample> CollectDurations()
    {
        var samples = new List<HistogramSample>();
        foreach (RouteMetrics route in Routes())
        {
            var buckets = new long[DurationBuckets.Seconds.Length + 1];
            route.ReadBuckets(buckets);
            // Every configured route is shown, even before its first request; the unrouted series only once used.
            if (ReferenceEquals(route, Unrouted) && Array.TrueForAll(buckets, b => b == 0))
            {
                continue;
            }
            samples.Add(new HistogramSample([new("route", route.RouteId), new("cluster", route.ClusterName)],
                DurationBuckets.Seconds, buckets, route.DurationSumSeconds));
        }
        return samples;
    }

    private List<MetricSample> CollectBodyBytes(bool response)
    {
        var samples = new List<MetricSample>();
        foreach (RouteMetrics route in Routes())
        {
            long value = response ? route.ResponseBodyBytes : route.RequestBodyBytes;
            // As for the duration: every configured route from the start, the unrouted series once used.
            if (ReferenceEquals(route, Unrouted) && route.RequestBodyBytes == 0 && route.ResponseBodyBytes == 0)
            {
                continue;
            }
            samples.Add(new([new("route", route.RouteId), new("cluster", route.ClusterName)], value));
        }
        return samples;
    }

    private List<HistogramSample> CollectClusterHistograms(bool poolWait)
    {
        var samples = new List<HistogramSample>();
        foreach (ClusterMetrics cluster in Clusters())
        {
            var buckets = new long[DurationBuckets.Seconds.Length + 1];
            cluster.ReadBuckets(poolWait, buckets);
            samples.Add(new HistogramSample([new("cluster", cluster.Name)], DurationBuckets.Seconds, buckets, cluster.SumSeconds(poolWait)));
        }
        return samples;
    }

    private List<MetricSample> CollectPoolWaits()
    {
        var samples = new List<MetricSample>();
        foreach (ClusterMetrics cluster in Clusters())
        {
            samples.Add(new([new("cluster", cluster.Name)], cluster.PoolWaits));
        }
        return samples;
    }

    /// <summary>Read from the connections at scrape time: the streams' data plane pays nothing for this gauge.</summary>
    private List<MetricSample> CollectServerStreams()
    {
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (ListenerModel listener in _runtime.Current.Listeners)
        {
            if (listener.Handler == ListenerHandler.Proxy)
            {
                counts[listener.Name] = 0;
            }
        }
        foreach (TimedConnection connection in _runtime.Registry.Connections)
        {
            if (connection is Http2.Server.Http2ServerConnection h2)
            {
                counts[h2.Listener.Name] = counts.GetValueOrDefault(h2.Listener.Name) + h2.ActiveStreams;
            }
        }
        var samples = new List<MetricSample>(counts.Count);
        foreach (var (name, count) in counts)
        {
            samples.Add(new([new("listener", name)], count));
        }
        return samples;
    }

    private List<MetricSample> CollectLocalReplies()
    {
        var samples = new List<MetricSample>();
        foreach (var (key, counter) in _localReplies.OrderBy(p => p.Key.Listener, StringComparer.Ordinal)
            .ThenBy(p => p.Key.Status).ThenBy(p => p.Key.Details, StringComparer.Ordinal))
        {
            samples.Add(new([new("listener", key.Listener), new("status", key.Status.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                new("details", key.Details)], Volatile.Read(ref counter.Value)));
        }
        return samples;
    }

    private List<MetricSample> CollectActiveConnections()
    {
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (ListenerModel listener in _runtime.Current.Listeners)
        {
            counts[listener.Name] = 0;
        }
        foreach (TimedConnection connection in _runtime.Registry.Connections)
        {
            // An HTTP/1.1 connection that turned into HTTP/2 (h2c preface, ALPN h2) is registered as its HTTP/2 connection.
            ListenerModel? listener = connection switch
            {
                // A bridged HTTP/2 stream runs as an HTTP/1.1 connection too: its HTTP/2 connection is the one counted.
                Http1ServerConnection http when !http.Transport.IsStream => http.Listener,
                Http2.Server.Http2ServerConnection h2 => h2.Listener,
                _ => null,
            };
            if (listener is not null)
            {
                counts[listener.Name] = counts.GetValueOrDefault(listener.Name) + 1;
            }
        }
        var samples = new List<MetricSample>(counts.Count);
        foreach (var (name, count) in counts)
        {
            samples.Add(new([new("listener", name)], count));
        }
        return samples;
    }

    private List<MetricSample> CollectListeners(bool refused)
    {
        ListenerMetrics[] listeners;
        lock (_lock)
        {
            listeners = [.. _listenerList];
        }
        var samples = new List<MetricSample>(listeners.Length);
        foreach (var listener in listeners)
        {
            samples.Add(new([new("listener", listener.Name)], refused ? listener.RefusedCount : listener.AcceptedCount));
        }
        return samples;
    }

    private ClusterMetrics[] Clusters()
    {
        lock (_lock)
        {
            return [.. _clusterList];
        }
    }

    private List<MetricSample> CollectConnectFailures()
    {
        var samples = new List<MetricSample>();
        foreach (var cluster in Clusters())
        {
            for (int r = 0; r < ClusterMetrics.FailureReasons.Length; r++)
            {
                samples.Add(new([new("cluster", cluster.Name), new("reason", ClusterMetrics.FailureReasons[r])],
                    cluster.ConnectFailures((ConnectFailure)r)));
            }
        }
        return samples;
    }

    private List<MetricSample> CollectConnectionsOpened()
    {
        var samples = new List<MetricSample>();
        foreach (var cluster in Clusters())
        {
            samples.Add(new([new("cluster", cluster.Name)], cluster.ConnectionsOpened));
        }
        return samples;
    }

    private List<MetricSample> CollectRetriesSkipped()
    {
        var samples = new List<MetricSample>();
        foreach (var cluster in Clusters())
        {
            samples.Add(new([new("cluster", cluster.Name), new("reason", "body_too_large")], cluster.RetriesSkippedBodyTooLarge));
        }
        return samples;
    }

    private List<MetricSample> CollectClusterCounter(bool overloaded)
    {
        var samples = new List<MetricSample>();
        foreach (var cluster in Clusters())
        {
            samples.Add(new([new("cluster", cluster.Name)], overloaded ? cluster.OverloadedCount : cluster.Retries));
        }
        return samples;
    }

    private enum DestinationValue : byte
    {
        Open,
        Idle,
        Active,
        Healthy,
        Http2Streams,
    }

    private List<MetricSample> CollectDestinations(DestinationValue what)
    {
        var samples = new List<MetricSample>();
        foreach (ClusterModel cluster in _runtime.Current.Clusters.Values)
        {
            foreach (var destination in cluster.Destinations)
            {
                long value = what switch
                {
                    DestinationValue.Open => destination.Pool?.OpenConnections ?? 0,
                    DestinationValue.Idle => destination.Pool?.IdleConnections ?? 0,
                    DestinationValue.Healthy => destination.IsAvailable(cluster.Health.Now()) ? 1 : 0,
                    DestinationValue.Http2Streams => destination.Pool?.Http2?.ActiveStreams ?? 0,
                    _ => destination.ActiveRequests,
                };
                samples.Add(new([new("cluster", cluster.Name), new("destination", destination.Address)], value));
            }
        }
        return samples;
    }

    private static IEnumerable<Measurement<long>> Observe(List<MetricSample> samples)
    {
        var measurements = new Measurement<long>[samples.Count];
        for (int i = 0; i < samples.Count; i++)
        {
            var labels = samples[i].Labels;
            var tags = new KeyValuePair<string, object?>[labels.Length];
            for (int j = 0; j < labels.Length; j++)
            {
                tags[j] = new(labels[j].Key, labels[j].Value);
            }
            measurements[i] = new Measurement<long>((long)samples[i].Value, tags);
        }
        return measurements;
    }

    public void Dispose()
    {
        _httpMeter.Dispose();
        _upstreamMeter.Dispose();
    }
}

internal enum MetricType : byte
{
    Counter,
    Gauge,
    Histogram,
}

/// <summary>One sample of a counter or gauge: its labels in output order and its value.</summary>
internal readonly record struct MetricSample(KeyValuePair<string, string>[] Labels, double Value);

/// <summary>One histogram series: per-bucket counts (not cumulative; the last is +Inf) and the sum of observations.</summary>
internal sealed record HistogramSample(KeyValuePair<string, string>[] Labels, double[] Bounds, long[] Buckets, double Sum);

/// <summary>A metric family as Prometheus groups it: one name, one type, one help text, its samples.</summary>
internal sealed record MetricFamily(string Name, MetricType Type, string Help, List<MetricSample> Samples)
{
    public List<HistogramSample> Histograms { get; init; } = [];
}
