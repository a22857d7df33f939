namespace Proxy.Diagnostics;

/// <summary>The compiled <c>tracing:</c>, <c>access_log:</c> and <c>insights:</c> blocks of one snapshot.</summary>
internal sealed record ObservabilityModel
{
    public static ObservabilityModel Off { get; } = new();

    /// <summary>Null: no <c>tracing:</c> block, so <c>traceparent</c> passes through untouched and no span is made.</summary>
    public TracingModel? Tracing { get; init; }

    /// <summary>Null: no OTLP metrics export (the Prometheus endpoint and in-process meter listeners work regardless).</summary>
    public MetricsModel? Metrics { get; init; }

    /// <summary>Null: no access log.</summary>
    public AccessLogModel? AccessLog { get; init; }

    public InsightsModel Insights { get; init; } = new();
}

internal enum OtlpProtocol : byte
{
    HttpProtobuf,
    Grpc,
}

internal sealed record TracingModel
{
    public const double DefaultSampling = 0.01;

    /// <summary>Probability that a trace this proxy starts is sampled; an incoming trace keeps its own decision.</summary>
    public double Sampling { get; init; } = DefaultSampling;

    /// <summary>Base URL of an OTLP collector (<c>http://host:4318</c>); null: spans only reach in-process listeners.</summary>
    public string? OtlpEndpoint { get; init; }

    public OtlpProtocol OtlpProtocol { get; init; } = OtlpProtocol.HttpProtobuf;
}

/// <summary>
/// <c>metrics: { otlp: ... }</c>: periodic OTLP export of the <c>Proxy.Http</c> and <c>Proxy.Upstream</c> meters. Read
/// once at start by the host, like the trace exporter: a reload that changes it is reported, not applied.
/// </summary>
internal sealed record MetricsModel
{
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromSeconds(15);
    public static readonly TimeSpan MinInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>Base URL of an OTLP collector (<c>http://host:4318</c>); the HTTP exporter posts to <c>/v1/metrics</c> under it.</summary>
    public required string OtlpEndpoint { get; init; }

    public OtlpProtocol OtlpProtocol { get; init; } = OtlpProtocol.HttpProtobuf;

    /// <summary>Time between two exports (cumulative values, so a lost export loses nothing but resolution).</summary>
    public TimeSpan OtlpInterval { get; init; } = DefaultInterval;
}

internal sealed record AccessLogModel
{
    public const string Stdout = "stdout";
    public const int DefaultBuffer = 8192;

    /// <summary><c>stdout</c> or a file path (appended to, reopened on SIGUSR1).</summary>
    public string Path { get; init; } = Stdout;

    public AccessLogField[] Fields { get; init; } = AccessLogFields.All;

    /// <summary>Records that may wait for the writer; beyond that, lines are dropped and counted.</summary>
    public int Buffer { get; init; } = DefaultBuffer;

    public bool SameAs(AccessLogModel? other)
        => other is not null && other.Path == Path && other.Buffer == Buffer && other.Fields.AsSpan().SequenceEqual(Fields);
}

internal sealed record InsightsModel
{
    public bool Enabled { get; init; } = true;

    /// <summary>How often per-route rates, error ratios and latencies are sampled and compared with their baseline.</summary>
    public TimeSpan Interval { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Span of the rolling baseline, in intervals (an exponentially weighted mean over about that many).</summary>
    public int BaselineIntervals { get; init; } = 30;

    /// <summary>An interval whose rate, error ratio or p99 latency exceeds this multiple of the baseline is an anomaly.</summary>
    public double SpikeFactor { get; init; } = 3;

    /// <summary>Intervals with fewer requests than this on a route are not judged (too few to mean anything).</summary>
    public int MinRequests { get; init; } = 20;
}

/// <summary>Fields an access log line can carry, in the order of <see cref="AccessLogFields.Names"/>.</summary>
internal enum AccessLogField : byte
{
    Time,
    Listener,
    Route,
    Cluster,
    Destination,
    Method,
    Path,
    Status,
    DurationMs,
    UpstreamMs,
    BytesIn,
    BytesOut,
    Client,
    Consumer,
    Policy,
    TraceId,
    SpanId,
    RequestId,
}

internal static class AccessLogFields
{
    /// <summary>Config and JSON names, indexed by <see cref="AccessLogField"/>.</summary>
    public static readonly string[] Names =
    [
        "time", "listener", "route", "cluster", "destination", "method", "path", "status", "duration_ms", "upstream_ms",
        "bytes_in", "bytes_out", "client", "consumer", "policy", "trace_id", "span_id", "request_id",
    ];

    public static readonly AccessLogField[] All = Enumerable.Range(0, Names.Length).Select(i => (AccessLogField)i).ToArray();
}
