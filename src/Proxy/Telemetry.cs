using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;
using Proxy.Diagnostics;
using Proxy.Diagnostics.Tracing;

namespace Proxy.Host;

/// <summary>
/// OTLP export of the proxy's spans and metrics through the OpenTelemetry SDK. It lives in the host so the embeddable
/// engine (Proxy.Core) depends on nothing but <see cref="System.Diagnostics.ActivitySource"/> and
/// <see cref="System.Diagnostics.Metrics.Meter"/>: an embedding app wires its own SDK with <c>AddSource("Proxy")</c>
/// and <c>AddMeter("Proxy.Http", "Proxy.Upstream")</c>. Read once at start; a reload does not move the exporters (the
/// server logs <c>otlp_change_needs_restart</c> when a reload changes their settings).
/// </summary>
internal static class Telemetry
{
    public static TracerProvider? StartTracing(TracingModel? tracing, string version)
    {
        if (tracing?.OtlpEndpoint is not { } endpoint)
        {
            return null;
        }
        bool grpc = tracing.OtlpProtocol == OtlpProtocol.Grpc;
        return Sdk.CreateTracerProviderBuilder()
            .AddSource(ProxyTracing.SourceName)
            .SetResourceBuilder(ResourceBuilder.CreateDefault().AddService("proxy", serviceVersion: version))
            // The proxy decides sampling itself (its traceparent must say the same as its spans); the SDK records
            // every span the proxy starts.
            .SetSampler(new AlwaysOnSampler())
            .AddOtlpExporter(options =>
            {
                options.Protocol = grpc ? OtlpExportProtocol.Grpc : OtlpExportProtocol.HttpProtobuf;
                // Set in code, the endpoint is used as is: the HTTP exporter needs the signal path spelled out.
                options.Endpoint = new Uri(grpc ? endpoint : endpoint + "/v1/traces");
                options.BatchExportProcessorOptions.ScheduledDelayMilliseconds = 1000;
            })
            .Build();
    }

    /// <summary>One export now (bounded wait): called after the drain on shutdown, while the meters still exist.</summary>
    public static void Flush(MeterProvider provider) => provider.ForceFlush(5000);

    /// <summary>
    /// Periodic OTLP export of the <c>Proxy.Http</c> and <c>Proxy.Upstream</c> meters, cumulative (as the Prometheus
    /// endpoint shows them, so a lost export loses nothing). Disposing the provider exports one last time.
    /// </summary>
    public static MeterProvider? StartMetrics(MetricsModel? metrics, string version)
    {
        if (metrics is null)
        {
            return null;
        }
        bool grpc = metrics.OtlpProtocol == OtlpProtocol.Grpc;
        string endpoint = metrics.OtlpEndpoint;
        int interval = (int)metrics.OtlpInterval.TotalMilliseconds;
        return Sdk.CreateMeterProviderBuilder()
            .AddMeter(ProxyMetrics.HttpMeterName, ProxyMetrics.UpstreamMeterName)
            .SetResourceBuilder(ResourceBuilder.CreateDefault().AddService("proxy", serviceVersion: version))
            .AddOtlpExporter((options, reader) =>
            {
                options.Protocol = grpc ? OtlpExportProtocol.Grpc : OtlpExportProtocol.HttpProtobuf;
                options.Endpoint = new Uri(grpc ? endpoint : endpoint + "/v1/metrics");
                reader.TemporalityPreference = MetricReaderTemporalityPreference.Cumulative;
                reader.PeriodicExportingMetricReaderOptions.ExportIntervalMilliseconds = interval;
                // An export may take at most one interval: a stalled collector never piles exports up.
                reader.PeriodicExportingMetricReaderOptions.ExportTimeoutMilliseconds = Math.Max(interval, 1000);
            })
            .Build();
    }
}
