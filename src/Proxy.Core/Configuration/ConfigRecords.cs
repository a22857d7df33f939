using Proxy.Model;

namespace Proxy.Configuration;

// Config records: the YAML file's shape, typed but not yet checked for meaning. The reader fills them
// and reports shape errors (unknown keys, wrong types, bad sizes); the validator checks meaning
// (duplicates, references, addresses) and the compiler turns them into the runtime model. Values that
// the validator or compiler must point at keep their position, so every later error has a line too.

/// <summary>A 1-based line and column in the config file.</summary>
internal readonly record struct Mark(int Line, int Column)
{
    public static Mark Start { get; } = new(1, 1);

    public static Mark From(YamlDotNet.Core.Mark mark) => new((int)mark.Line, (int)mark.Column);
}

/// <summary>A value with the position it was read from.</summary>
internal readonly record struct Located<T>(T Value, Mark Mark);

internal sealed record ProxyConfig
{
    public ServerConfig Server { get; init; } = new();
    public LimitsConfig Limits { get; init; } = new();
    public ForwardedConfig? Forwarded { get; init; }
    public IReadOnlyList<ListenerConfig> Listeners { get; init; } = [];
    public IReadOnlyList<RouteConfig> Routes { get; init; } = [];
    public IReadOnlyList<ClusterConfig> Clusters { get; init; } = [];
    public AdminConfig? Admin { get; init; }
    /// <summary>The <c>policies:</c> section, in file order.</summary>
    public IReadOnlyList<PolicyConfig> Policies { get; init; } = [];
    /// <summary>The config file's directory: relative paths in the file (a jwt policy's jwks_file) resolve against it.</summary>
    public string BaseDirectory { get; init; } = "";
    /// <summary>The <c>tracing:</c>, <c>access_log:</c> and <c>insights:</c> blocks (see ObservabilityConfig.cs).</summary>
    public ObservabilityConfig Observability { get; init; } = new();
}

/// <summary>
/// One named policy: <c>name: { kind: { settings } }</c>. The reader keeps settings generic (scalars and lists of
/// scalars with positions); each kind checks its own keys in <see cref="PolicyCompiler"/>.
/// </summary>
internal sealed record PolicyConfig
{
    public required Located<string> Name { get; init; }
    /// <summary>The single key under the name; null when the shape was wrong (already reported).</summary>
    public Located<string>? Kind { get; init; }
    public IReadOnlyList<PolicySettingConfig> Settings { get; init; } = [];
}

/// <summary>
/// A setting under a policy's kind: a scalar, a list of scalars, a map (<see cref="Map"/>, e.g. <c>forward_identity</c>)
/// or a list of maps (<see cref="Maps"/>, e.g. an api_key policy's <c>keys</c>). Exactly one of the four is set.
/// </summary>
internal sealed record PolicySettingConfig(Located<string> Key, Located<string>? Scalar, IReadOnlyList<Located<string>>? List)
{
    /// <summary>The entries of a map value, in file order.</summary>
    public IReadOnlyList<PolicySettingConfig>? Map { get; init; }

    /// <summary>The items of a list of maps, each with its position.</summary>
    public IReadOnlyList<PolicyMapItem>? Maps { get; init; }
}

/// <summary>One map in a list of maps under a policy setting.</summary>
internal sealed record PolicyMapItem(Mark Mark, IReadOnlyList<PolicySettingConfig> Entries);

/// <summary>The <c>admin:</c> block: where the admin API listens and the bearer token it requires, if any.</summary>
internal sealed record AdminConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Address { get; init; }
    public Located<string>? Token { get; init; }
}

internal sealed record ServerConfig
{
    public TimeSpan? ShutdownTimeout { get; init; }
    public int? MaxConnections { get; init; }
    /// <summary>Reload when the config file changes; null: the host decides (the CLI watches, embedders do not).</summary>
    public bool? WatchConfig { get; init; }
}

/// <summary>Message limits; null means "inherit" (listener from server-wide, server-wide from the defaults).</summary>
internal sealed record LimitsConfig
{
    public int? MaxRequestLine { get; init; }
    public int? MaxHeaderBytes { get; init; }
    public int? MaxHeaders { get; init; }
    public long? MaxBodyBytes { get; init; }
    public TimeSpan? HeaderTimeout { get; init; }
    public TimeSpan? KeepAliveTimeout { get; init; }
    public TimeSpan? BodyTimeout { get; init; }
    /// <summary>Open connections per client IP address (concurrency, not rate).</summary>
    public int? MaxConnectionsPerIp { get; init; }
    /// <summary>Requests in flight per client IP address.</summary>
    public int? MaxRequestsPerIp { get; init; }
    public Http2LimitsConfig? Http2 { get; init; }
}

/// <summary>HTTP/2 server limits (<c>limits.http2</c>); null means "inherit", like <see cref="LimitsConfig"/>.</summary>
internal sealed record Http2LimitsConfig
{
    public int? MaxConcurrentStreams { get; init; }
    public int? MaxHeaderListSize { get; init; }
    public int? InitialWindowSize { get; init; }
    public int? ConnectionWindowSize { get; init; }
    public int? MaxFrameSize { get; init; }
    public int? RapidResetMax { get; init; }
    public TimeSpan? RapidResetWindow { get; init; }
    public int? MaxControlFramesPerSecond { get; init; }
    public TimeSpan? SendStallTimeout { get; init; }
}

internal sealed record ForwardedConfig
{
    public required Mark Mark { get; init; }
    public Located<ForwardedMode>? Mode { get; init; }
    /// <summary>Null when the key is absent (inherit), empty when it is an empty list.</summary>
    public IReadOnlyList<Located<string>>? TrustedNetworks { get; init; }
}

internal sealed record ListenerConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Name { get; init; }
    public Located<string>? Address { get; init; }
    public ListenerHandler Handler { get; init; }
    public LimitsConfig Limits { get; init; } = new();
    public ForwardedConfig? Forwarded { get; init; }
    /// <summary>Default policies for every route on this listener; they run before the route's own.</summary>
    public IReadOnlyList<Located<string>> Policies { get; init; } = [];
    /// <summary><c>public: true</c>: reachable from untrusted networks, so every route on it must authenticate.</summary>
    public Located<bool>? Public { get; init; }
    /// <summary>The <c>tls:</c> block; null for a cleartext listener.</summary>
    public ListenerTlsConfig? Tls { get; init; }
    /// <summary><c>defer_accept: true</c>: the kernel hands over a connection once its first bytes arrived (Linux TCP_DEFER_ACCEPT).</summary>
    public bool DeferAccept { get; init; }
    /// <summary><c>quick_ack: true</c>: a new connection's request is acknowledged at once, in a segment of its own (Linux TCP_QUICKACK).</summary>
    public bool QuickAck { get; init; }
}

/// <summary>A listener's <c>tls:</c> block (docs/tls.md).</summary>
internal sealed record ListenerTlsConfig
{
    public required Mark Mark { get; init; }
    public IReadOnlyList<TlsCertificateConfig> Certificates { get; init; } = [];
    public ClientCertificatesConfig? ClientCertificates { get; init; }
    public TimeSpan? HandshakeTimeout { get; init; }
}

/// <summary>One <c>certificates:</c> entry: PEM chain, PEM key, and the SNI names it serves (empty: its DNS names).</summary>
internal sealed record TlsCertificateConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Cert { get; init; }
    public Located<string>? Key { get; init; }
    public IReadOnlyList<Located<string>> Hosts { get; init; } = [];
}

/// <summary><c>client_certificates: { mode, ca, forward_header }</c> (mTLS).</summary>
internal sealed record ClientCertificatesConfig
{
    public required Mark Mark { get; init; }
    public Located<Proxy.Transport.Tls.ClientCertificateMode>? Mode { get; init; }
    public Located<string>? Ca { get; init; }
    public Located<string>? ForwardHeader { get; init; }
}

/// <summary>A cluster's <c>tls:</c> block for its https:// destinations.</summary>
internal sealed record UpstreamTlsConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Sni { get; init; }
    public Located<string>? Ca { get; init; }
    public bool? InsecureSkipVerify { get; init; }
    public Located<string>? ClientCert { get; init; }
    public Located<string>? ClientKey { get; init; }
}

internal sealed record RouteConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Id { get; init; }
    public IReadOnlyList<Located<string>> Listeners { get; init; } = [];
    public MatchConfig Match { get; init; } = new();
    public Located<string>? Cluster { get; init; }
    public RespondConfig? Respond { get; init; }
    public IReadOnlyList<Located<string>> Policies { get; init; } = [];
    /// <summary><c>allow_anonymous: true</c>: the route is meant to be reachable without authentication on a public listener.</summary>
    public Located<bool>? AllowAnonymous { get; init; }
    /// <summary>The <c>clusters:</c> weighted split; empty when absent (the route uses <c>cluster:</c>).</summary>
    public IReadOnlyList<WeightedClusterConfig> Clusters { get; init; } = [];
    public Mark ClustersMark { get; init; }
    public CanaryConfig? Canary { get; init; }
    public TimeSpan? RequestTimeout { get; init; }
    public TimeSpan? ResponseTimeout { get; init; }
    public TimeSpan? StreamIdleTimeout { get; init; }
    /// <summary><c>retry_non_idempotent</c>: the cluster's retry policy may replay this route's POST/PATCH requests too.</summary>
    public Located<bool>? RetryNonIdempotent { get; init; }
    /// <summary><c>ignore_client_abort</c>: an HTTP/1.1 client's close while the upstream works does not end the exchange.</summary>
    public Located<bool>? IgnoreClientAbort { get; init; }
    /// <summary><c>rewrite:</c> the path the upstream sees instead of the client's (docs/routing.md, "Path rewrite").</summary>
    public RewriteConfig? Rewrite { get; init; }
}

/// <summary>A route's <c>rewrite:</c> block: <c>{ path: "/v2/{rest}" }</c>.</summary>
internal sealed record RewriteConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Path { get; init; }
}

/// <summary>One entry of a route's <c>clusters:</c> list.</summary>
internal sealed record WeightedClusterConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Name { get; init; }
    public int Weight { get; init; } = 1;
}

/// <summary>A route's <c>canary:</c> block: <c>{ cluster, header: { name, value } }</c> or <c>{ cluster, cookie: { name, value } }</c>.</summary>
internal sealed record CanaryConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Cluster { get; init; }
    public FieldMatchConfig? Header { get; init; }
    public FieldMatchConfig? Cookie { get; init; }
}

internal sealed record MatchConfig
{
    public Located<string>? Path { get; init; }
    public IReadOnlyList<Located<string>> Hosts { get; init; } = [];
    public IReadOnlyList<Located<string>> Methods { get; init; } = [];
    public IReadOnlyList<FieldMatchConfig> Headers { get; init; } = [];
    public IReadOnlyList<FieldMatchConfig> Query { get; init; } = [];
}

/// <summary>A header or query parameter predicate: a value to equal, or presence (default: must be present).</summary>
internal sealed record FieldMatchConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Name { get; init; }
    public Located<string>? Value { get; init; }
    public Located<bool>? Present { get; init; }
}

internal sealed record RespondConfig
{
    public required Mark Mark { get; init; }
    public int Status { get; init; } = 200;
    public Mark StatusMark { get; init; }
    public string Body { get; init; } = "";
    public IReadOnlyList<(Located<string> Name, Located<string> Value)> Headers { get; init; } = [];
}

internal sealed record ClusterConfig
{
    public required Located<string> Name { get; init; }
    public LoadBalancingKind LoadBalancing { get; init; }
    public IReadOnlyList<DestinationConfig> Destinations { get; init; } = [];
    public TimeSpan? ConnectTimeout { get; init; }
    public TimeSpan? RequestTimeout { get; init; }
    public TimeSpan? ResponseTimeout { get; init; }
    public TimeSpan? StreamIdleTimeout { get; init; }
    public TimeSpan? TunnelIdleTimeout { get; init; }
    public int? MaxConnections { get; init; }
    public TimeSpan? IdleTimeout { get; init; }
    public HealthCheckConfig? HealthCheck { get; init; }
    public OutlierDetectionConfig? OutlierDetection { get; init; }
    public RetryConfig? Retry { get; init; }
    public CircuitBreakerConfig? CircuitBreaker { get; init; }
    public bool? PanicMode { get; init; }
    /// <summary>TLS settings for https:// destinations; null: defaults (SNI from the address, system trust store).</summary>
    public UpstreamTlsConfig? Tls { get; init; }
    public SessionAffinityConfig? SessionAffinity { get; init; }
    /// <summary><c>protocol</c>: http1 (default), h2, h2c, auto.</summary>
    public Located<Proxy.Upstream.UpstreamProtocol>? Protocol { get; init; }
    /// <summary><c>http2.max_streams_per_connection</c>.</summary>
    public int? Http2MaxStreams { get; init; }
}

/// <summary>A cluster's <c>session_affinity:</c> block.</summary>
internal sealed record SessionAffinityConfig
{
    public required Mark Mark { get; init; }
    public AffinityMode Mode { get; init; }
    public Located<string>? Name { get; init; }
    public TimeSpan? Ttl { get; init; }
}

/// <summary>The <c>health_check:</c> block of a cluster; every key optional (defaults in <see cref="HealthCheckModel"/>).</summary>
internal sealed record HealthCheckConfig
{
    public required Mark Mark { get; init; }
    public Located<string>? Path { get; init; }
    public Located<TimeSpan>? Interval { get; init; }
    public Located<TimeSpan>? Timeout { get; init; }
    public int? HealthyThreshold { get; init; }
    public int? UnhealthyThreshold { get; init; }
    public (int Low, int High)[]? ExpectedStatuses { get; init; }
}

internal sealed record OutlierDetectionConfig
{
    public required Mark Mark { get; init; }
    public int? ConsecutiveFailures { get; init; }
    public TimeSpan? BaseEjection { get; init; }
    public int? MaxEjectionPercent { get; init; }
}

internal sealed record RetryConfig
{
    public required Mark Mark { get; init; }
    public int? Attempts { get; init; }
    /// <summary>Null when the key is absent (defaults); the flags of every recognised condition otherwise.</summary>
    public RetryOn? On { get; init; }
    public Located<TimeSpan>? BackoffBase { get; init; }
    public Located<TimeSpan>? BackoffMax { get; init; }
    public int? BudgetPercent { get; init; }
    public TimeSpan? PerTryTimeout { get; init; }
    public bool? NonIdempotent { get; init; }
    public long? MaxReplayBodyBytes { get; init; }
}

internal sealed record CircuitBreakerConfig
{
    public required Mark Mark { get; init; }
    public int? MaxConnections { get; init; }
    public int? MaxPending { get; init; }
    public int? MaxRequests { get; init; }
}

internal sealed record DestinationConfig
{
    public required Located<string> Address { get; init; }
    public int Weight { get; init; } = 1;
}
