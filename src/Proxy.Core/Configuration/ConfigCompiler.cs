using System.Net;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Model;
using Proxy.Routing;
using Proxy.Upstream;

namespace Proxy.Configuration;

/// <summary>
/// Validated config records -> immutable <see cref="ProxySnapshot"/>. Runs only on a config the
/// validator accepted, so it does not re-check; it does the data plane's work ahead of time (lower-cased
/// names as bytes, pre-encoded direct responses, merged limits) so no request has to.
/// </summary>
internal static class ConfigCompiler
{
    // Read defaults from the model's own initialisers so they are stated in one place.
    private static readonly ServerModel s_serverDefaults = new();
    private static readonly ClusterModel s_clusterDefaults = new() { Name = "", Destinations = [], Policy = null!, Health = null! };

    /// <summary>
    /// Compiles validated config. With <paramref name="previous"/> (a reload: the running snapshot), a cluster whose
    /// compiled definition equals the running one of the same name is taken over as is, so its pools, health state,
    /// breaker and budget survive the reload; routes of the new snapshot then point at that object. Likewise a
    /// <c>rate_limit</c> policy whose state-relevant definition is unchanged takes over the running policy's tables.
    /// </summary>
    public static ProxySnapshot Compile(ProxyConfig config, string text, string sourcePath, ProxySnapshot? previous = null)
    {
        // Read before the policies are compiled: should a file change in between, the version names the older
        // content, so the next reload sees a difference and compiles again (never the other way round).
        string version = ComputeVersion(text, PolicyCompiler.ReadReferencedFiles(config));
        var server = new ServerModel
        {
            ShutdownTimeout = config.Server.ShutdownTimeout ?? s_serverDefaults.ShutdownTimeout,
            MaxConnections = config.Server.MaxConnections ?? s_serverDefaults.MaxConnections,
            WatchConfig = config.Server.WatchConfig,
        };
        // The server-wide block sits on the built-in defaults; each listener's block sits on that.
        var serverLimits = MergeLimits(HttpLimits.Default with { MaxConnections = server.MaxConnections }, config.Limits);

        // One filter per policy, shared by every route and listener naming it (so they share its budgets).
        var filters = PolicyCompiler.BuildAll(config, TimeProvider.System, previous?.Policies);

        // The admin listener, when configured, comes last: user listener indexes (route masks) stay as in the file.
        var listeners = new ListenerModel[config.Listeners.Count + (config.Admin is null ? 0 : 1)];
        for (int i = 0; i < config.Listeners.Count; i++)
        {
            var l = config.Listeners[i];
            ConfigSyntax.TryParseListenerAddress(l.Address!.Value.Value, out var endPoint, out _);
            listeners[i] = new ListenerModel
            {
                Name = l.Name!.Value.Value,
                Index = i,
                EndPoint = endPoint,
                AddressMark = l.Address!.Value.Mark,
                Handler = l.Handler,
                DeferAccept = l.DeferAccept,
                QuickAck = l.QuickAck,
                Limits = MergeLimits(serverLimits, l.Limits),
                Forwarded = BuildForwarded(config.Forwarded, l.Forwarded),
                Metrics = new ListenerMetrics(l.Name!.Value.Value),
                Tls = l.Tls is { } tls ? Proxy.Transport.Tls.TlsConfigCompiler.BuildListener(l.Name!.Value.Value, tls, config.BaseDirectory) : null,
                Unmatched = PolicyCompiler.Unmatched(l, filters),
            };
        }
        AdminModel? admin = null;
        if (config.Admin is { } adminConfig)
        {
            ConfigSyntax.TryParseListenerAddress(adminConfig.Address!.Value.Value, out var endPoint, out _);
            admin = new AdminModel
            {
                EndPoint = endPoint,
                Token = adminConfig.Token is { } token ? Encoding.UTF8.GetBytes(token.Value) : null,
            };
            listeners[^1] = new ListenerModel
            {
                Name = AdminModel.ListenerName,
                Index = listeners.Length - 1,
                EndPoint = endPoint,
                AddressMark = adminConfig.Address!.Value.Mark,
                Handler = ListenerHandler.Admin,
                Limits = serverLimits,
                Metrics = new ListenerMetrics(AdminModel.ListenerName),
            };
        }

        var clusters = new Dictionary<string, ClusterModel>(StringComparer.Ordinal);
        foreach (var c in config.Clusters)
        {
            ClusterModel built = BuildCluster(c, config.BaseDirectory);
            if (previous is not null && previous.Clusters.TryGetValue(built.Name, out var running) && SameDefinition(running, built))
            {
                built = running;
            }
            clusters.Add(c.Name.Value, built);
        }

        var routes = new RouteModel[config.Routes.Count];
        for (int i = 0; i < routes.Length; i++)
        {
            var r = config.Routes[i];
            WeightedClustersModel? split = BuildSplit(r, clusters);
            routes[i] = new RouteModel
            {
                Id = r.Id!.Value.Value,
                Order = i,
                Match = BuildMatch(r.Match),
                Cluster = r.Cluster is { } name ? clusters[name.Value] : split?.Clusters[0],
                Split = split,
                Canary = r.Canary is { } canary ? BuildCanary(canary, clusters) : null,
                Timeouts = new UpstreamTimeouts(r.RequestTimeout ?? TimeSpan.Zero, r.ResponseTimeout ?? TimeSpan.Zero,
                    r.StreamIdleTimeout ?? TimeSpan.Zero),
                Respond = r.Respond is { } respond ? BuildResponse(respond) : null,
                Rewrite = r.Rewrite?.Path is { } rewrite ? PathRewrite.Compile(rewrite.Value, r.Match.Path?.Value) : null,
                RetryNonIdempotent = r.RetryNonIdempotent?.Value ?? false,
                IgnoreClientAbort = r.IgnoreClientAbort?.Value ?? false,
                ListenerMask = ListenerMask(r.Listeners, config.Listeners),
                Chains = PolicyCompiler.Chains(r, config.Listeners, filters),
                // Labels chosen now, so a request never builds a tag list.
                Metrics = new RouteMetrics(r.Id!.Value.Value, r.Cluster?.Value ?? split?.Clusters[0].Name ?? ""),
            };
        }

        return new ProxySnapshot
        {
            Listeners = listeners,
            Routes = RouteTable.Build(routes),
            Clusters = clusters,
            Server = server,
            Version = version,
            SourcePath = sourcePath,
            Admin = admin,
            Policies = [.. filters],
            Observability = ObservabilityCompiler.Compile(config.Observability),
        };
    }

    /// <summary>A route's <c>clusters:</c> as a weighted split; null without one. Zero-weight entries are dropped.</summary>
    private static WeightedClustersModel? BuildSplit(RouteConfig r, Dictionary<string, ClusterModel> clusters)
    {
        if (r.Clusters.Count == 0)
        {
            return null;
        }
        var picked = new List<ClusterModel>();
        var weights = new List<int>();
        foreach (var entry in r.Clusters)
        {
            if (entry.Weight > 0)
            {
                picked.Add(clusters[entry.Name!.Value.Value]);
                weights.Add(entry.Weight);
            }
        }
        return new WeightedClustersModel([.. picked], [.. weights]);
    }

    private static CanaryModel BuildCanary(CanaryConfig c, Dictionary<string, ClusterModel> clusters)
    {
        FieldMatchConfig field = c.Header ?? c.Cookie!;
        string name = field.Name!.Value.Value;
        return new CanaryModel
        {
            Cluster = clusters[c.Cluster!.Value.Value],
            // Field names are case-insensitive (RFC 9110 section 5.1); cookie names are not (RFC 6265 section 5.4).
            HeaderName = c.Header is not null ? Encoding.ASCII.GetBytes(name.ToLowerInvariant()) : null,
            CookieName = c.Header is null ? Encoding.ASCII.GetBytes(name) : null,
            Value = field.Value is { } v ? Encoding.UTF8.GetBytes(v.Value) : null,
        };
    }

    /// <summary>12 hex digits identifying the file text: short enough for a log line, long enough not to collide by chance.</summary>
    public static string ComputeVersion(string text) => ComputeVersion(text, []);

    /// <summary>
    /// As <see cref="ComputeVersion(string)"/>, also over the files the policies read at compile time (jwks_file,
    /// keys_file, client_secret_file): a reload after only such a file changed (a rotated secret) must not be
    /// taken for "unchanged" and skipped.
    /// </summary>
    public static string ComputeVersion(string text, IReadOnlyList<byte[]> files)
    {
        // FNV-1a over the UTF-8 text: a version tag, not a security property. A cryptographic hash would load
        // OpenSSL into every process just for this (about 5 MiB of resident memory).
        ulong hash = 14695981039346656037UL;
        foreach (byte b in Encoding.UTF8.GetBytes(text))
        {
            hash = (hash ^ b) * 1099511628211UL;
        }
        foreach (byte[] file in files)
        {
            // A separator, so moving bytes between the text and a file changes the tag.
            hash = (hash ^ 0x1F) * 1099511628211UL;
            foreach (byte b in file)
            {
                hash = (hash ^ b) * 1099511628211UL;
            }
        }
        return hash.ToString("x16")[..12];
    }

    public static HttpLimits MergeLimits(HttpLimits inherited, LimitsConfig overrides) => inherited with
    {
        MaxRequestLine = overrides.MaxRequestLine ?? inherited.MaxRequestLine,
        MaxHeaderBytes = overrides.MaxHeaderBytes ?? inherited.MaxHeaderBytes,
        MaxHeaders = overrides.MaxHeaders ?? inherited.MaxHeaders,
        MaxBodyBytes = overrides.MaxBodyBytes ?? inherited.MaxBodyBytes,
        HeaderTimeout = overrides.HeaderTimeout ?? inherited.HeaderTimeout,
        KeepAliveTimeout = overrides.KeepAliveTimeout ?? inherited.KeepAliveTimeout,
        BodyTimeout = overrides.BodyTimeout ?? inherited.BodyTimeout,
        MaxConnectionsPerIp = overrides.MaxConnectionsPerIp ?? inherited.MaxConnectionsPerIp,
        MaxRequestsPerIp = overrides.MaxRequestsPerIp ?? inherited.MaxRequestsPerIp,
        Http2 = overrides.Http2 is { } h2 ? MergeHttp2Limits(inherited.Http2, h2) : inherited.Http2,
    };

    public static Http2Limits MergeHttp2Limits(Http2Limits inherited, Http2LimitsConfig overrides) => inherited with
    {
        MaxConcurrentStreams = overrides.MaxConcurrentStreams ?? inherited.MaxConcurrentStreams,
        MaxHeaderListSize = overrides.MaxHeaderListSize ?? inherited.MaxHeaderListSize,
        InitialWindowSize = overrides.InitialWindowSize ?? inherited.InitialWindowSize,
        ConnectionWindowSize = overrides.ConnectionWindowSize ?? inherited.ConnectionWindowSize,
        MaxFrameSize = overrides.MaxFrameSize ?? inherited.MaxFrameSize,
        RapidResetMax = overrides.RapidResetMax ?? inherited.RapidResetMax,
        RapidResetWindow = overrides.RapidResetWindow ?? inherited.RapidResetWindow,
        MaxControlFramesPerSecond = overrides.MaxControlFramesPerSecond ?? inherited.MaxControlFramesPerSecond,
        SendStallTimeout = overrides.SendStallTimeout ?? inherited.SendStallTimeout,
    };

    /// <summary>A listener's block overrides the server-wide one key by key; missing keys are inherited.</summary>
    public static (ForwardedMode Mode, IReadOnlyList<Located<string>> Networks) MergeForwarded(ForwardedConfig? server, ForwardedConfig? listener)
    {
        var mode = listener?.Mode?.Value ?? server?.Mode?.Value ?? ForwardedMode.Append;
        var networks = listener?.TrustedNetworks ?? server?.TrustedNetworks ?? [];
        return (mode, networks);
    }

    private static ForwardedModel BuildForwarded(ForwardedConfig? server, ForwardedConfig? listener)
    {
        if (server is null && listener is null)
        {
            return ForwardedModel.Default;
        }
        var (mode, networks) = MergeForwarded(server, listener);
        var parsed = new IPNetwork[networks.Count];
        for (int i = 0; i < parsed.Length; i++)
        {
            ConfigSyntax.TryParseCidr(networks[i].Value, out parsed[i], out _);
        }
        return new ForwardedModel { Mode = mode, TrustedNetworks = parsed };
    }

    public static RouteMatchModel BuildMatch(MatchConfig match)
    {
        var headers = new HeaderMatchModel[match.Headers.Count];
        for (int i = 0; i < headers.Length; i++)
        {
            var h = match.Headers[i];
            var name = h.Name!.Value.Value;
            headers[i] = new HeaderMatchModel
            {
                Name = name,
                // Field names are case-insensitive (RFC 9110 section 5.1); the matcher compares against lower case.
                NameLower = Encoding.ASCII.GetBytes(name.ToLowerInvariant()),
                Value = h.Value is { } v ? Encoding.UTF8.GetBytes(v.Value) : null,
                Present = h.Value is not null || (h.Present?.Value ?? true),
            };
        }
        var query = new QueryMatchModel[match.Query.Count];
        for (int i = 0; i < query.Length; i++)
        {
            var q = match.Query[i];
            query[i] = new QueryMatchModel
            {
                Name = q.Name!.Value.Value,
                NameBytes = Encoding.UTF8.GetBytes(q.Name!.Value.Value),
                Value = q.Value is { } v ? Encoding.UTF8.GetBytes(v.Value) : null,
                Present = q.Value is not null || (q.Present?.Value ?? true),
            };
        }
        return new RouteMatchModel
        {
            // "%2f" and "%2F" are the same escape (RFC 3986 section 6.2.2.1); requests are routed with upper-case hex.
            Path = match.Path is { } path ? ConfigSyntax.CanonicalPathTemplate(path.Value) : null,
            Hosts = match.Hosts.Select(h => h.Value.ToLowerInvariant()).ToArray(),
            Methods = match.Methods.Select(m => m.Value.ToUpperInvariant()).ToArray(),
            Headers = headers,
            Query = query,
        };
    }

    /// <summary>Bit i set for each named listener i; zero (every proxy listener) when none are named.</summary>
    public static ulong ListenerMask(IReadOnlyList<Located<string>> names, IReadOnlyList<ListenerConfig> listeners)
    {
        ulong mask = 0;
        foreach (var name in names)
        {
            for (int i = 0; i < listeners.Count && i < ConfigValidator.MaxListeners; i++)
            {
                if (listeners[i].Name?.Value == name.Value)
                {
                    mask |= 1UL << i;
                    break;
                }
            }
        }
        return mask;
    }

    /// <summary>
    /// Pre-encodes the status line and configured headers (RFC 9112 section 4: status-line =
    /// HTTP-version SP status-code SP [ reason-phrase ] CRLF). The connection appends Content-Length,
    /// Connection and the empty line, which depend on the request.
    /// </summary>
    public static DirectResponseModel BuildResponse(RespondConfig respond)
    {
        var head = new StringBuilder();
        head.Append("HTTP/1.1 ").Append(respond.Status).Append(' ').Append(StatusCodes.ReasonPhrase(respond.Status)).Append("\r\n");
        foreach (var (name, value) in respond.Headers)
        {
            head.Append(name.Value).Append(": ").Append(value.Value).Append("\r\n");
        }
        return new DirectResponseModel
        {
            Status = respond.Status,
            HeadPrefix = Encoding.UTF8.GetBytes(head.ToString()),
            Body = Encoding.UTF8.GetBytes(respond.Body),
        };
    }

    /// <summary>
    /// True when two compiled clusters behave the same: every setting and the destinations (address and weight, in
    /// order) are equal. Compared on the compiled form so that moving a block in the file or spelling a default
    /// out does not count as a change.
    /// </summary>
    internal static bool SameDefinition(ClusterModel a, ClusterModel b) => Fingerprint(a) == Fingerprint(b);

    private static string Fingerprint(ClusterModel c)
    {
        var text = new StringBuilder();
        text.Append(c.Name).Append('|').Append(c.LoadBalancing).Append('|').Append(c.ConnectTimeout.Ticks).Append('|')
            .Append(c.RequestTimeout.Ticks).Append('|').Append(c.ResponseTimeout.Ticks).Append('|').Append(c.StreamIdleTimeout.Ticks).Append('|').Append(c.TunnelIdleTimeout.Ticks).Append('|').Append(c.MaxConnections).Append('|').Append(c.IdleTimeout.Ticks)
            .Append('|').Append(c.PanicMode).Append('|').Append(c.Protocol).Append('|').Append(c.Http2MaxStreams);
        if (c.Tls is { } tls)
        {
            text.Append("|tls:").Append(tls.Description);
        }
        foreach (var d in c.Destinations)
        {
            text.Append("|d:").Append(d.Address).Append('*').Append(d.Weight);
        }
        if (c.HealthCheck is { } h)
        {
            text.Append("|hc:").Append(h.Path).Append(',').Append(h.Interval.Ticks).Append(',').Append(h.Timeout.Ticks)
                .Append(',').Append(h.HealthyThreshold).Append(',').Append(h.UnhealthyThreshold);
        }
        if (c.OutlierDetection is { } o)
        {
            text.Append("|od:").Append(o.ConsecutiveFailures).Append(',').Append(o.BaseEjection.Ticks).Append(',').Append(o.MaxEjectionPercent);
        }
        if (c.Retry is { } r)
        {
            text.Append("|rt:").Append(r.Attempts).Append(',').Append((int)r.On).Append(',').Append(r.BackoffBase.Ticks)
                .Append(',').Append(r.BackoffMax.Ticks).Append(',').Append(r.BudgetPercent).Append(',').Append(r.PerTryTimeout.Ticks)
                .Append(',').Append(r.NonIdempotent).Append(',').Append(r.MaxReplayBodyBytes);
        }
        if (c.Affinity is { } a)
        {
            text.Append("|sa:").Append(a.Mode).Append(',').Append(Encoding.ASCII.GetString(a.Name)).Append(',').Append(a.Ttl.Ticks);
        }
        if (c.CircuitBreaker is { } b)
        {
            text.Append("|cb:").Append(b.MaxConnections).Append(',').Append(b.MaxPending).Append(',').Append(b.MaxRequests);
        }
        return text.ToString();
    }

    private static ClusterModel BuildCluster(ClusterConfig c, string baseDirectory)
    {
        var destinations = new DestinationState[c.Destinations.Count];
        for (int i = 0; i < destinations.Length; i++)
        {
            var d = c.Destinations[i];
            ConfigSyntax.TryParseDestination(d.Address.Value, out var host, out var port, out _);
            destinations[i] = new DestinationState(d.Address.Value, host, port, d.Weight, ConfigSyntax.IsSecureDestination(d.Address.Value));
        }
        HealthCheckModel? healthCheck = c.HealthCheck is { } h ? BuildHealthCheck(h) : null;
        OutlierDetectionModel? outlier = c.OutlierDetection is { } o ? BuildOutlierDetection(o) : null;
        RetryModel? retry = c.Retry is { } r ? BuildRetry(r) : null;
        CircuitBreakerModel? breaker = c.CircuitBreaker is { } b ? BuildCircuitBreaker(b) : null;
        bool panic = c.PanicMode ?? false;
        return new ClusterModel
        {
            HealthCheck = healthCheck,
            OutlierDetection = outlier,
            Retry = retry,
            CircuitBreaker = breaker,
            PanicMode = panic,
            Health = new ClusterHealth(c.Name.Value, destinations, outlier, panic),
            Breaker = breaker is null ? null : new ClusterBreaker(breaker),
            RetryBudget = retry is null ? null : new RetryBudget(retry),
            Affinity = c.SessionAffinity is { } affinity ? BuildAffinity(affinity, destinations) : null,
            Name = c.Name.Value,
            LoadBalancing = c.LoadBalancing,
            Destinations = destinations,
            ConnectTimeout = c.ConnectTimeout ?? s_clusterDefaults.ConnectTimeout,
            RequestTimeout = c.RequestTimeout ?? s_clusterDefaults.RequestTimeout,
            ResponseTimeout = c.ResponseTimeout ?? s_clusterDefaults.ResponseTimeout,
            StreamIdleTimeout = c.StreamIdleTimeout ?? s_clusterDefaults.StreamIdleTimeout,
            TunnelIdleTimeout = c.TunnelIdleTimeout ?? s_clusterDefaults.TunnelIdleTimeout,
            MaxConnections = c.MaxConnections ?? s_clusterDefaults.MaxConnections,
            IdleTimeout = c.IdleTimeout ?? s_clusterDefaults.IdleTimeout,
            Policy = LoadBalancingPolicies.Create(c.LoadBalancing),
            Metrics = new ClusterMetrics(c.Name.Value),
            Tls = Proxy.Transport.Tls.TlsConfigCompiler.BuildCluster(c, baseDirectory),
            Protocol = c.Protocol?.Value ?? Proxy.Upstream.UpstreamProtocol.Http1,
            Http2MaxStreams = c.Http2MaxStreams ?? s_clusterDefaults.Http2MaxStreams,
        };
    }

    /// <summary>Default names: a cookie <c>proxy_affinity</c>, a header <c>x-proxy-affinity</c>.</summary>
    private static SessionAffinityModel BuildAffinity(SessionAffinityConfig a, DestinationState[] destinations)
    {
        bool cookie = a.Mode == AffinityMode.Cookie;
        string name = a.Name?.Value ?? (cookie ? "proxy_affinity" : "x-proxy-affinity");
        var keys = new byte[destinations.Length][];
        var fields = new byte[cookie ? destinations.Length : 0][];
        for (int i = 0; i < destinations.Length; i++)
        {
            string key = SessionAffinityModel.Fnv1a(Encoding.UTF8.GetBytes(destinations[i].Address)).ToString("x16");
            keys[i] = Encoding.ASCII.GetBytes(key);
            if (cookie)
            {
                // RFC 6265 section 4.1: Path=/ so every path of the site carries it; HttpOnly as scripts have no use for it.
                string field = $"set-cookie: {name}={key}; Path=/; HttpOnly"
                    + (a.Ttl is { } ttl ? $"; Max-Age={(long)ttl.TotalSeconds}" : "") + "\r\n";
                fields[i] = Encoding.ASCII.GetBytes(field);
            }
        }
        return new SessionAffinityModel
        {
            Mode = a.Mode,
            Name = Encoding.ASCII.GetBytes(cookie ? name : name.ToLowerInvariant()),
            Ttl = a.Ttl ?? TimeSpan.Zero,
            Destinations = destinations,
            Keys = keys,
            SetCookieFields = fields,
        };
    }

    private static readonly HealthCheckModel s_healthDefaults = new();
    private static readonly OutlierDetectionModel s_outlierDefaults = new();
    private static readonly RetryModel s_retryDefaults = new();
    private static readonly CircuitBreakerModel s_breakerDefaults = new();

    private static HealthCheckModel BuildHealthCheck(HealthCheckConfig h)
    {
        var interval = h.Interval?.Value ?? s_healthDefaults.Interval;
        return new HealthCheckModel
        {
            Path = h.Path?.Value ?? s_healthDefaults.Path,
            Interval = interval,
            // An unset timeout never outlasts the interval (a probe must end before the next one starts).
            Timeout = h.Timeout?.Value ?? (s_healthDefaults.Timeout < interval ? s_healthDefaults.Timeout : interval),
            HealthyThreshold = h.HealthyThreshold ?? s_healthDefaults.HealthyThreshold,
            UnhealthyThreshold = h.UnhealthyThreshold ?? s_healthDefaults.UnhealthyThreshold,
            ExpectedStatuses = h.ExpectedStatuses ?? s_healthDefaults.ExpectedStatuses,
        };
    }

    private static OutlierDetectionModel BuildOutlierDetection(OutlierDetectionConfig o) => new()
    {
        ConsecutiveFailures = o.ConsecutiveFailures ?? s_outlierDefaults.ConsecutiveFailures,
        BaseEjection = o.BaseEjection ?? s_outlierDefaults.BaseEjection,
        MaxEjectionPercent = o.MaxEjectionPercent ?? s_outlierDefaults.MaxEjectionPercent,
    };

    private static RetryModel BuildRetry(RetryConfig r)
    {
        var backoffBase = r.BackoffBase?.Value ?? s_retryDefaults.BackoffBase;
        var backoffMax = r.BackoffMax?.Value ?? s_retryDefaults.BackoffMax;
        return new RetryModel
        {
            Attempts = r.Attempts ?? s_retryDefaults.Attempts,
            // A per-try timeout exists to be retried: it brings its own condition, not spelled in 'on'.
            On = (r.On ?? s_retryDefaults.On) | (r.PerTryTimeout is not null ? RetryOn.PerTryTimeout : RetryOn.None),
            BackoffBase = backoffBase,
            // Only one of the two given: the max never falls below the base.
            BackoffMax = backoffMax < backoffBase ? backoffBase : backoffMax,
            BudgetPercent = r.BudgetPercent ?? s_retryDefaults.BudgetPercent,
            PerTryTimeout = r.PerTryTimeout ?? TimeSpan.Zero,
            NonIdempotent = r.NonIdempotent ?? false,
            MaxReplayBodyBytes = r.MaxReplayBodyBytes ?? s_retryDefaults.MaxReplayBodyBytes,
        };
    }

    private static CircuitBreakerModel BuildCircuitBreaker(CircuitBreakerConfig b) => new()
    {
        MaxConnections = b.MaxConnections ?? s_breakerDefaults.MaxConnections,
        MaxPending = b.MaxPending ?? s_breakerDefaults.MaxPending,
        MaxRequests = b.MaxRequests ?? s_breakerDefaults.MaxRequests,
    };
}
