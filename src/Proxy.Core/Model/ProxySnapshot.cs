using System.Net;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Pipeline;
using Proxy.Routing;
using Proxy.Upstream;

namespace Proxy.Model;

/// <summary>
/// The immutable runtime form of one configuration file: built by the config compiler, published
/// with one atomic swap, read once per request and kept by that request to its end.
/// </summary>
internal sealed class ProxySnapshot
{
    public required ListenerModel[] Listeners { get; init; }
    public required RouteTable Routes { get; init; }
    public required IReadOnlyDictionary<string, ClusterModel> Clusters { get; init; }
    public required ServerModel Server { get; init; }
    /// <summary>Hash of the source file, for logs and the admin API.</summary>
    public string Version { get; init; } = "";
    public string SourcePath { get; init; } = "";
    /// <summary>The <c>admin:</c> block; null when the file has none (no admin listener).</summary>
    public AdminModel? Admin { get; init; }
    /// <summary>One filter per configured policy, by name, in file order (for metrics and the admin API).</summary>
    public IReadOnlyList<KeyValuePair<string, IProxyFilter>> Policies { get; init; } = [];
    /// <summary>Tracing, access log and insights settings (<c>tracing:</c>, <c>access_log:</c>, <c>insights:</c>).</summary>
    public ObservabilityModel Observability { get; init; } = ObservabilityModel.Off;
}

/// <summary>The admin API's settings. Its listener is the last entry of <see cref="ProxySnapshot.Listeners"/>.</summary>
internal sealed class AdminModel
{
    /// <summary>The name of the admin listener, reserved when an <c>admin:</c> block is present.</summary>
    public const string ListenerName = "admin";

    /// <summary>
    /// Cap on open admin connections, apart from <c>server.max_connections</c> (which they do not count against, so an
    /// operator can look inside a proxy that is full). Past it a new admin connection is closed as soon as it is
    /// accepted: idle or unauthenticated admin clients can then neither exhaust descriptors nor crowd out the data plane.
    /// </summary>
    public const int MaxConnections = 64;

    public required IPEndPoint EndPoint { get; init; }
    /// <summary>UTF-8 bearer token every admin request must present; null when none is configured.</summary>
    public byte[]? Token { get; init; }
}

/// <summary>Process-wide settings outside listeners, routes and clusters.</summary>
internal sealed class ServerModel
{
    /// <summary>How long a graceful shutdown waits for requests in flight.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Cap on open client connections across all listeners.</summary>
    public int MaxConnections { get; init; } = 10_000;
    /// <summary><c>server.watch_config</c>: reload when the file changes; null when not set (the host's default applies).</summary>
    public bool? WatchConfig { get; init; }
}

internal enum ListenerHandler : byte
{
    /// <summary>Requests go through routing (the default).</summary>
    Proxy = 0,
    /// <summary>Built-in echo responder: answers every request with a JSON description of it.</summary>
    Echo,
    /// <summary>The admin API (health, metrics, config); created from the <c>admin:</c> block, never routed.</summary>
    Admin,
}

internal enum ForwardedMode : byte
{
    /// <summary>Append the client address to any incoming X-Forwarded-For (nginx's $proxy_add_x_forwarded_for).</summary>
    Append = 0,
    /// <summary>Drop incoming X-Forwarded-* and write our own.</summary>
    Replace,
    /// <summary>Append when the peer is in a trusted network, replace otherwise.</summary>
    Trust,
    /// <summary>Leave X-Forwarded-* as received and add nothing.</summary>
    Off,
}

internal sealed class ForwardedModel
{
    public ForwardedMode Mode { get; init; } = ForwardedMode.Append;
    public IPNetwork[] TrustedNetworks { get; init; } = [];

    public static ForwardedModel Default { get; } = new();

    public bool IsTrusted(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }
        foreach (var n in TrustedNetworks)
        {
            if (n.Contains(address))
            {
                return true;
            }
        }
        return false;
    }
}

internal sealed class ListenerModel
{
    public required string Name { get; init; }
    public required int Index { get; init; }
    public required IPEndPoint EndPoint { get; init; }
    /// <summary>Where the <c>address</c> value sits in the config file, so a bind failure on reload points at it.</summary>
    public Proxy.Configuration.Mark AddressMark { get; init; } = Proxy.Configuration.Mark.Start;
    public ListenerHandler Handler { get; init; }
    /// <summary>
    /// Accept a connection only once its first bytes arrived (Linux TCP_DEFER_ACCEPT, nginx's <c>listen ... deferred</c>,
    /// HAProxy's <c>defer-accept</c>): a new connection's request is then read with its first recv(), with no wait, no
    /// epoll registration and no wake-up for a handshake alone. A client that connects and sends nothing is handed over
    /// only after the kernel's defer period (about a second plus a SYN-ACK retransmission), so header_timeout starts
    /// later for it. Ignored on other systems.
    /// </summary>
    public bool DeferAccept { get; init; }
    /// <summary>
    /// False (the default): the listening socket has TCP_QUICKACK off, which accepted sockets inherit, so a new
    /// connection's request is not acknowledged in a segment of its own: the answer carries the ACK, or the delayed-ACK
    /// timer sends it if the answer takes longer (40 ms at least). HAProxy does the same in HTTP mode
    /// (<c>option tcp-smart-accept</c>). True: the kernel's default, an ACK at once (for a client that sends one request
    /// in two writes with Nagle's algorithm on, whose second write waits for that ACK). Ignored on other systems.
    /// </summary>
    public bool QuickAck { get; init; }
    public HttpLimits Limits { get; init; } = HttpLimits.Default;
    public ForwardedModel Forwarded { get; init; } = ForwardedModel.Default;
    /// <summary>Counters bound to this listener at compile time (null only for models built by hand in tests).</summary>
    public ListenerMetrics? Metrics { get; set; }
    /// <summary>The <c>tls:</c> block: certificates by SNI, client certificates; null for a cleartext listener.</summary>
    public Proxy.Transport.Tls.TlsListenerModel? Tls { get; init; }
    /// <summary>
    /// The listener's default policies, for a request no route matched: only their response-headers and logging
    /// phases run (a 404 still gets its headers and log record). Null when the listener has no policies with those phases.
    /// </summary>
    public Proxy.Pipeline.FilterChain? Unmatched { get; init; }
}

internal sealed class HeaderMatchModel
{
    public required string Name { get; init; }
    public required byte[] NameLower { get; init; }
    /// <summary>Exact value (case-sensitive), or null when only presence is required.</summary>
    public byte[]? Value { get; init; }
    public bool Present { get; init; } = true;
}

internal sealed class QueryMatchModel
{
    public required string Name { get; init; }
    public required byte[] NameBytes { get; init; }
    /// <summary>Exact value after percent-decoding is not done: compared as sent, case-sensitive.</summary>
    public byte[]? Value { get; init; }
    public bool Present { get; init; } = true;
}

internal sealed class RouteMatchModel
{
    /// <summary>Path template: exact "/x", catch-all "/x/{**rest}", parameters "/users/{id}". Null matches every path.</summary>
    public string? Path { get; init; }
    /// <summary>Exact hosts ("api.example.com") and wildcards ("*.example.org"), lower case, without port.</summary>
    public string[] Hosts { get; init; } = [];
    /// <summary>Methods upper case as configured; empty means any.</summary>
    public string[] Methods { get; init; } = [];
    public HeaderMatchModel[] Headers { get; init; } = [];
    public QueryMatchModel[] Query { get; init; } = [];
}

/// <summary>A pre-encoded local answer (nginx's <c>return</c>).</summary>
internal sealed class DirectResponseModel
{
    public required int Status { get; init; }
    /// <summary>Status line and headers up to (not including) Connection/Content-Length/empty line.</summary>
    public required byte[] HeadPrefix { get; init; }
    public required byte[] Body { get; init; }
}

internal sealed class RouteModel
{
    public required string Id { get; init; }
    /// <summary>Position in the file (0-based); breaks ties in precedence.</summary>
    public required int Order { get; init; }
    public required RouteMatchModel Match { get; init; }
    /// <summary>The cluster this route forwards to; with <see cref="Split"/>, the split's first cluster (for labels).</summary>
    public ClusterModel? Cluster { get; init; }
    /// <summary>The <c>clusters:</c> weighted split; null when the route names one <c>cluster:</c>.</summary>
    public WeightedClustersModel? Split { get; init; }
    /// <summary>The <c>canary:</c> block: a header or cookie that sends a request to another cluster.</summary>
    public CanaryModel? Canary { get; init; }
    /// <summary>The route's own upstream timeouts; unset ones (zero) take the chosen cluster's.</summary>
    public UpstreamTimeouts Timeouts { get; init; }
    /// <summary>
    /// <c>retry_non_idempotent</c>: requests of any method on this route may be retried under the cluster's retry
    /// policy (RFC 9110 section 9.2.2 leaves it to whoever knows the method is safe to repeat, like a gRPC call).
    /// </summary>
    public bool RetryNonIdempotent { get; init; }
    /// <summary>
    /// <c>ignore_client_abort</c>: an HTTP/1.1 client that closes while the upstream works is not looked for, so the
    /// exchange runs to its end (a half-closed client still gets its answer). Off: the upstream's work is cut within a
    /// second (nginx's <c>proxy_ignore_client_abort</c>, HAProxy's <c>option abortonclose</c> the other way round).
    /// </summary>
    public bool IgnoreClientAbort { get; init; }
    public DirectResponseModel? Respond { get; init; }
    /// <summary>
    /// <c>rewrite:</c> the target the upstream gets instead of the client's, applied as the upstream request is written
    /// (null: the client's target, at the cost of one null check).
    /// </summary>
    public Routing.PathRewrite? Rewrite { get; init; }
    /// <summary>Bit i set: the route applies on listener i. Zero: every proxy listener.</summary>
    public ulong ListenerMask { get; init; }
    /// <summary>
    /// Counters pre-bound to this route's labels at compile time, so a request updates them without building tags.
    /// Settable so that a server can hand a recompiled route the handle of its predecessor (counters stay monotonic).
    /// </summary>
    public RouteMetrics? Metrics { get; set; }
    /// <summary>
    /// The compiled filter chain per listener index (listener defaults, then the route's policies); empty when no
    /// policy applies on any listener.
    /// </summary>
    public FilterChain[] Chains { get; init; } = [];

    /// <summary>
    /// The cluster for one request: the canary when its header or cookie matches, else a weighted draw, else the
    /// single cluster. Allocates nothing (Random.Shared is thread-safe and allocation-free per call).
    /// </summary>
    public ClusterModel SelectCluster(Http.RequestHead head)
    {
        if (Canary is { } canary && canary.Matches(head))
        {
            return canary.Cluster;
        }
        if (Split is { } split)
        {
            return split.Pick(Random.Shared.NextInt64(split.Total));
        }
        return Cluster!;
    }

    /// <summary>The chain this route runs on listener <paramref name="listenerIndex"/>.</summary>
    public FilterChain Filters(int listenerIndex)
        => (uint)listenerIndex < (uint)Chains.Length ? Chains[listenerIndex] : FilterChain.Empty;
}

internal enum LoadBalancingKind : byte
{
    RoundRobin = 0,
    LeastRequests,
    PowerOfTwo,
    Random,
}

internal sealed class ClusterModel
{
    public required string Name { get; init; }
    public LoadBalancingKind LoadBalancing { get; init; }
    public required DestinationState[] Destinations { get; init; }
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>
    /// Whole exchange with the upstream, from the start of forwarding to the last byte of the response;
    /// <see cref="TimeSpan.Zero"/>: none (the default, so long streams are not cut).
    /// </summary>
    public TimeSpan RequestTimeout { get; init; }
    /// <summary>Longest wait for the response head once the request was sent (first byte).</summary>
    public TimeSpan ResponseTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Longest wait for more response body bytes (an idle timeout: a steady stream is never cut).</summary>
    public TimeSpan StreamIdleTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public UpstreamTimeouts Timeouts => new(RequestTimeout, ResponseTimeout, StreamIdleTimeout);
    /// <summary>
    /// Longest time an upgraded connection (WebSocket) may pass no byte either way before both sides are closed. HAProxy's
    /// customary <c>timeout tunnel</c>: long enough for chatty-but-quiet WebSockets, short enough to reclaim dead peers.
    /// </summary>
    public TimeSpan TunnelIdleTimeout { get; init; } = TimeSpan.FromHours(1);
    /// <summary>Per destination cap on open upstream connections.</summary>
    public int MaxConnections { get; init; } = 256;
    /// <summary>How long an idle pooled upstream connection is kept.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Picks a destination; built from <see cref="LoadBalancing"/> at compile time.</summary>
    public required ILoadBalancingPolicy Policy { get; init; }
    /// <summary>Upstream counters pre-bound to this cluster's name (see <see cref="RouteModel.Metrics"/>).</summary>
    public ClusterMetrics? Metrics { get; set; }

    // ---- resilience (docs/resilience.md); each block is null when the cluster's config has none
    public HealthCheckModel? HealthCheck { get; init; }
    public OutlierDetectionModel? OutlierDetection { get; init; }
    public RetryModel? Retry { get; init; }
    public CircuitBreakerModel? CircuitBreaker { get; init; }
    /// <summary>With every destination down, spread over all of them instead of answering 503 no_healthy_destination.</summary>
    public bool PanicMode { get; init; }
    /// <summary>TLS for the cluster's https:// destinations; null when it has none.</summary>
    public Proxy.Transport.Tls.UpstreamTlsModel? Tls { get; init; }
    /// <summary><c>protocol</c>: HTTP/1.1 (default), h2, h2c or auto (docs/http2.md, "HTTP/2 to upstreams").</summary>
    public UpstreamProtocol Protocol { get; init; }
    /// <summary><c>http2.max_streams_per_connection</c>: our cap on concurrent streams per upstream HTTP/2 connection
    /// (the peer's SETTINGS_MAX_CONCURRENT_STREAMS lowers it further).</summary>
    public int Http2MaxStreams { get; init; } = 100;

    /// <summary>Which destinations may take requests now (health checks, ejections); built by the compiler.</summary>
    public required ClusterHealth Health { get; init; }
    /// <summary>Circuit breaker counters; null when the cluster has no <c>circuit_breaker:</c> block.</summary>
    public ClusterBreaker? Breaker { get; init; }
    /// <summary>The <c>session_affinity:</c> block; null when the cluster has none.</summary>
    public SessionAffinityModel? Affinity { get; init; }
    /// <summary>Retry budget counters; null when the cluster has no <c>retry:</c> block.</summary>
    public RetryBudget? RetryBudget { get; init; }
}
