using System.Diagnostics;

namespace Proxy.Diagnostics.Tracing;

/// <summary>
/// The proxy's <see cref="ActivitySource"/>. Spans exist only for sampled requests while something listens to the
/// source (the host's OpenTelemetry SDK, or an <see cref="ActivityListener"/> in an embedding app): the source is
/// asked with <see cref="ActivitySource.HasListeners"/> first, so an unobserved proxy never builds an Activity.
/// </summary>
public static class ProxyTracing
{
    /// <summary>Name of the source: <c>AddSource("Proxy")</c> in the OpenTelemetry SDK.</summary>
    public const string SourceName = "Proxy";

    internal static readonly ActivitySource Source = new(SourceName, ProxyMetrics.Version);

    /// <summary>Span attribute names (OpenTelemetry HTTP semantic conventions where one exists).</summary>
    internal static class Tags
    {
        public const string Method = "http.request.method";
        public const string Path = "url.path";
        public const string Route = "http.route";
        public const string Status = "http.response.status_code";
        public const string Client = "client.address";
        public const string ServerAddress = "server.address";
        public const string ServerPort = "server.port";
        /// <summary>The destination as configured (a URL), as the access log's <c>destination</c>.</summary>
        public const string Destination = "proxy.destination";
        public const string Cluster = "proxy.cluster";
        public const string RequestId = "proxy.request_id";
        public const string Listener = "proxy.listener";
    }
}
