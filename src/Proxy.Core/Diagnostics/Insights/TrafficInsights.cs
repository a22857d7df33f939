using System.Diagnostics;
using System.Net;

namespace Proxy.Diagnostics.Insights;

/// <summary>
/// Traffic insights behind <c>GET /insights</c>: top routes by count and latency, top clients, top status codes,
/// and per route a rolling baseline of rate, error ratio and p99 latency with anomalies (an interval beyond
/// <see cref="InsightsModel.SpikeFactor"/> times its baseline).
/// <para>
/// The data plane pays only <see cref="Record"/>: one interlocked add per status code and a bounded client sketch
/// (fixed slots, no allocation). Route numbers come from the route metrics the proxy keeps anyway; a timer samples
/// them every interval on the thread pool (control plane) and keeps the baselines.
/// </para>
/// </summary>
internal sealed class TrafficInsights : IDisposable
{
    public const int ClientSlots = 256;
    private const int MaxAnomalies = 100;

    private readonly Func<IReadOnlyList<RouteMetrics>> _routes;
    /// <summary>One counter per status code, 0-999: every code an upstream can send (RFC 9110 section 15 allows three digits; 600-999 are relayed and counted as 5xx in the metrics).</summary>
    private readonly long[] _statuses = new long[1000];
    private readonly ClientSlot[] _clients = new ClientSlot[ClientSlots];

    // Control plane state, guarded by _lock: sampler and /insights readers.
    private readonly Lock _lock = new();
    private readonly Dictionary<RouteMetrics, RouteWindow> _windows = [];
    private readonly LinkedList<Anomaly> _anomalies = new();
    private readonly Dictionary<(string Route, string Kind), long> _anomalyCounts = [];
    private InsightsModel _model = new();
    private Timer? _timer;
    private long _lastSample = Stopwatch.GetTimestamp();

    public TrafficInsights(Func<IReadOnlyList<RouteMetrics>> routes)
    {
        _routes = routes;
    }

    private struct ClientSlot
    {
        public ulong Key;
        public IPAddress? Address;
        public long Count;
        public long Ticks;
    }

    // ---- data plane -----------------------------------------------------------------------------

    /// <summary>Counts one finished proxy request. Racy by design (a sketch): concurrent updates may lose a count.</summary>
    public void Record(IPAddress client, int status, long elapsedTicks)
    {
        if ((uint)status < (uint)_statuses.Length)
        {
            Interlocked.Increment(ref _statuses[status]);
        }
        ulong key = KeyOf(client);
        ref ClientSlot slot = ref _clients[(int)(key % ClientSlots)];
        // One slot per bucket, Misra-Gries style: the same client counts up, another one counts it down and takes
        // the slot at zero. A client sending a large share of the traffic keeps its slot; rare ones churn.
        if (slot.Key == key)
        {
            Interlocked.Increment(ref slot.Count);
            Interlocked.Add(ref slot.Ticks, elapsedTicks);
        }
        else if (Interlocked.Decrement(ref slot.Count) <= 0)
        {
            slot.Address = client;
            slot.Ticks = elapsedTicks;
            Volatile.Write(ref slot.Count, 1);
            Volatile.Write(ref slot.Key, key);
        }
    }

    private static ulong KeyOf(IPAddress address)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (!address.TryWriteBytes(bytes, out int written))
        {
            return 1;
        }
        // FNV-1a: spreads IPv4 addresses that differ in their last octet over all buckets.
        ulong hash = 14695981039346656037UL;
        foreach (byte b in bytes[..written])
        {
            hash = (hash ^ b) * 1099511628211UL;
        }
        return hash | 1; // never 0, the empty slot's key
    }

    // ---- control plane --------------------------------------------------------------------------

    public InsightsModel Model => _model;

    public void Configure(InsightsModel model)
    {
        lock (_lock)
        {
            bool intervalChanged = model.Interval != _model.Interval;
            _model = model;
            if (!model.Enabled)
            {
                _timer?.Dispose();
                _timer = null;
            }
            else if (_timer is null)
            {
                _timer = new Timer(static s => ((TrafficInsights)s!).Sample(), this, model.Interval, model.Interval);
            }
            else if (intervalChanged)
            {
                _timer.Change(model.Interval, model.Interval);
            }
        }
    }

    private sealed class RouteWindow
    {
        public long Requests, Errors;
        public double DurationSeconds;
        public long[] Buckets = new long[DurationBuckets.Seconds.Length + 1];
        public int Samples;
        public double BaseRate, BaseErrorRatio, BaseP99;
        public double LastRate, LastErrorRatio, LastP50, LastP99, LastMeanMs;
        public long LastRequests;
    }

    public sealed record Anomaly(DateTime At, string Route, string Kind, double Value, double Baseline, double Factor);

    /// <summary>Takes one interval's sample of every route and judges it against the baselines (timer, or tests).</summary>
    public void Sample() => Sample(Stopwatch.GetTimestamp());

    internal void Sample(long now)
    {
        IReadOnlyList<RouteMetrics> routes = _routes();
        lock (_lock)
        {
            double seconds = Math.Max(1e-3, (now - _lastSample) / (double)Stopwatch.Frequency);
            _lastSample = now;
            InsightsModel model = _model;
            double alpha = 2.0 / (model.BaselineIntervals + 1);
            var buckets = new long[DurationBuckets.Seconds.Length + 1];
            foreach (RouteMetrics route in routes)
            {
                if (route.RouteId.Length == 0)
                {
                    continue; // unrouted requests have no baseline worth judging
                }
                if (!_windows.TryGetValue(route, out var w))
                {
                    w = new RouteWindow();
                    _windows.Add(route, w);
                    Capture(route, w, buckets);
                    continue; // first sight: the counters so far are history, not this interval
                }
                long requests = route.TotalRequests, errors = Errors(route);
                double duration = route.DurationSumSeconds;
                route.ReadBuckets(buckets);
                long n = requests - w.Requests;
                long e = errors - w.Errors;
                var delta = new long[buckets.Length];
                for (int i = 0; i < buckets.Length; i++)
                {
                    delta[i] = buckets[i] - w.Buckets[i];
                }
                double rate = n / seconds;
                double errorRatio = n > 0 ? (double)e / n : 0;
                double p99 = n > 0 ? Quantile(delta, n, 0.99) : 0;
                w.LastRequests = n;
                w.LastRate = rate;
                w.LastErrorRatio = errorRatio;
                w.LastP50 = n > 0 ? Quantile(delta, n, 0.5) : 0;
                w.LastP99 = p99;
                w.LastMeanMs = n > 0 ? (duration - w.DurationSeconds) * 1000 / n : 0;

                // Judged only once a baseline exists (3 intervals) and the interval has enough requests to mean something.
                if (w.Samples >= 3 && n >= model.MinRequests)
                {
                    double f = model.SpikeFactor;
                    if (w.BaseRate > 0 && rate > f * w.BaseRate)
                    {
                        Raise(route.RouteId, "rate", rate, w.BaseRate, f);
                    }
                    // An error ratio under 5% is noise, whatever its baseline.
                    if (errorRatio >= 0.05 && errorRatio > f * w.BaseErrorRatio)
                    {
                        Raise(route.RouteId, "error_ratio", errorRatio, w.BaseErrorRatio, f);
                    }
                    if (w.BaseP99 > 0 && p99 > f * w.BaseP99)
                    {
                        Raise(route.RouteId, "latency_p99", p99, w.BaseP99, f);
                    }
                }
                if (w.Samples == 0)
                {
                    w.BaseRate = rate;
                    w.BaseErrorRatio = errorRatio;
                    w.BaseP99 = p99;
                }
                else
                {
                    w.BaseRate += alpha * (rate - w.BaseRate);
                    w.BaseErrorRatio += alpha * (errorRatio - w.BaseErrorRatio);
                    if (n > 0)
                    {
                        w.BaseP99 += alpha * (p99 - w.BaseP99);
                    }
                }
                w.Samples++;
                w.Requests = requests;
                w.Errors = errors;
                w.DurationSeconds = duration;
                Array.Copy(buckets, w.Buckets, buckets.Length);
            }
            ForgetDropped(routes);
        }
    }

    /// <summary>
    /// Forgets the windows and anomaly counts of routes whose handles the metrics dropped (names gone from the config,
    /// <see cref="ProxyMetrics.Adopt"/>), so renamed routes do not pile up here either. Caller holds _lock.
    /// </summary>
    private void ForgetDropped(IReadOnlyList<RouteMetrics> routes)
    {
        var live = new HashSet<RouteMetrics>(routes, ReferenceEqualityComparer.Instance);
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (RouteMetrics route in routes)
        {
            ids.Add(route.RouteId);
        }
        foreach (RouteMetrics route in _windows.Keys)
        {
            if (!live.Contains(route))
            {
                _windows.Remove(route);
            }
        }
        foreach (var key in _anomalyCounts.Keys)
        {
            if (!ids.Contains(key.Route))
            {
                _anomalyCounts.Remove(key);
            }
        }
    }

    private static void Capture(RouteMetrics route, RouteWindow w, long[] scratch)
    {
        w.Requests = route.TotalRequests;
        w.Errors = Errors(route);
        w.DurationSeconds = route.DurationSumSeconds;
        route.ReadBuckets(scratch);
        Array.Copy(scratch, w.Buckets, scratch.Length);
    }

    private static long Errors(RouteMetrics route)
    {
        long errors = 0;
        for (int m = 0; m < RequestLabels.MethodCount; m++)
        {
            errors += route.Requests(m, 5);
        }
        return errors;
    }

    /// <summary>Upper bound (seconds) of the bucket holding quantile <paramref name="q"/>; the last bound for +Inf.</summary>
    private static double Quantile(long[] buckets, long total, double q)
    {
        long rank = (long)Math.Ceiling(q * total);
        long seen = 0;
        for (int i = 0; i < buckets.Length; i++)
        {
            seen += buckets[i];
            if (seen >= rank)
            {
                return i < DurationBuckets.Seconds.Length ? DurationBuckets.Seconds[i] : DurationBuckets.Seconds[^1];
            }
        }
        return DurationBuckets.Seconds[^1];
    }

    private void Raise(string route, string kind, double value, double baseline, double factor)
    {
        var anomaly = new Anomaly(DateTime.UtcNow, route, kind, value, baseline, factor);
        _anomalies.AddFirst(anomaly);
        if (_anomalies.Count > MaxAnomalies)
        {
            _anomalies.RemoveLast();
        }
        _anomalyCounts[(route, kind)] = _anomalyCounts.GetValueOrDefault((route, kind)) + 1;
        ProxyLog.Warn("traffic_anomaly", ("route", route), ("kind", kind), ("value", Math.Round(value, 6)),
            ("baseline", Math.Round(baseline, 6)), ("factor", factor));
    }

    /// <summary>For <c>proxy_traffic_anomalies_total{route,kind}</c>.</summary>
    public List<MetricSample> AnomalyCounts()
    {
        lock (_lock)
        {
            var samples = new List<MetricSample>(_anomalyCounts.Count);
            foreach (var ((route, kind), count) in _anomalyCounts)
            {
                samples.Add(new([new("route", route), new("kind", kind)], count));
            }
            return samples;
        }
    }

    public sealed record RouteView(string Route, string Cluster, long Requests, long Errors, double MeanMs,
        long LastRequests, double Rate, double ErrorRatio, double P50Ms, double P99Ms, double BaselineRate,
        double BaselineErrorRatio, double BaselineP99Ms, int Samples);

    public sealed record ClientView(IPAddress Address, long Requests, double MeanMs);

    public sealed record Report(InsightsModel Model, List<RouteView> Routes, List<ClientView> Clients,
        List<KeyValuePair<int, long>> Statuses, List<Anomaly> Anomalies);

    /// <summary>Everything <c>GET /insights</c> shows (control plane: allocates freely).</summary>
    public Report Snapshot()
    {
        IReadOnlyList<RouteMetrics> routes = _routes();
        var routeViews = new List<RouteView>();
        lock (_lock)
        {
            foreach (RouteMetrics route in routes)
            {
                long total = route.TotalRequests;
                if (total == 0)
                {
                    continue;
                }
                _windows.TryGetValue(route, out var w);
                routeViews.Add(new RouteView(route.RouteId, route.ClusterName, total, Errors(route),
                    route.DurationSumSeconds * 1000 / total, w?.LastRequests ?? 0, w?.LastRate ?? 0, w?.LastErrorRatio ?? 0,
                    (w?.LastP50 ?? 0) * 1000, (w?.LastP99 ?? 0) * 1000, w?.BaseRate ?? 0, w?.BaseErrorRatio ?? 0,
                    (w?.BaseP99 ?? 0) * 1000, w?.Samples ?? 0));
            }
        }
        var clients = new List<ClientView>();
        for (int i = 0; i < _clients.Length; i++)
        {
            ref ClientSlot slot = ref _clients[i];
            long count = Volatile.Read(ref slot.Count);
            if (slot.Address is { } address && count > 0)
            {
                clients.Add(new ClientView(address, count, Volatile.Read(ref slot.Ticks) * 1000.0 / Stopwatch.Frequency / count));
            }
        }
        clients.Sort((a, b) => b.Requests.CompareTo(a.Requests));
        var statuses = new List<KeyValuePair<int, long>>();
        for (int s = 0; s < _statuses.Length; s++)
        {
            long count = Volatile.Read(ref _statuses[s]);
            if (count > 0)
            {
                statuses.Add(new(s, count));
            }
        }
        statuses.Sort((a, b) => b.Value.CompareTo(a.Value));
        List<Anomaly> anomalies;
        lock (_lock)
        {
            anomalies = [.. _anomalies];
        }
        return new Report(_model, routeViews, clients.Count > 10 ? clients[..10] : clients, statuses, anomalies);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _timer?.Dispose();
            _timer = null;
        }
    }
}
