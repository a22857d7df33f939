using System.Globalization;
using Proxy.Model;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;

namespace Proxy.Configuration;

/// <summary>
/// YAML text -> <see cref="ProxyConfig"/>. Uses YamlDotNet's representation model rather than its
/// serializer so every node keeps its line and column, and so a wrong type or unknown key is an error
/// we word ourselves (with a suggestion) instead of an exception that stops at the first problem.
/// Reports shape errors only; meaning is checked by <see cref="ConfigValidator"/>.
/// </summary>
internal sealed partial class YamlConfigReader
{
    private static readonly string[] s_rootKeys = ["server", "limits", "forwarded", "listeners", "routes", "clusters", "admin", "policies", "tracing", "metrics", "access_log", "insights"];
    private static readonly string[] s_adminKeys = ["address", "token"];
    private static readonly string[] s_serverKeys = ["shutdown_timeout", "max_connections", "watch_config"];
    private static readonly string[] s_limitsKeys =
        ["max_request_line", "max_header_bytes", "max_headers", "max_body_bytes", "header_timeout", "keepalive_timeout", "body_timeout",
         "max_connections_per_ip", "max_requests_per_ip", "http2"];
    private static readonly string[] s_http2LimitsKeys =
        ["max_concurrent_streams", "max_header_list_size", "initial_window_size", "connection_window_size", "max_frame_size",
         "rapid_reset", "max_control_frames_per_second", "send_stall_timeout"];
    private static readonly string[] s_rapidResetKeys = ["max", "window"];
    private static readonly string[] s_forwardedKeys = ["mode", "trusted_networks"];
    private static readonly string[] s_listenerKeys = ["name", "address", "handler", "limits", "forwarded", "policies", "tls", "public", "defer_accept", "quick_ack"];
    private static readonly string[] s_tlsKeys = ["certificates", "client_certificates", "handshake_timeout"];
    private static readonly string[] s_tlsCertificateKeys = ["cert", "key", "hosts"];
    private static readonly string[] s_clientCertificateKeys = ["mode", "ca", "forward_header"];
    private static readonly string[] s_upstreamTlsKeys = ["sni", "ca", "insecure_skip_verify", "client_cert", "client_key"];
    private static readonly (string Name, Proxy.Transport.Tls.ClientCertificateMode Value)[] s_clientCertificateModes =
    [
        ("none", Proxy.Transport.Tls.ClientCertificateMode.None), ("request", Proxy.Transport.Tls.ClientCertificateMode.Request),
        ("require", Proxy.Transport.Tls.ClientCertificateMode.Require),
    ];
    private static readonly string[] s_routeKeys =
        ["id", "listeners", "match", "cluster", "respond", "policies", "clusters", "canary", "request_timeout", "response_timeout", "stream_idle_timeout",
         "allow_anonymous", "retry_non_idempotent", "ignore_client_abort", "rewrite"];
    private static readonly string[] s_rewriteKeys = ["path"];
    private static readonly string[] s_weightedClusterKeys = ["name", "weight"];
    private static readonly string[] s_canaryKeys = ["cluster", "header", "cookie"];
    private static readonly string[] s_matchKeys = ["path", "hosts", "methods", "headers", "query"];
    private static readonly string[] s_fieldMatchKeys = ["name", "value", "present"];
    private static readonly (string Key, string What)[] s_anyWhenOmitted = [("hosts", "any host"), ("methods", "any method")];
    private static readonly string[] s_respondKeys = ["status", "body", "headers"];
    private static readonly string[] s_clusterKeys =
    [
        "load_balancing", "destinations", "connect_timeout", "request_timeout", "max_connections", "idle_timeout",
        "health_check", "outlier_detection", "retry", "circuit_breaker", "panic_mode", "response_timeout", "stream_idle_timeout",
        "tunnel_idle_timeout", "session_affinity", "tls", "protocol", "http2",
    ];
    private static readonly string[] s_clusterHttp2Keys = ["max_streams_per_connection"];
    private static readonly (string Name, Proxy.Upstream.UpstreamProtocol Value)[] s_upstreamProtocols =
    [
        ("http1", Proxy.Upstream.UpstreamProtocol.Http1), ("h2", Proxy.Upstream.UpstreamProtocol.H2),
        ("h2c", Proxy.Upstream.UpstreamProtocol.H2c), ("auto", Proxy.Upstream.UpstreamProtocol.Auto),
    ];
    private static readonly string[] s_affinityKeys = ["mode", "name", "ttl"];
    private static readonly (string Name, AffinityMode Value)[] s_affinityModes = [("cookie", AffinityMode.Cookie), ("header", AffinityMode.Header)];
    private static readonly string[] s_healthCheckKeys = ["path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "expected_statuses"];
    private static readonly string[] s_outlierKeys = ["consecutive_failures", "base_ejection", "max_ejection_percent"];
    private static readonly string[] s_retryKeys = ["attempts", "on", "backoff", "budget_percent", "per_try_timeout", "non_idempotent", "max_replay_body_bytes"];
    private static readonly string[] s_backoffKeys = ["base", "max"];
    private static readonly string[] s_circuitBreakerKeys = ["max_connections", "max_pending", "max_requests"];
    private static readonly (string Name, RetryOn Value)[] s_retryConditions =
    [
        ("connect_failure", RetryOn.ConnectFailure), ("reset", RetryOn.Reset),
        ("502", RetryOn.Status502), ("503", RetryOn.Status503), ("504", RetryOn.Status504), ("unavailable", RetryOn.Unavailable),
    ];
    private static readonly string[] s_destinationKeys = ["address", "weight"];

    private static readonly (string Name, ForwardedMode Value)[] s_forwardedModes =
        [("append", ForwardedMode.Append), ("replace", ForwardedMode.Replace), ("trust", ForwardedMode.Trust), ("off", ForwardedMode.Off)];
    private static readonly (string Name, ListenerHandler Value)[] s_handlers =
        [("proxy", ListenerHandler.Proxy), ("echo", ListenerHandler.Echo)];
    private static readonly (string Name, LoadBalancingKind Value)[] s_balancers =
    [
        ("round_robin", LoadBalancingKind.RoundRobin), ("least_requests", LoadBalancingKind.LeastRequests),
        ("power_of_two", LoadBalancingKind.PowerOfTwo), ("random", LoadBalancingKind.Random),
    ];

    private const string NoListeners = "at least one listener is required ('listeners' is missing or empty)";

    private readonly ConfigErrorList _errors;

    private YamlConfigReader(ConfigErrorList errors) => _errors = errors;

    /// <summary>Parses <paramref name="yaml"/>; returns null only when the text is not valid YAML at all.</summary>
    public static ProxyConfig? Read(string yaml, ConfigErrorList errors)
    {
        if (!HideUnicodeBreaks(ref yaml, out string? standIns))
        {
            errors.Add(Mark.Start, "invalid YAML: the file holds NEL, LS or PS characters and too many private-use characters to read them safely");
            return null;
        }
        var parser = new TrackingParser(new Parser(new StringReader(yaml)), standIns);
        var stream = new YamlStream();
        try
        {
            stream.Load(parser);
        }
        catch (YamlException e)
        {
            errors.Add(Mark.From(e.Start), "invalid YAML: " + LowerFirst(e.Message.TrimEnd('.')));
            return null;
        }
        catch (InvalidOperationException)
        {
            // YamlDotNet fails this way on some truncated flow collections ("[1, 2" at the end of a
            // mapping); the last event it produced is the best position we have.
            errors.Add(parser.LastMark, "invalid YAML: the document cannot be parsed past this point (is a '[' or '{' left unclosed?)");
            return null;
        }

        if (stream.Documents.Count == 0)
        {
            errors.Add(Mark.Start, NoListeners);
            return new ProxyConfig();
        }
        if (stream.Documents.Count > 1)
        {
            errors.Add(Mark.From(stream.Documents[1].RootNode.Start), "only one YAML document is allowed per config file");
        }
        var root = stream.Documents[0].RootNode;
        if (IsNull(root))
        {
            errors.Add(Mark.Start, NoListeners);
            return new ProxyConfig();
        }
        return new YamlConfigReader(errors).ReadRoot(root);
    }

    private ProxyConfig ReadRoot(YamlNode node)
    {
        var map = Map(node, "the top level", s_rootKeys);
        if (map is null)
        {
            return new ProxyConfig();
        }
        var serverMap = map.Get("server") is { } s ? Map(s, "'server'", s_serverKeys) : null;
        var server = serverMap is null
            ? new ServerConfig()
            : new ServerConfig
            {
                ShutdownTimeout = Duration(serverMap, "shutdown_timeout"),
                MaxConnections = Int(serverMap, "max_connections", 1, int.MaxValue),
                WatchConfig = Bool(serverMap, "watch_config")?.Value,
            };

        var listeners = new List<ListenerConfig>();
        var listenersNode = map.Get("listeners");
        if (listenersNode is null || listenersNode is YamlSequenceNode { Children.Count: 0 })
        {
            _errors.Add(listenersNode is null ? map.Mark : Mark.From(listenersNode.Start), NoListeners);
        }
        foreach (var item in List(map, "listeners"))
        {
            if (ReadListener(item) is { } listener)
            {
                listeners.Add(listener);
            }
        }
        var routes = new List<RouteConfig>();
        foreach (var item in List(map, "routes"))
        {
            if (ReadRoute(item) is { } route)
            {
                routes.Add(route);
            }
        }
        var clusters = new List<ClusterConfig>();
        if (map.Get("clusters") is { } clustersNode && Map(clustersNode, "'clusters'", null) is { } clustersMap)
        {
            foreach (var (key, value) in clustersMap.Entries)
            {
                clusters.Add(ReadCluster(new Located<string>(key.Value ?? "", Mark.From(key.Start)), value));
            }
        }

        return new ProxyConfig
        {
            Server = server,
            Limits = ReadLimits(map.Get("limits")),
            Forwarded = map.Get("forwarded") is { } f ? ReadForwarded(f) : null,
            Listeners = listeners,
            Routes = routes,
            Clusters = clusters,
            Admin = map.Get("admin") is { } a ? ReadAdmin(a) : null,
            Policies = map.Get("policies") is { } p ? ReadPolicies(p) : [],
            Observability = ReadObservability(map),
        };
    }

    private List<PolicyConfig> ReadPolicies(YamlNode node)
    {
        var result = new List<PolicyConfig>();
        if (Map(node, "'policies'", null) is not { } policies)
        {
            return result;
        }
        foreach (var (key, value) in policies.Entries)
        {
            var name = new Located<string>(key.Value ?? "", Mark.From(key.Start));
            if (Map(value, $"policy '{name.Value}'", null) is not { } policy)
            {
                result.Add(new PolicyConfig { Name = name });
                continue;
            }
            if (policy.Entries.Count != 1)
            {
                _errors.Add(policy.Mark, $"policy '{name.Value}' must have exactly one key naming its kind (e.g. rate_limit or ip_filter), got {policy.Entries.Count}");
                result.Add(new PolicyConfig { Name = name });
                continue;
            }
            var (kindKey, settingsNode) = policy.Entries[0];
            var kind = new Located<string>(kindKey.Value ?? "", Mark.From(kindKey.Start));
            var settings = new List<PolicySettingConfig>();
            if (!IsNull(settingsNode) && Map(settingsNode, $"'{kind.Value}' of policy '{name.Value}'", null) is { } settingsMap)
            {
                foreach (var (settingKey, settingValue) in settingsMap.Entries)
                {
                    if (ReadPolicySetting(settingKey, settingValue, depth: 0) is { } setting)
                    {
                        settings.Add(setting);
                    }
                }
            }
            result.Add(new PolicyConfig { Name = name, Kind = kind, Settings = settings });
        }
        return result;
    }

    /// <summary>
    /// A policy setting: a scalar, a list of scalars, a map or a list of maps (nested at most two levels deep, which
    /// is what the built-in kinds use: <c>keys: [{ sha256: ..., consumer: ... }]</c>).
    /// </summary>
    private PolicySettingConfig? ReadPolicySetting(YamlScalarNode settingKey, YamlNode settingValue, int depth)
    {
        var located = new Located<string>(settingKey.Value ?? "", Mark.From(settingKey.Start));
        if (settingValue is YamlMappingNode && depth < 2 && Map(settingValue, $"'{located.Value}'", null) is { } nested)
        {
            var entries = new List<PolicySettingConfig>();
            foreach (var (k, v) in nested.Entries)
            {
                if (ReadPolicySetting(k, v, depth + 1) is { } entry)
                {
                    entries.Add(entry);
                }
            }
            return new PolicySettingConfig(located, null, null) { Map = entries };
        }
        if (settingValue is YamlSequenceNode sequence)
        {
            if (depth < 2 && sequence.Children.Count > 0 && sequence.Children.All(c => c is YamlMappingNode))
            {
                var maps = new List<PolicyMapItem>();
                foreach (var item in sequence.Children)
                {
                    if (Map(item, $"an item of '{located.Value}'", null) is { } itemMap)
                    {
                        var entries = new List<PolicySettingConfig>();
                        foreach (var (k, v) in itemMap.Entries)
                        {
                            if (ReadPolicySetting(k, v, depth + 1) is { } entry)
                            {
                                entries.Add(entry);
                            }
                        }
                        maps.Add(new PolicyMapItem(itemMap.Mark, entries));
                    }
                }
                return new PolicySettingConfig(located, null, null) { Maps = maps };
            }
            var items = new List<Located<string>>();
            foreach (var item in sequence.Children)
            {
                if (ScalarText(item, located.Value, "a list of strings") is { } text)
                {
                    items.Add(text);
                }
            }
            return new PolicySettingConfig(located, null, items);
        }
        return ScalarText(settingValue, located.Value, "a string or a list of strings") is { } scalar
            ? new PolicySettingConfig(located, scalar, null)
            : null;
    }

    private AdminConfig? ReadAdmin(YamlNode node)
    {
        if (Map(node, "'admin'", s_adminKeys) is not { } map)
        {
            return null;
        }
        return new AdminConfig
        {
            Mark = map.Mark,
            Address = RequiredString(map, "address", "'admin'"),
            // An empty token would silently mean "no authentication": RequiredString's emptiness check refuses it.
            Token = map.Has("token") ? RequiredString(map, "token", "'admin'") : null,
        };
    }

    private LimitsConfig ReadLimits(YamlNode? node)
    {
        if (node is null || Map(node, "'limits'", s_limitsKeys) is not { } map)
        {
            return new LimitsConfig();
        }
        return new LimitsConfig
        {
            MaxRequestLine = (int?)Size(map, "max_request_line", 1, int.MaxValue),
            MaxHeaderBytes = (int?)Size(map, "max_header_bytes", 1, int.MaxValue),
            MaxHeaders = Int(map, "max_headers", 1, int.MaxValue),
            MaxBodyBytes = Size(map, "max_body_bytes", 0, long.MaxValue),
            HeaderTimeout = Duration(map, "header_timeout"),
            KeepAliveTimeout = Duration(map, "keepalive_timeout"),
            BodyTimeout = Duration(map, "body_timeout"),
            MaxConnectionsPerIp = Int(map, "max_connections_per_ip", 1, int.MaxValue),
            MaxRequestsPerIp = Int(map, "max_requests_per_ip", 1, int.MaxValue),
            Http2 = map.Get("http2") is { } http2 ? ReadHttp2Limits(http2) : null,
        };
    }

    private Http2LimitsConfig? ReadHttp2Limits(YamlNode node)
    {
        if (Map(node, "'limits.http2'", s_http2LimitsKeys) is not { } map)
        {
            return null;
        }
        MapView? rapid = map.Get("rapid_reset") is { } rapidNode ? Map(rapidNode, "'rapid_reset'", s_rapidResetKeys) : null;
        return new Http2LimitsConfig
        {
            MaxConcurrentStreams = Int(map, "max_concurrent_streams", 1, 100_000),
            // RFC 9113 section 6.5.2: SETTINGS_MAX_FRAME_SIZE within [2^14, 2^24-1]; windows at most 2^31-1.
            MaxHeaderListSize = (int?)Size(map, "max_header_list_size", 1024, 16 * 1024 * 1024),
            InitialWindowSize = (int?)Size(map, "initial_window_size", 65_535, int.MaxValue),
            ConnectionWindowSize = (int?)Size(map, "connection_window_size", 65_535, int.MaxValue),
            MaxFrameSize = (int?)Size(map, "max_frame_size", 16_384, 16_777_215),
            RapidResetMax = rapid is null ? null : Int(rapid, "max", 1, int.MaxValue),
            RapidResetWindow = rapid is null ? null : Duration(rapid, "window"),
            MaxControlFramesPerSecond = Int(map, "max_control_frames_per_second", 1, int.MaxValue),
            SendStallTimeout = Duration(map, "send_stall_timeout"),
        };
    }

    private ForwardedConfig? ReadForwarded(YamlNode node)
    {
        if (Map(node, "'forwarded'", s_forwardedKeys) is not { } map)
        {
            return null;
        }
        return new ForwardedConfig
        {
            Mark = map.Mark,
            Mode = Enum(map, "mode", s_forwardedModes),
            TrustedNetworks = map.Get("trusted_networks") is null ? null : StringList(map, "trusted_networks"),
        };
    }

    private ListenerConfig? ReadListener(YamlNode node)
    {
        if (Map(node, "a listener", s_listenerKeys) is not { } map)
        {
            return null;
        }
        return new ListenerConfig
        {
            Mark = map.Mark,
            Name = RequiredString(map, "name", "listener"),
            Address = RequiredString(map, "address", "listener"),
            Handler = Enum(map, "handler", s_handlers)?.Value ?? ListenerHandler.Proxy,
            Limits = ReadLimits(map.Get("limits")),
            Forwarded = map.Get("forwarded") is { } f ? ReadForwarded(f) : null,
            Policies = StringList(map, "policies"),
            Public = Bool(map, "public"),
            DeferAccept = Bool(map, "defer_accept")?.Value ?? false,
            QuickAck = Bool(map, "quick_ack")?.Value ?? false,
            Tls = map.Get("tls") is { } t ? ReadListenerTls(t) : null,
        };
    }

    private ListenerTlsConfig? ReadListenerTls(YamlNode node)
    {
        if (Map(node, "'tls'", s_tlsKeys) is not { } map)
        {
            return null;
        }
        var certificates = new List<TlsCertificateConfig>();
        foreach (var item in List(map, "certificates"))
        {
            if (Map(item, "a certificate", s_tlsCertificateKeys) is { } c)
            {
                certificates.Add(new TlsCertificateConfig
                {
                    Mark = c.Mark,
                    Cert = RequiredString(c, "cert", "certificate"),
                    Key = RequiredString(c, "key", "certificate"),
                    Hosts = StringList(c, "hosts"),
                });
            }
        }
        ClientCertificatesConfig? clients = null;
        if (map.Get("client_certificates") is { } cc && Map(cc, "'client_certificates'", s_clientCertificateKeys) is { } ccMap)
        {
            clients = new ClientCertificatesConfig
            {
                Mark = ccMap.Mark,
                Mode = Enum(ccMap, "mode", s_clientCertificateModes),
                Ca = String(ccMap, "ca"),
                ForwardHeader = String(ccMap, "forward_header"),
            };
        }
        return new ListenerTlsConfig
        {
            Mark = map.Mark,
            Certificates = certificates,
            ClientCertificates = clients,
            HandshakeTimeout = Duration(map, "handshake_timeout"),
        };
    }

    private UpstreamTlsConfig? ReadUpstreamTls(YamlNode node)
    {
        if (Map(node, "'tls'", s_upstreamTlsKeys) is not { } map)
        {
            return null;
        }
        return new UpstreamTlsConfig
        {
            Mark = map.Mark,
            Sni = String(map, "sni"),
            Ca = String(map, "ca"),
            InsecureSkipVerify = Bool(map, "insecure_skip_verify")?.Value,
            ClientCert = String(map, "client_cert"),
            ClientKey = String(map, "client_key"),
        };
    }

    private RouteConfig? ReadRoute(YamlNode node)
    {
        if (Map(node, "a route", s_routeKeys) is not { } map)
        {
            return null;
        }
        return new RouteConfig
        {
            Mark = map.Mark,
            Id = RequiredString(map, "id", "route"),
            Listeners = StringList(map, "listeners"),
            Match = map.Get("match") is { } m ? ReadMatch(m) : new MatchConfig(),
            Cluster = String(map, "cluster"),
            Respond = map.Get("respond") is { } r ? ReadRespond(r) : null,
            Policies = StringList(map, "policies"),
            AllowAnonymous = Bool(map, "allow_anonymous"),
            Clusters = WeightedClusters(map),
            ClustersMark = map.Get("clusters") is { } cs ? Mark.From(cs.Start) : map.Mark,
            Canary = map.Get("canary") is { } canary ? ReadCanary(canary) : null,
            RequestTimeout = Duration(map, "request_timeout"),
            ResponseTimeout = Duration(map, "response_timeout"),
            StreamIdleTimeout = Duration(map, "stream_idle_timeout"),
            RetryNonIdempotent = Bool(map, "retry_non_idempotent"),
            IgnoreClientAbort = Bool(map, "ignore_client_abort"),
            Rewrite = map.Get("rewrite") is { } rewrite ? ReadRewrite(rewrite) : null,
        };
    }

    private RewriteConfig? ReadRewrite(YamlNode node)
    {
        if (Map(node, "'rewrite'", s_rewriteKeys) is not { } map)
        {
            return null;
        }
        return new RewriteConfig { Mark = map.Mark, Path = RequiredString(map, "path", "'rewrite'") };
    }

    /// <summary>A route's <c>clusters:</c>: entries <c>{ name, weight }</c> or a bare name (weight 1).</summary>
    private List<WeightedClusterConfig> WeightedClusters(MapView map)
    {
        var result = new List<WeightedClusterConfig>();
        foreach (var item in List(map, "clusters"))
        {
            if (item is YamlScalarNode scalar && !IsNull(scalar))
            {
                result.Add(new WeightedClusterConfig
                {
                    Mark = Mark.From(scalar.Start),
                    Name = new Located<string>(scalar.Value ?? "", Mark.From(scalar.Start)),
                });
            }
            else if (Map(item, "a weighted cluster (a map { name, weight } or a name)", s_weightedClusterKeys) is { } m)
            {
                result.Add(new WeightedClusterConfig
                {
                    Mark = m.Mark,
                    Name = RequiredString(m, "name", "a weighted cluster"),
                    Weight = Int(m, "weight", 0, 1_000_000) ?? 1,
                });
            }
        }
        return result;
    }

    private CanaryConfig? ReadCanary(YamlNode node)
    {
        if (Map(node, "'canary'", s_canaryKeys) is not { } map)
        {
            return null;
        }
        FieldMatchConfig? Field(string key)
        {
            if (map.Get(key) is not { } n || Map(n, $"'{key}' of 'canary'", s_fieldMatchKeys) is not { } m)
            {
                return null;
            }
            return new FieldMatchConfig { Mark = m.Mark, Name = RequiredString(m, "name", $"'{key}' of 'canary'"), Value = String(m, "value") };
        }
        return new CanaryConfig
        {
            Mark = map.Mark,
            Cluster = RequiredString(map, "cluster", "'canary'"),
            Header = Field("header"),
            Cookie = Field("cookie"),
        };
    }

    private MatchConfig ReadMatch(YamlNode node)
    {
        if (Map(node, "'match'", s_matchKeys) is not { } map)
        {
            return new MatchConfig();
        }
        // An empty list would read as "none" but mean "any" (an absent predicate), like ip_filter's 'allow: []'.
        foreach (var (key, what) in s_anyWhenOmitted)
        {
            if (map.Get(key) is YamlSequenceNode { Children.Count: 0 } empty)
            {
                _errors.Add(Mark.From(empty.Start), $"match '{key}' is an empty list, which reads as \"none\" but would mean {what}; omit '{key}' to match {what}");
            }
        }
        return new MatchConfig
        {
            Path = String(map, "path"),
            Hosts = StringList(map, "hosts"),
            Methods = StringList(map, "methods"),
            Headers = FieldMatches(map, "headers", "a header match"),
            Query = FieldMatches(map, "query", "a query match"),
        };
    }

    private List<FieldMatchConfig> FieldMatches(MapView map, string key, string what)
    {
        var result = new List<FieldMatchConfig>();
        foreach (var item in List(map, key))
        {
            if (Map(item, what, s_fieldMatchKeys) is { } m)
            {
                result.Add(new FieldMatchConfig
                {
                    Mark = m.Mark,
                    Name = RequiredString(m, "name", what[2..]),
                    Value = String(m, "value"),
                    Present = Bool(m, "present"),
                });
            }
        }
        return result;
    }

    private RespondConfig? ReadRespond(YamlNode node)
    {
        if (Map(node, "'respond'", s_respondKeys) is not { } map)
        {
            return null;
        }
        var headers = new List<(Located<string>, Located<string>)>();
        if (map.Get("headers") is { } h && Map(h, "'headers'", null) is { } headerMap)
        {
            foreach (var (key, value) in headerMap.Entries)
            {
                if (ScalarText(value, key.Value ?? "", "a string") is { } v)
                {
                    headers.Add((new Located<string>(key.Value ?? "", Mark.From(key.Start)), v));
                }
            }
        }
        var statusNode = map.Get("status");
        return new RespondConfig
        {
            Mark = map.Mark,
            Status = Int(map, "status", 200, 599) ?? 200,
            StatusMark = statusNode is null ? map.Mark : Mark.From(statusNode.Start),
            Body = String(map, "body")?.Value ?? "",
            Headers = headers,
        };
    }

    private ClusterConfig ReadCluster(Located<string> name, YamlNode node)
    {
        if (Map(node, $"cluster '{name.Value}'", s_clusterKeys) is not { } map)
        {
            return new ClusterConfig { Name = name };
        }
        var destinations = new List<DestinationConfig>();
        if (map.Get("destinations") is null)
        {
            _errors.Add(map.Mark, $"cluster '{name.Value}' is missing required key 'destinations'");
        }
        var items = List(map, "destinations");
        if (items.Count == 0 && map.Get("destinations") is YamlSequenceNode empty)
        {
            _errors.Add(Mark.From(empty.Start), $"cluster '{name.Value}' has no destinations; list at least one");
        }
        foreach (var item in items)
        {
            if (ReadDestination(item) is { } d)
            {
                destinations.Add(d);
            }
        }
        return new ClusterConfig
        {
            Name = name,
            LoadBalancing = Enum(map, "load_balancing", s_balancers)?.Value ?? LoadBalancingKind.RoundRobin,
            Destinations = destinations,
            ConnectTimeout = Duration(map, "connect_timeout"),
            RequestTimeout = Duration(map, "request_timeout"),
            ResponseTimeout = Duration(map, "response_timeout"),
            StreamIdleTimeout = Duration(map, "stream_idle_timeout"),
            TunnelIdleTimeout = Duration(map, "tunnel_idle_timeout"),
            MaxConnections = Int(map, "max_connections", 1, int.MaxValue),
            IdleTimeout = Duration(map, "idle_timeout"),
            HealthCheck = map.Get("health_check") is { } h ? ReadHealthCheck(h) : null,
            OutlierDetection = map.Get("outlier_detection") is { } o ? ReadOutlierDetection(o) : null,
            Retry = map.Get("retry") is { } r ? ReadRetry(r) : null,
            CircuitBreaker = map.Get("circuit_breaker") is { } c ? ReadCircuitBreaker(c) : null,
            PanicMode = Bool(map, "panic_mode")?.Value,
            Tls = map.Get("tls") is { } t ? ReadUpstreamTls(t) : null,
            SessionAffinity = map.Get("session_affinity") is { } a ? ReadSessionAffinity(a) : null,
            Protocol = Enum(map, "protocol", s_upstreamProtocols),
            Http2MaxStreams = map.Get("http2") is { } h2 && Map(h2, "'http2'", s_clusterHttp2Keys) is { } http2
                ? Int(http2, "max_streams_per_connection", 1, 10_000) : null,
        };
    }

    private SessionAffinityConfig? ReadSessionAffinity(YamlNode node)
    {
        if (Map(node, "'session_affinity'", s_affinityKeys) is not { } map)
        {
            return null;
        }
        return new SessionAffinityConfig
        {
            Mark = map.Mark,
            Mode = Enum(map, "mode", s_affinityModes)?.Value ?? AffinityMode.Cookie,
            Name = String(map, "name"),
            // A cookie's Max-Age: no timer waits it, so a month is fine.
            Ttl = Duration(map, "ttl", timed: false),
        };
    }

    private HealthCheckConfig? ReadHealthCheck(YamlNode node)
    {
        if (Map(node, "'health_check'", s_healthCheckKeys) is not { } map)
        {
            return null;
        }
        return new HealthCheckConfig
        {
            Mark = map.Mark,
            Path = String(map, "path"),
            Interval = LocatedDuration(map, "interval"),
            Timeout = LocatedDuration(map, "timeout"),
            HealthyThreshold = Int(map, "healthy_threshold", 1, 1000),
            UnhealthyThreshold = Int(map, "unhealthy_threshold", 1, 1000),
            ExpectedStatuses = map.Has("expected_statuses") ? ExpectedStatuses(map) : null,
        };
    }

    /// <summary><c>expected_statuses: [200, 204, 3xx]</c>: status codes (100..599) or whole classes.</summary>
    private (int Low, int High)[]? ExpectedStatuses(MapView map)
    {
        var ranges = new List<(int, int)>();
        bool bad = false;
        foreach (var item in StringList(map, "expected_statuses"))
        {
            string text = item.Value;
            if (text.Length == 3 && text[0] is >= '1' and <= '5' && (text.EndsWith("xx", StringComparison.OrdinalIgnoreCase)))
            {
                int low = (text[0] - '0') * 100;
                ranges.Add((low, low + 99));
            }
            else if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int code)
                && code is >= 100 and <= 599)
            {
                ranges.Add((code, code));
            }
            else
            {
                _errors.Add(item.Mark, $"expected_statuses entries are status codes (100..599) or classes (2xx), got '{text}'");
                bad = true;
            }
        }
        if (ranges.Count == 0)
        {
            if (bad)
            {
                return null;
            }
            _errors.Add(map.KeyMark("expected_statuses"), "expected_statuses must list at least one status (leave it out for 2xx)");
            return null;
        }
        return [.. ranges];
    }

    private OutlierDetectionConfig? ReadOutlierDetection(YamlNode node)
    {
        if (Map(node, "'outlier_detection'", s_outlierKeys) is not { } map)
        {
            return null;
        }
        return new OutlierDetectionConfig
        {
            Mark = map.Mark,
            ConsecutiveFailures = Int(map, "consecutive_failures", 1, 1000),
            BaseEjection = Duration(map, "base_ejection"),
            MaxEjectionPercent = Int(map, "max_ejection_percent", 0, 100),
        };
    }

    private RetryConfig? ReadRetry(YamlNode node)
    {
        if (Map(node, "'retry'", s_retryKeys) is not { } map)
        {
            return null;
        }
        RetryOn? on = null;
        if (map.Get("on") is not null)
        {
            var flags = RetryOn.None;
            foreach (var item in StringList(map, "on"))
            {
                var names = s_retryConditions.Select(c => c.Name).ToArray();
                int index = Array.IndexOf(names, item.Value);
                if (index < 0)
                {
                    var near = ConfigErrorList.Nearest(item.Value, names);
                    _errors.Add(item.Mark, $"unknown retry condition '{item.Value}'"
                        + (near is null ? "" : $"; did you mean '{near}'?") + $" (expected one of: {string.Join(", ", names)})");
                    continue;
                }
                flags |= s_retryConditions[index].Value;
            }
            on = flags;
        }
        Located<TimeSpan>? backoffBase = null, backoffMax = null;
        if (map.Get("backoff") is { } b && Map(b, "'backoff'", s_backoffKeys) is { } backoff)
        {
            backoffBase = LocatedDuration(backoff, "base");
            backoffMax = LocatedDuration(backoff, "max");
        }
        return new RetryConfig
        {
            Mark = map.Mark,
            Attempts = Int(map, "attempts", 0, 10),
            On = on,
            BackoffBase = backoffBase,
            BackoffMax = backoffMax,
            BudgetPercent = Int(map, "budget_percent", 0, 100),
            PerTryTimeout = Duration(map, "per_try_timeout"),
            NonIdempotent = Bool(map, "non_idempotent")?.Value,
            MaxReplayBodyBytes = Size(map, "max_replay_body_bytes", 0, RetryModel.MaxReplayBodyLimit),
        };
    }

    private CircuitBreakerConfig? ReadCircuitBreaker(YamlNode node)
    {
        if (Map(node, "'circuit_breaker'", s_circuitBreakerKeys) is not { } map)
        {
            return null;
        }
        return new CircuitBreakerConfig
        {
            Mark = map.Mark,
            MaxConnections = Int(map, "max_connections", 1, int.MaxValue),
            // At least 1: a request waiting for a new connection counts as pending, so 0 would refuse every request
            // that finds no idle connection, the first ones included, and the cluster would never serve.
            MaxPending = Int(map, "max_pending", 1, int.MaxValue),
            MaxRequests = Int(map, "max_requests", 1, int.MaxValue),
        };
    }

    private Located<TimeSpan>? LocatedDuration(MapView map, string key)
        => Duration(map, key) is { } d ? new Located<TimeSpan>(d, Mark.From(map.Get(key)!.Start)) : null;

    private DestinationConfig? ReadDestination(YamlNode node)
    {
        // Shorthand: a destination may be just its URL.
        if (node is YamlScalarNode scalar && !IsNull(scalar))
        {
            return new DestinationConfig { Address = new Located<string>(scalar.Value ?? "", Mark.From(scalar.Start)) };
        }
        if (Map(node, "a destination (a map or a URL)", s_destinationKeys) is not { } map)
        {
            return null;
        }
        return RequiredString(map, "address", "destination") is { } address
            ? new DestinationConfig { Address = address, Weight = Int(map, "weight", 1, 1_000_000) ?? 1 }
            : null;
    }

    // ---- typed accessors: each reports its own error and returns null so reading goes on ----

    /// <summary>A mapping with its unknown keys already reported; null (after an error) when the node is not a map.</summary>
    private MapView? Map(YamlNode node, string what, string[]? knownKeys)
    {
        if (node is not YamlMappingNode mapping)
        {
            _errors.Add(Mark.From(node.Start), $"expected a map for {what}, got {Describe(node)}");
            return null;
        }
        var view = new MapView(Mark.From(mapping.Start));
        foreach (var (keyNode, value) in mapping.Children)
        {
            if (keyNode is not YamlScalarNode key || key.Value is null)
            {
                _errors.Add(Mark.From(keyNode.Start), $"keys in {what} must be plain strings");
                continue;
            }
            if (knownKeys is not null && Array.IndexOf(knownKeys, key.Value) < 0)
            {
                var near = ConfigErrorList.Nearest(key.Value, knownKeys);
                _errors.Add(Mark.From(key.Start), near is null
                    ? $"unknown key '{key.Value}' in {what} (expected one of: {string.Join(", ", knownKeys)})"
                    : $"unknown key '{key.Value}' in {what}; did you mean '{near}'?");
                continue;
            }
            view.Entries.Add((key, value));
        }
        return view;
    }

    private IReadOnlyList<YamlNode> List(MapView map, string key)
    {
        var node = map.Get(key);
        if (node is null)
        {
            return [];
        }
        if (node is not YamlSequenceNode sequence)
        {
            _errors.Add(Mark.From(node.Start), $"expected a list for '{key}', got {Describe(node)}");
            return [];
        }
        return sequence.Children.ToArray();
    }

    private List<Located<string>> StringList(MapView map, string key)
    {
        var result = new List<Located<string>>();
        foreach (var item in List(map, key))
        {
            if (ScalarText(item, key, "a list of strings") is { } s)
            {
                result.Add(s);
            }
        }
        return result;
    }

    private Located<string>? String(MapView map, string key)
        => map.Get(key) is { } node ? ScalarText(node, key, "a string") : null;

    private Located<string>? RequiredString(MapView map, string key, string owner)
    {
        if (!map.Has(key))
        {
            _errors.Add(map.Mark, $"{owner} is missing required key '{key}'");
            return null;
        }
        var node = map.Get(key);
        if (node is null)
        {
            _errors.Add(map.KeyMark(key), $"'{key}' needs a value");
            return null;
        }
        var value = ScalarText(node, key, "a string");
        if (value is { Value.Length: 0 })
        {
            _errors.Add(value.Value.Mark, $"'{key}' must not be empty");
            return null;
        }
        return value;
    }

    private Located<string>? ScalarText(YamlNode node, string key, string expected)
    {
        if (node is YamlScalarNode scalar)
        {
            return new Located<string>(scalar.Value ?? "", Mark.From(scalar.Start));
        }
        _errors.Add(Mark.From(node.Start), $"expected {expected} for '{key}', got {Describe(node)}");
        return null;
    }

    private int? Int(MapView map, string key, int min, int max)
    {
        if (map.Get(key) is not { } node || ScalarText(node, key, "a number") is not { } text)
        {
            return null;
        }
        if (!text.Value.All(c => char.IsAsciiDigit(c) || c == '-')
            || !long.TryParse(text.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long n))
        {
            _errors.Add(text.Mark, $"expected a whole number for '{key}', got '{text.Value}'");
            return null;
        }
        if (n < min || n > max)
        {
            _errors.Add(text.Mark, max == int.MaxValue
                ? $"'{key}' must be at least {min}, got {n}"
                : $"'{key}' must be between {min} and {max}, got {n}");
            return null;
        }
        return (int)n;
    }

    private long? Size(MapView map, string key, long min, long max)
    {
        if (map.Get(key) is not { } node || ScalarText(node, key, "a size") is not { } text)
        {
            return null;
        }
        if (!ConfigValues.TryParseSize(text.Value, out long bytes))
        {
            _errors.Add(text.Mark, $"expected a size for '{key}' (bytes, or with a unit: B, KB, MB, GB, KiB, MiB, GiB, e.g. 8KiB), got '{text.Value}'");
            return null;
        }
        if (bytes < min || bytes > max)
        {
            _errors.Add(text.Mark, bytes < min ? $"'{key}' must be at least {min} bytes" : $"'{key}' is too large (at most {max} bytes)");
            return null;
        }
        return bytes;
    }

    /// <summary>A positive duration; at most <see cref="ConfigValues.MaxDuration"/> unless <paramref name="timed"/> is false (no timer waits it).</summary>
    private TimeSpan? Duration(MapView map, string key, bool timed = true)
    {
        if (map.Get(key) is not { } node || ScalarText(node, key, "a duration") is not { } text)
        {
            return null;
        }
        if (!ConfigValues.TryParseDuration(text.Value, out var duration))
        {
            _errors.Add(text.Mark, text.Value.All(char.IsAsciiDigit) && text.Value.Length > 0
                ? $"expected a duration for '{key}', got '{text.Value}': add a unit (ms, s, m or h), e.g. {text.Value}s"
                : $"expected a duration for '{key}' (a number with ms, s, m or h, e.g. 500ms, 2s, 1m), got '{text.Value}'");
            return null;
        }
        if (duration <= TimeSpan.Zero)
        {
            _errors.Add(text.Mark, $"'{key}' must be a positive duration, got '{text.Value}'");
            return null;
        }
        if (timed && duration > ConfigValues.MaxDuration)
        {
            _errors.Add(text.Mark, $"'{key}' is too long (at most 576h, 24 days: the runtime's timers wait no longer), got '{text.Value}'");
            return null;
        }
        return duration;
    }

    private Located<bool>? Bool(MapView map, string key)
    {
        if (map.Get(key) is not { } node || ScalarText(node, key, "true or false") is not { } text)
        {
            return null;
        }
        if (string.Equals(text.Value, "true", StringComparison.OrdinalIgnoreCase))
        {
            return new Located<bool>(true, text.Mark);
        }
        if (string.Equals(text.Value, "false", StringComparison.OrdinalIgnoreCase))
        {
            return new Located<bool>(false, text.Mark);
        }
        _errors.Add(text.Mark, $"expected true or false for '{key}', got '{text.Value}'");
        return null;
    }

    private Located<T>? Enum<T>(MapView map, string key, (string Name, T Value)[] table)
        where T : struct
    {
        if (map.Get(key) is not { } node || ScalarText(node, key, "a string") is not { } text)
        {
            return null;
        }
        foreach (var (name, value) in table)
        {
            if (name == text.Value)
            {
                return new Located<T>(value, text.Mark);
            }
        }
        var names = table.Select(t => t.Name).ToArray();
        var near = ConfigErrorList.Nearest(text.Value, names);
        _errors.Add(text.Mark, $"unknown {key} '{text.Value}'"
            + (near is null ? $"; expected one of: {string.Join(", ", names)}" : $"; did you mean '{near}'? (expected one of: {string.Join(", ", names)})"));
        return null;
    }

    private static bool IsNull(YamlNode node)
        => node is YamlScalarNode { Style: ScalarStyle.Plain or ScalarStyle.Any } s
           && (string.IsNullOrEmpty(s.Value) || s.Value is "~" or "null" or "Null" or "NULL");

    private static string Describe(YamlNode node) => node switch
    {
        YamlMappingNode => "a map",
        YamlSequenceNode => "a list",
        YamlScalarNode s when IsNull(s) => "nothing",
        YamlScalarNode s => $"'{s.Value}'",
        _ => "something else",
    };

    private static string LowerFirst(string s) => s.Length == 0 ? s : char.ToLowerInvariant(s[0]) + s[1..];

    /// <summary>The known keys of one mapping, in file order; a key whose value is YAML null reads as absent.</summary>
    private sealed class MapView(Mark mark)
    {
        public Mark Mark { get; } = mark;
        public List<(YamlScalarNode Key, YamlNode Value)> Entries { get; } = [];

        public bool Has(string key) => Entries.Exists(e => e.Key.Value == key);

        public YamlNode? Get(string key)
        {
            foreach (var (k, v) in Entries)
            {
                if (k.Value == key)
                {
                    return IsNull(v) ? null : v;
                }
            }
            return null;
        }

        public Mark KeyMark(string key)
        {
            foreach (var (k, _) in Entries)
            {
                if (k.Value == key)
                {
                    return Mark.From(k.Start);
                }
            }
            return Mark;
        }
    }

    // YAML 1.2 section 5.4: the only line breaks are CR and LF; NEL (U+0085), LS (U+2028) and PS (U+2029) are ordinary
    // characters ("YAML 1.2 processors parsing a version 1.1 document should therefore treat these line breaks as
    // non-break characters"). YamlDotNet scans as YAML 1.1 did, with no option to change it: a comment ended at them and
    // the rest of the comment was read as config (text an editor shows as one comment line could add a listener), a
    // scalar was folded there, and every later line number was off by one. So before the scan each of them is swapped
    // for a stand-in, a private-use character that is neither in the text nor reachable by an escape ("\uE000" needs
    // the digits E000 in the text); comments then end at CR/LF only, lines and columns are those an editor shows, and
    // TrackingParser puts the characters back into scalar values.
    private static readonly char[] s_unicodeBreaks = ['\u0085', '\u2028', '\u2029'];

    /// <summary>
    /// Replaces NEL, LS and PS by stand-ins; <paramref name="standIns"/> holds them in <see cref="s_unicodeBreaks"/>
    /// order, null when the text has none of the three. False only when no stand-ins can be found.
    /// </summary>
    private static bool HideUnicodeBreaks(ref string yaml, out string? standIns)
    {
        standIns = null;
        if (yaml.AsSpan().IndexOfAny(s_unicodeBreaks) < 0)
        {
            return true;
        }
        Span<char> chosen = stackalloc char[s_unicodeBreaks.Length];
        int found = 0;
        for (char c = '\uE000'; c <= '\uF8FF' && found < chosen.Length; c++)
        {
            if (!yaml.Contains(c) && !yaml.Contains(((int)c).ToString("X4", CultureInfo.InvariantCulture), StringComparison.OrdinalIgnoreCase))
            {
                chosen[found++] = c;
            }
        }
        if (found < chosen.Length)
        {
            return false;
        }
        standIns = new string(chosen);
        for (int i = 0; i < s_unicodeBreaks.Length; i++)
        {
            yaml = yaml.Replace(s_unicodeBreaks[i], standIns[i]);
        }
        return true;
    }

    /// <summary>
    /// Remembers the last event's position (for errors YamlDotNet raises without one), puts NEL, LS and PS back into
    /// scalars (see <see cref="HideUnicodeBreaks"/>), and stops a document nested deeper than <see cref="MaxDepth"/>: the
    /// representation model is built recursively, so a file of a few hundred KB of "- - - ..." or "[[[..." overflowed
    /// the stack and ended the process, which on a hot reload was the running proxy. No config needs a tenth of it.
    /// </summary>
    private sealed class TrackingParser(IParser inner, string? standIns) : IParser
    {
        public const int MaxDepth = 64;
        private int _depth;
        private ParsingEvent? _restored;

        public Mark LastMark { get; private set; } = Mark.Start;

        public ParsingEvent? Current => _restored ?? inner.Current;

        public bool MoveNext()
        {
            _restored = null;
            bool moved = inner.MoveNext();
            if (inner.Current is not { } e)
            {
                return moved;
            }
            LastMark = Mark.From(e.Start);
            if (standIns is not null && e is Scalar scalar && scalar.Value.AsSpan().IndexOfAny(standIns) >= 0)
            {
                string value = scalar.Value;
                for (int i = 0; i < standIns.Length; i++)
                {
                    value = value.Replace(standIns[i], s_unicodeBreaks[i]);
                }
                _restored = new Scalar(scalar.Anchor, scalar.Tag, value, scalar.Style, scalar.IsPlainImplicit, scalar.IsQuotedImplicit,
                    scalar.Start, scalar.End, scalar.IsKey);
            }
            if (e is MappingStart or SequenceStart)
            {
                if (++_depth > MaxDepth)
                {
                    throw new YamlException(e.Start, e.End, $"collections nested deeper than {MaxDepth} levels");
                }
            }
            else if (e is MappingEnd or SequenceEnd)
            {
                _depth--;
            }
            return moved;
        }
    }
}
