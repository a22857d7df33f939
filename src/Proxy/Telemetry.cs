using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;
using Proxy.Diagnostics;
using Proxy.Diagnostics.Tracing;

namespace Proxy.Host;

/// <summary>
/// OTLP export of the proxy's spans through the OpenTelemetry SDK. It lives in the host so the embeddable engine
/// (Proxy.Core) depends on nothing but <see cref="System.Diagnostics.ActivitySource"/>: an embedding app wires its
/// own SDK with <c>AddSource("Proxy")</c>. Read once at start; a reload does not move the exporter.
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
}
