using System.Diagnostics;
using System.Diagnostics.Metrics;
using Proxy.Http;
using Proxy.Upstream;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Diagnostics;

/// <summary>
/// Label values for the request counters. A request's method and status fold into a small fixed grid, so a
/// route's counters are one flat array indexed by (method, status class): no tags are built per request.
/// </summary>
internal static class RequestLabels
{
    /// <summary>Indexed by <see cref="HttpMethod"/>; custom methods share "OTHER" so clients cannot grow the series set.</summary>
    public static readonly string[] Methods = ["OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"];

    /// <summary>Slot 0 is "no response was sent" (the client left, or the connection was cut); 1-5 are 1xx-5xx.</summary>
    public static readonly string[] StatusClasses = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

    public const int MethodCount = 10;
    public const int StatusSlots = 6;

    /// <summary>
    /// An upstream's 600-999 is relayed as it came, and counted as 5xx: RFC 9110 section 15 has a client treat a status
    /// outside 100-599 as a server error, and an error ratio must not miss it.
    /// </summary>
    public static int StatusSlot(int status) => status switch
    {
        >= 100 and <= 599 => status / 100,
        >= 600 => 5,
        _ => 0,
    };

    public static int MethodSlot(HttpMethod method) => (uint)method < MethodCount ? (int)method : 0;
}

/// <summary>
/// Upper bounds of the request duration histogram, in seconds (Prometheus <c>le</c>), and the same bounds in
/// <see cref="Stopwatch"/> ticks so that recording compares integers instead of converting every duration.
/// </summary>
internal static class DurationBuckets
{
    public static readonly double[] Seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

    public static readonly long[] Ticks = ToTicks(Seconds);

    private static long[] ToTicks(double[] seconds)
    {
        var ticks = new long[seconds.Length];
        for (int i = 0; i < ticks.Length; i++)
        {
            ticks[i] = (long)Math.Round(seconds[i] * Stopwatch.Frequency);
        }
        return ticks;
    }

    /// <summary>Index of the first bucket whose bound is at or above <paramref name="elapsedTicks"/>; Length means +Inf.</summary>
    public static int Find(long elapsedTicks)
    {
        long[] bounds = Ticks;
        int i = 0;
        // 15 bounds: a linear scan over one cache line and a half beats a binary search's mispredicted branches,
        // and most requests end in the first few buckets.
        while (i < bounds.Length && elapsedTicks > bounds[i])
        {
            i++;
        }
        return i;
    }
}

/// <summary>
/// Request counters and duration histogram of one route, created when the config is compiled with its labels
/// already chosen (route id, cluster name). A request updates it with three interlocked adds and no allocation.
/// Counters are plain longs updated with <see cref="Interlocked"/>; readers (the exporter, OpenTelemetry
/// callbacks) read each one atomically but not all together, which Prometheus semantics tolerate.
/// </summary>
internal sealed class RouteMetrics
{
    private readonly long[] _requests = new long[RequestLabels.MethodCount * RequestLabels.StatusSlots];
    /// <summary>Per-bucket (not cumulative) counts; the last slot is +Inf. Made cumulative when exported.</summary>
    private readonly long[] _buckets = new long[DurationBuckets.Seconds.Length + 1];
    private long _durationTicks;

    public RouteMetrics(string routeId, string clusterName)
    {
        RouteId = routeId;
        ClusterName = clusterName;
        Tags = [new("route", routeId), new("cluster", clusterName)];
    }

    /// <summary>The <c>route</c> label: the route id, empty for requests answered before a route was chosen.</summary>
    public string RouteId { get; }

    /// <summary>The <c>cluster</c> label: empty for direct responses and unrouted requests.</summary>
    public string ClusterName { get; }

    /// <summary>The route's tags for the OpenTelemetry histogram, built once so recording passes a span.</summary>
    public KeyValuePair<string, object?>[] Tags { get; }

    private long _requestBodyBytes;
    private long _responseBodyBytes;

    /// <summary>
    /// One request: its counter, its duration, and the body bytes it moved (content only: no heads, no chunk framing;
    /// the bytes add skipped when zero, as for most GETs and empty answers).
    /// </summary>
    public void Record(HttpMethod method, int status, long elapsedTicks, long requestBodyBytes = 0, long responseBodyBytes = 0)
    {
        Interlocked.Increment(ref _requests[RequestLabels.MethodSlot(method) * RequestLabels.StatusSlots + RequestLabels.StatusSlot(status)]);
        Interlocked.Increment(ref _buckets[DurationBuckets.Find(elapsedTicks)]);
        Interlocked.Add(ref _durationTicks, elapsedTicks);
        if (requestBodyBytes > 0)
        {
            Interlocked.Add(ref _requestBodyBytes, requestBodyBytes);
        }
        if (responseBodyBytes > 0)
        {
            Interlocked.Add(ref _responseBodyBytes, responseBodyBytes);
        }
    }

    public long RequestBodyBytes => Volatile.Read(ref _requestBodyBytes);

    public long ResponseBodyBytes => Volatile.Read(ref _responseBodyBytes);

    public long Requests(int methodSlot, int statusSlot)
        => Volatile.Read(ref _requests[methodSlot * RequestLabels.StatusSlots + statusSlot]);

    public long TotalRequests
    {
        get
        {
            long total = 0;
            for (int i = 0; i < _requests.Length; i++)
            {
                total += Volatile.Read(ref _requests[i]);
            }
            return total;
        }
    }

    /// <summary>Copies the per-bucket counts (last = +Inf) into <paramref name="destination"/>.</summary>
    public void ReadBuckets(Span<long> destination)
    {
        for (int i = 0; i < _buckets.Length; i++)
        {
            destination[i] = Volatile.Read(ref _buckets[i]);
        }
    }

    public double DurationSumSeconds => Volatile.Read(ref _durationTicks) / (double)Stopwatch.Frequency;
}

/// <summary>Why a new upstream connection could not be had; the <c>reason</c> label of connect failures.</summary>
internal enum ConnectFailure : byte
{
    Refused = 0,
    Timeout,
    PoolExhausted,
}

/// <summary>Upstream counters of one cluster (see <see cref="RouteMetrics"/> for the design).</summary>
internal sealed class ClusterMetrics
{
    public static readonly string[] FailureReasons = ["refused", "timeout", "pool_exhausted"];

    private readonly long[] _connectFailures = new long[3];
    private long _connectionsOpened;

    public ClusterMetrics(string name)
    {
        Name = name;
        Tags = [new("cluster", name)];
    }

    public string Name { get; }

    /// <summary>The cluster's tags for the OpenTelemetry histograms, built once so recording passes a span.</summary>
    public KeyValuePair<string, object?>[] Tags { get; }

    /// <summary>
    /// The server's OpenTelemetry histograms, set when the handle is adopted (<see cref="ProxyMetrics.Adopt"/>); recorded
    /// into only while something listens. The Prometheus numbers are the interlocked buckets below either way.
    /// </summary>
    internal Histogram<double>? UpstreamDurationInstrument { get; set; }
    internal Histogram<double>? PoolWaitInstrument { get; set; }

    private readonly long[] _upstreamBuckets = new long[DurationBuckets.Seconds.Length + 1];
    private long _upstreamTicks;
    private readonly long[] _waitBuckets = new long[DurationBuckets.Seconds.Length + 1];
    private long _waitTicks;

    /// <summary>
    /// An upstream's final response head arrived, <paramref name="elapsedTicks"/> after its try started (before the
    /// pooled connection was rented or a new one connected: Envoy's upstream_rq_time). Two interlocked adds.
    /// </summary>
    public void UpstreamResponded(long elapsedTicks)
    {
        Interlocked.Increment(ref _upstreamBuckets[DurationBuckets.Find(elapsedTicks)]);
        Interlocked.Add(ref _upstreamTicks, elapsedTicks);
        if (UpstreamDurationInstrument is { Enabled: true } histogram)
        {
            histogram.Record(elapsedTicks / (double)Stopwatch.Frequency, Tags);
        }
    }

    /// <summary>
    /// A request found no ready upstream connection (HTTP/1.1: none idle, a connect was needed; HTTP/2: every connection
    /// at its stream cap) and waited <paramref name="elapsedTicks"/> for one, successfully or not. Connect path only.
    /// </summary>
    public void PoolWaited(long elapsedTicks)
    {
        Interlocked.Increment(ref _waitBuckets[DurationBuckets.Find(elapsedTicks)]);
        Interlocked.Add(ref _waitTicks, elapsedTicks);
        if (PoolWaitInstrument is { Enabled: true } histogram)
        {
            histogram.Record(elapsedTicks / (double)Stopwatch.Frequency, Tags);
        }
    }

    /// <summary>Copies the per-bucket counts (last = +Inf) of the upstream duration or, with <paramref name="poolWait"/>, the pool wait.</summary>
    public void ReadBuckets(bool poolWait, Span<long> destination)
    {
        long[] buckets = poolWait ? _waitBuckets : _upstreamBuckets;
        for (int i = 0; i < buckets.Length; i++)
        {
            destination[i] = Volatile.Read(ref buckets[i]);
        }
    }

    public double SumSeconds(bool poolWait) => Volatile.Read(ref poolWait ? ref _waitTicks : ref _upstreamTicks) / (double)Stopwatch.Frequency;

    public long PoolWaits
    {
        get
        {
            long total = 0;
            for (int i = 0; i < _waitBuckets.Length; i++)
            {
                total += Volatile.Read(ref _waitBuckets[i]);
            }
            return total;
        }
    }

    public void ConnectFailed(ConnectError error)
    {
        ConnectFailure reason = error switch
        {
            ConnectError.Timeout => ConnectFailure.Timeout,
            ConnectError.PoolExhausted => ConnectFailure.PoolExhausted,
            _ => ConnectFailure.Refused,
        };
        Interlocked.Increment(ref _connectFailures[(int)reason]);
    }

    public void ConnectionOpened() => Interlocked.Increment(ref _connectionsOpened);

    private long _retries;
    private long _overloaded;

    /// <summary>A request was tried again (retry block), on this or another destination.</summary>
    public void Retried() => Interlocked.Increment(ref _retries);

    /// <summary>A request was refused by the circuit breaker.</summary>
    public void Overloaded() => Interlocked.Increment(ref _overloaded);

    public long Retries => Volatile.Read(ref _retries);

    private long _retriesSkippedBodyTooLarge;

    /// <summary>A replayable request's body passed retry.max_replay_body_bytes: its copy was dropped and it will not be retried.</summary>
    public void RetrySkippedBodyTooLarge() => Interlocked.Increment(ref _retriesSkippedBodyTooLarge);

    public long RetriesSkippedBodyTooLarge => Volatile.Read(ref _retriesSkippedBodyTooLarge);

    public long OverloadedCount => Volatile.Read(ref _overloaded);

    public long ConnectFailures(ConnectFailure reason) => Volatile.Read(ref _connectFailures[(int)reason]);

    public long ConnectionsOpened => Volatile.Read(ref _connectionsOpened);
}

/// <summary>Accept counters of one listener.</summary>
internal sealed class ListenerMetrics
{
    private long _accepted;
    private long _refused;

    public ListenerMetrics(string name) => Name = name;

    public string Name { get; }

    public void Accepted() => Interlocked.Increment(ref _accepted);

    /// <summary>A pause at <c>server.max_connections</c>; on the admin listener, a connection closed at once past <see cref="Model.AdminModel.MaxConnections"/>.</summary>
    public void Refused() => Interlocked.Increment(ref _refused);

    public long AcceptedCount => Volatile.Read(ref _accepted);

    public long RefusedCount => Volatile.Read(ref _refused);
}
