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

    /// <summary>
    /// How long the exporters may take, all together, to send what they hold on shutdown (the metrics' last export
    /// after the drain, then the spans still batched). A collector that stalls must not hold the process's exit: past
    /// this, what is left is dropped (the SDK's own limits were 5 s per step, plus an export timeout of 10 s).
    /// </summary>
    public static readonly TimeSpan ShutdownBudget = TimeSpan.FromSeconds(2);

    /// <summary>Tick count when <see cref="ShutdownBudget"/> runs out; 0 until the first shutdown step starts it.</summary>
    private static long s_shutdownDeadline;

    /// <summary>Milliseconds of <see cref="ShutdownBudget"/> left; the first call starts the budget.</summary>
    private static int ShutdownMillisecondsLeft()
    {
        long now = Environment.TickCount64;
        Interlocked.CompareExchange(ref s_shutdownDeadline, now + (long)ShutdownBudget.TotalMilliseconds, 0);
        return (int)Math.Clamp(Volatile.Read(ref s_shutdownDeadline) - now, 0, int.MaxValue);
    }

    /// <summary>
    /// Runs a shutdown step on another thread and waits for it at most what is left of the budget: the SDK's timeouts
    /// do not bound the export itself (a ForceFlush exports on the calling thread, and the OTLP exporter waits up to
    /// its own 10 s request timeout), so the step may go on in the background while the process exits.
    /// </summary>
    private static bool RunBounded(Action step) => Task.Run(step).Wait(ShutdownMillisecondsLeft());

    /// <summary>One export now, within the shutdown budget: called after the drain on shutdown, while the meters still exist.</summary>
    public static void Flush(MeterProvider provider) => RunBounded(() => provider.ForceFlush(ShutdownMillisecondsLeft()));

    /// <summary>
    /// Shuts the exporters down within what is left of <see cref="ShutdownBudget"/>: the spans still batched are
    /// exported if the collector answers in time. False when it did not: the providers are then left to the process's
    /// exit (disposing them would wait for the stalled export).
    /// </summary>
    public static bool Shutdown(TracerProvider? tracing, MeterProvider? metrics) => RunBounded(() =>
    {
        tracing?.Shutdown(ShutdownMillisecondsLeft());
        metrics?.Shutdown(ShutdownMillisecondsLeft());
    });

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
