using System.Globalization;
using Proxy.Diagnostics;
using YamlDotNet.RepresentationModel;

namespace Proxy.Configuration;

/// <summary>The <c>tracing:</c>, <c>metrics:</c>, <c>access_log:</c> and <c>insights:</c> blocks, as read (shape already checked).</summary>
internal sealed record ObservabilityConfig
{
    public TracingConfig? Tracing { get; init; }
    public MetricsConfig? Metrics { get; init; }
    public AccessLogConfig? AccessLog { get; init; }
    public InsightsConfig? Insights { get; init; }
}

internal sealed record TracingConfig
{
    public double? Sampling { get; init; }
    public string? OtlpEndpoint { get; init; }
    public OtlpProtocol? OtlpProtocol { get; init; }
}

internal sealed record MetricsConfig
{
    public string? OtlpEndpoint { get; init; }
    public OtlpProtocol? OtlpProtocol { get; init; }
    public TimeSpan? OtlpInterval { get; init; }
}

internal sealed record AccessLogConfig
{
    public string? Path { get; init; }
    public AccessLogField[]? Fields { get; init; }
    public int? Buffer { get; init; }
}

internal sealed record InsightsConfig
{
    public bool? Enabled { get; init; }
    public TimeSpan? Interval { get; init; }
    public int? BaselineIntervals { get; init; }
    public double? SpikeFactor { get; init; }
    public int? MinRequests { get; init; }
}

// Observability keys are checked entirely here (ranges, names): none refers to another section, so the validator
// has nothing to add and the compiler only fills defaults.
internal sealed partial class YamlConfigReader
{
    private static readonly string[] s_tracingKeys = ["sampling", "otlp"];
    private static readonly string[] s_otlpKeys = ["endpoint", "protocol"];
    private static readonly string[] s_metricsKeys = ["otlp"];
    private static readonly string[] s_metricsOtlpKeys = ["endpoint", "protocol", "interval"];
    private static readonly string[] s_accessLogKeys = ["path", "fields", "buffer"];
    private static readonly string[] s_insightsKeys = ["enabled", "interval", "baseline_intervals", "spike_factor", "min_requests"];
    private static readonly (string, OtlpProtocol)[] s_otlpProtocols = [("http/protobuf", OtlpProtocol.HttpProtobuf), ("grpc", OtlpProtocol.Grpc)];

    private ObservabilityConfig ReadObservability(MapView root) => new()
    {
        Tracing = root.Get("tracing") is { } t ? ReadTracing(t) : null,
        Metrics = root.Get("metrics") is { } m ? ReadMetrics(m) : null,
        AccessLog = root.Get("access_log") is { } a ? ReadAccessLog(a) : null,
        Insights = root.Get("insights") is { } i ? ReadInsights(i) : null,
    };

    private TracingConfig? ReadTracing(YamlNode node)
    {
        if (Map(node, "'tracing'", s_tracingKeys) is not { } map)
        {
            return null;
        }
        string? endpoint = null;
        OtlpProtocol? protocol = null;
        if (map.Get("otlp") is { } otlpNode && Map(otlpNode, "'otlp'", s_otlpKeys) is { } otlp)
        {
            (endpoint, protocol) = ReadOtlp(otlp);
        }
        return new TracingConfig { Sampling = Fraction(map, "sampling"), OtlpEndpoint = endpoint, OtlpProtocol = protocol };
    }

    /// <summary><c>metrics: { otlp: { endpoint, protocol, interval } }</c>: the same <c>otlp</c> keys as tracing, plus the export period.</summary>
    private MetricsConfig? ReadMetrics(YamlNode node)
    {
        if (Map(node, "'metrics'", s_metricsKeys) is not { } map)
        {
            return null;
        }
        if (map.Get("otlp") is not { } otlpNode || Map(otlpNode, "'otlp'", s_metricsOtlpKeys) is not { } otlp)
        {
            return new MetricsConfig();
        }
        var (endpoint, protocol) = ReadOtlp(otlp);
        TimeSpan? interval = Duration(otlp, "interval");
        if (interval is { } i && (i < MetricsModel.MinInterval || i > TimeSpan.FromHours(1)))
        {
            _errors.Add(otlp.KeyMark("interval"), $"'interval' must be between {MetricsModel.MinInterval.TotalMilliseconds:0}ms and 1h");
            interval = null;
        }
        return new MetricsConfig { OtlpEndpoint = endpoint, OtlpProtocol = protocol, OtlpInterval = interval };
    }

    private (string? Endpoint, OtlpProtocol? Protocol) ReadOtlp(MapView otlp)
    {
        string? endpoint = null;
        if (RequiredString(otlp, "endpoint", "'otlp'") is { } e)
        {
            if (Uri.TryCreate(e.Value, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https")
            {
                endpoint = e.Value.TrimEnd('/');
            }
            else
            {
                _errors.Add(e.Mark, $"otlp endpoint must be an http:// or https:// URL, got '{e.Value}'");
            }
        }
        return (endpoint, Enum(otlp, "protocol", s_otlpProtocols)?.Value);
    }

    private AccessLogConfig? ReadAccessLog(YamlNode node)
    {
        if (Map(node, "'access_log'", s_accessLogKeys) is not { } map)
        {
            return null;
        }
        AccessLogField[]? fields = null;
        if (map.Get("fields") is not null)
        {
            var list = new List<AccessLogField>();
            foreach (var name in StringList(map, "fields"))
            {
                int index = Array.IndexOf(AccessLogFields.Names, name.Value);
                if (index < 0)
                {
                    var near = ConfigErrorList.Nearest(name.Value, AccessLogFields.Names);
                    _errors.Add(name.Mark, $"unknown access_log field '{name.Value}'"
                        + (near is null ? $"; expected any of: {string.Join(", ", AccessLogFields.Names)}" : $"; did you mean '{near}'?"));
                }
                else if (list.Contains((AccessLogField)index))
                {
                    _errors.Add(name.Mark, $"access_log field '{name.Value}' is listed twice");
                }
                else
                {
                    list.Add((AccessLogField)index);
                }
            }
            if (list.Count == 0)
            {
                _errors.Add(map.KeyMark("fields"), "access_log fields must name at least one field (leave 'fields' out for all of them)");
            }
            fields = [.. list];
        }
        return new AccessLogConfig
        {
            Path = map.Has("path") ? RequiredString(map, "path", "'access_log'")?.Value : null,
            Fields = fields,
            Buffer = Int(map, "buffer", 16, 1 << 20),
        };
    }

    private InsightsConfig? ReadInsights(YamlNode node)
    {
        if (Map(node, "'insights'", s_insightsKeys) is not { } map)
        {
            return null;
        }
        double? factor = null;
        if (map.Get("spike_factor") is { } factorNode && ScalarText(factorNode, "spike_factor", "a number") is { } text)
        {
            if (double.TryParse(text.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out double f) && f > 1 && f <= 1000)
            {
                factor = f;
            }
            else
            {
                _errors.Add(text.Mark, $"'spike_factor' must be a number above 1 (e.g. 3: three times the baseline), got '{text.Value}'");
            }
        }
        return new InsightsConfig
        {
            Enabled = Bool(map, "enabled")?.Value,
            Interval = Duration(map, "interval"),
            BaselineIntervals = Int(map, "baseline_intervals", 2, 10_000),
            SpikeFactor = factor,
            MinRequests = Int(map, "min_requests", 1, int.MaxValue),
        };
    }

    /// <summary>A probability: 0..1 as a decimal (0.1) or a percentage (10%).</summary>
    private double? Fraction(MapView map, string key)
    {
        if (map.Get(key) is not { } node || ScalarText(node, key, "a number between 0 and 1") is not { } text)
        {
            return null;
        }
        string s = text.Value.Trim();
        bool percent = s.EndsWith('%');
        if (double.TryParse(percent ? s[..^1] : s, NumberStyles.Float, CultureInfo.InvariantCulture, out double value))
        {
            value = percent ? value / 100 : value;
            if (value is >= 0 and <= 1)
            {
                return value;
            }
        }
        _errors.Add(text.Mark, $"'{key}' must be a number between 0 and 1 (or a percentage, e.g. 10%), got '{text.Value}'");
        return null;
    }
}

/// <summary>Config records -> <see cref="ObservabilityModel"/>: defaults filled in, nothing left to check.</summary>
internal static class ObservabilityCompiler
{
    public static ObservabilityModel Compile(ObservabilityConfig config)
    {
        TracingModel? tracing = config.Tracing is { } t
            ? new TracingModel
            {
                Sampling = t.Sampling ?? TracingModel.DefaultSampling,
                OtlpEndpoint = t.OtlpEndpoint,
                OtlpProtocol = t.OtlpProtocol ?? OtlpProtocol.HttpProtobuf,
            }
            : null;
        MetricsModel? metrics = config.Metrics is { OtlpEndpoint: { } endpoint } m
            ? new MetricsModel
            {
                OtlpEndpoint = endpoint,
                OtlpProtocol = m.OtlpProtocol ?? OtlpProtocol.HttpProtobuf,
                OtlpInterval = m.OtlpInterval ?? MetricsModel.DefaultInterval,
            }
            : null;
        AccessLogModel? accessLog = config.AccessLog is { } a
            ? new AccessLogModel
            {
                Path = a.Path ?? AccessLogModel.Stdout,
                Fields = a.Fields ?? AccessLogFields.All,
                Buffer = a.Buffer ?? AccessLogModel.DefaultBuffer,
            }
            : null;
        var defaults = new InsightsModel();
        InsightsModel insights = config.Insights is { } i
            ? new InsightsModel
            {
                Enabled = i.Enabled ?? true,
                Interval = i.Interval ?? defaults.Interval,
                BaselineIntervals = i.BaselineIntervals ?? defaults.BaselineIntervals,
                SpikeFactor = i.SpikeFactor ?? defaults.SpikeFactor,
                MinRequests = i.MinRequests ?? defaults.MinRequests,
            }
            : defaults;
        return new ObservabilityModel { Tracing = tracing, Metrics = metrics, AccessLog = accessLog, Insights = insights };
    }
}
