using System.Net;
using Proxy.Model;
using Proxy.Routing;

namespace Proxy.Configuration;

/// <summary>
/// Checks what the YAML reader cannot: uniqueness, references between sections, address and pattern
/// syntax, and routes that can never be reached. Reports every problem it finds; the compiler runs only
/// when this adds nothing.
/// </summary>
internal static class ConfigValidator
{
    /// <summary>A listener mask is a <see cref="ulong"/>: bit i is listener i.</summary>
    public const int MaxListeners = 64;

    /// <summary>
    /// The most a route's <c>clusters:</c> weights, or a cluster's destination weights, may add up to: the draws and
    /// running sums (<see cref="WeightedClustersModel"/>, <c>WeightTable</c>) are 32-bit. Each weight is at most
    /// 1,000,000, so only a list of more than 2,147 of them can pass it.
    /// </summary>
    public const long MaxWeightSum = int.MaxValue;

    /// <summary>Set by the proxy itself on a direct response, so the config must not set them.</summary>
    private static readonly string[] s_reservedResponseHeaders = ["content-length", "transfer-encoding", "connection"];

    public static void Validate(ProxyConfig config, ConfigErrorList errors)
    {
        ValidateForwarded(config.Forwarded, inherited: null, errors);
        var listenersByName = ValidateListeners(config, errors);
        var clusterNames = ValidateClusters(config, errors);
        ValidateRoutes(config, listenersByName, clusterNames, errors);
        PolicyCompiler.Validate(config, errors);
    }

    private static Dictionary<string, (int Index, ListenerConfig Listener)> ValidateListeners(ProxyConfig config, ConfigErrorList errors)
    {
        var byName = new Dictionary<string, (int, ListenerConfig)>(StringComparer.Ordinal);
        var bound = new List<(IPEndPoint EndPoint, ListenerConfig Listener)>();
        for (int i = 0; i < config.Listeners.Count; i++)
        {
            var listener = config.Listeners[i];
            if (i == MaxListeners)
            {
                errors.Add(listener.Mark, $"too many listeners: at most {MaxListeners} are supported");
            }
            if (listener.Name is { } name)
            {
                if (byName.TryGetValue(name.Value, out var first))
                {
                    errors.Add(name.Mark, $"duplicate listener name '{name.Value}' (first defined at line {first.Item2.Name!.Value.Mark.Line})");
                }
                else
                {
                    byName.Add(name.Value, (i, listener));
                }
            }
            if (listener.Address is { } address)
            {
                if (!ConfigSyntax.TryParseListenerAddress(address.Value, out var endPoint, out var error))
                {
                    errors.Add(address.Mark, error);
                }
                else if (endPoint.Port != 0)
                {
                    // Port 0 asks the OS for a fresh port each time, so several such listeners never clash.
                    if (FindClash(endPoint, bound) is var (otherName, otherLine, same))
                    {
                        errors.Add(address.Mark, same
                            ? $"duplicate listener address '{address.Value}': already used by listener '{otherName}' (line {otherLine})"
                            : $"listener address '{address.Value}' overlaps listener '{otherName}' (line {otherLine}): a wildcard address takes the port on every interface");
                    }
                    bound.Add((endPoint, listener));
                }
            }
            if (listener.Forwarded is { } forwarded)
            {
                ValidateForwarded(forwarded, config.Forwarded, errors);
            }
            if (listener.Tls is { } tls)
            {
                Proxy.Transport.Tls.TlsConfigCompiler.ValidateListener(tls, config.BaseDirectory, errors);
            }
            if (config.Admin is not null && listener.Name is { Value: AdminModel.ListenerName } reserved)
            {
                errors.Add(reserved.Mark, $"listener name '{AdminModel.ListenerName}' is reserved for the admin API's listener when an 'admin' block is present");
            }
        }
        if (config.Admin is { } admin)
        {
            ValidateAdmin(admin, bound, errors);
        }
        return byName;
    }

    /// <summary>
    /// The first bound listener that takes the same port and family as <paramref name="endPoint"/>: on the same
    /// address (<c>Same</c>), or where either side is a wildcard address.
    /// </summary>
    private static (string Name, int Line, bool Same)? FindClash(IPEndPoint endPoint, List<(IPEndPoint EndPoint, ListenerConfig Listener)> bound)
    {
        foreach (var (other, otherListener) in bound)
        {
            if (other.Port != endPoint.Port || other.AddressFamily != endPoint.AddressFamily)
            {
                continue;
            }
            bool same = other.Address.Equals(endPoint.Address);
            if (same || IsAny(other.Address) || IsAny(endPoint.Address))
            {
                return (otherListener.Name?.Value ?? "?", otherListener.Address!.Value.Mark.Line, same);
            }
        }
        return null;
    }

    private static void ValidateAdmin(AdminConfig admin, List<(IPEndPoint EndPoint, ListenerConfig Listener)> bound, ConfigErrorList errors)
    {
        if (admin.Address is { } address)
        {
            if (!ConfigSyntax.TryParseListenerAddress(address.Value, out var endPoint, out var error))
            {
                errors.Add(address.Mark, "admin " + error);
            }
            else if (endPoint.Port != 0 && FindClash(endPoint, bound) is var (otherName, otherLine, same))
            {
                errors.Add(address.Mark, same
                    ? $"admin address '{address.Value}' is already used by listener '{otherName}' (line {otherLine})"
                    : $"admin address '{address.Value}' overlaps listener '{otherName}' (line {otherLine}): a wildcard address takes the port on every interface");
            }
        }
        if (admin.Token is { } token && !IsBearerToken(token.Value))
        {
            // Not echoed back: the value is a secret.
            errors.Add(token.Mark, "admin token must be a bearer token (RFC 6750 section 2.1: letters, digits and -._~+/, optionally ending in '=')");
        }
    }

    /// <summary>RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".</summary>
    internal static bool IsBearerToken(string value)
    {
        int i = 0;
        while (i < value.Length && (char.IsAsciiLetterOrDigit(value[i]) || value[i] is '-' or '.' or '_' or '~' or '+' or '/'))
        {
            i++;
        }
        if (i == 0)
        {
            return false;
        }
        while (i < value.Length && value[i] == '=')
        {
            i++;
        }
        return i == value.Length;
    }

    private static void ValidateForwarded(ForwardedConfig? forwarded, ForwardedConfig? inherited, ConfigErrorList errors)
    {
        if (forwarded is null)
        {
            return;
        }
        foreach (var network in forwarded.TrustedNetworks ?? [])
        {
            if (!ConfigSyntax.TryParseCidr(network.Value, out _, out var error))
            {
                errors.Add(network.Mark, error);
            }
        }
        var (mode, networks) = ConfigCompiler.MergeForwarded(inherited, forwarded);
        if (mode == ForwardedMode.Trust && networks.Count == 0)
        {
            errors.Add(forwarded.Mode?.Mark ?? forwarded.Mark, "forwarded mode 'trust' needs a non-empty 'trusted_networks' list");
        }
    }

    private static HashSet<string> ValidateClusters(ProxyConfig config, ConfigErrorList errors)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var cluster in config.Clusters)
        {
            names.Add(cluster.Name.Value);
            if (cluster.Name.Value.Length == 0)
            {
                // Routes, metrics and logs name the cluster: an empty name is a slip (a YAML "" key), not a choice.
                errors.Add(cluster.Name.Mark, "cluster name must not be empty");
            }
            long totalWeight = 0;
            foreach (var destination in cluster.Destinations)
            {
                if (!ConfigSyntax.TryParseDestination(destination.Address.Value, out _, out _, out var error))
                {
                    errors.Add(destination.Address.Mark, error);
                }
                totalWeight += destination.Weight;
            }
            if (totalWeight > MaxWeightSum)
            {
                errors.Add(cluster.Name.Mark, $"cluster '{cluster.Name.Value}': the weights of its destinations add up to {totalWeight}, more than {MaxWeightSum}; scale them down (only their ratios matter)");
            }
            ValidateResilience(cluster, errors);
            if (cluster.SessionAffinity is { Name: { } affinityName } && !ConfigSyntax.IsToken(affinityName.Value))
            {
                errors.Add(affinityName.Mark, $"session_affinity 'name' must be a token (RFC 9110 section 5.6.2, RFC 6265 section 4.1.1), got '{affinityName.Value}'");
            }
            Proxy.Transport.Tls.TlsConfigCompiler.ValidateCluster(cluster, config.BaseDirectory, errors);
            ValidateProtocol(cluster, errors);
        }
        return names;
    }

    /// <summary>
    /// h2 is HTTP/2 over TLS only (ALPN), h2c cleartext only (prior knowledge): a destination of the other scheme
    /// could never be reached, so it is a configuration error rather than a run-time 502 (docs/http2.md).
    /// </summary>
    private static void ValidateProtocol(ClusterConfig cluster, ConfigErrorList errors)
    {
        if (cluster.Protocol is not { } protocol)
        {
            return;
        }
        foreach (var destination in cluster.Destinations)
        {
            bool secure = ConfigSyntax.IsSecureDestination(destination.Address.Value);
            if (protocol.Value == Proxy.Upstream.UpstreamProtocol.H2 && !secure)
            {
                errors.Add(destination.Address.Mark, $"cluster '{cluster.Name.Value}' has protocol h2 (HTTP/2 over TLS) but destination '{destination.Address.Value}' is not https://; use protocol h2c for cleartext HTTP/2");
            }
            else if (protocol.Value == Proxy.Upstream.UpstreamProtocol.H2c && secure)
            {
                errors.Add(destination.Address.Mark, $"cluster '{cluster.Name.Value}' has protocol h2c (cleartext HTTP/2) but destination '{destination.Address.Value}' is https://; use protocol h2 for HTTP/2 over TLS");
            }
        }
    }

    /// <summary>
    /// Types and ranges were checked by the reader; this checks what needs two keys or the text of one: a probe
    /// path that can go on a request line, a timeout within its interval, a backoff base within its max.
    /// </summary>
    private static void ValidateResilience(ClusterConfig cluster, ConfigErrorList errors)
    {
        if (cluster.HealthCheck is { } check)
        {
            if (check.Path is { } path
                && (!path.Value.StartsWith('/') || path.Value.Any(c => c <= ' ' || c >= 0x7F)))
            {
                errors.Add(path.Mark, $"health_check 'path' must start with '/' and contain only visible ASCII characters (RFC 9112 section 3.2), got '{path.Value}'");
            }
            if (check.Interval is { } interval && check.Timeout is { } timeout && timeout.Value > interval.Value)
            {
                errors.Add(timeout.Mark, $"health_check 'timeout' ({timeout.Value.TotalMilliseconds}ms) must not be longer than its 'interval' ({interval.Value.TotalMilliseconds}ms)");
            }
        }
        if (cluster.Retry is { BackoffBase: { } backoffBase, BackoffMax: { } backoffMax } && backoffBase.Value > backoffMax.Value)
        {
            errors.Add(backoffBase.Mark, $"retry backoff 'base' ({backoffBase.Value.TotalMilliseconds}ms) must not be greater than 'max' ({backoffMax.Value.TotalMilliseconds}ms)");
        }
    }

    /// <summary>A route's <c>clusters:</c> split and <c>canary:</c> block (docs/routing.md, "Canary and weighted routing").</summary>
    private static void ValidateTraffic(RouteConfig route, string label, HashSet<string> clusters, ConfigErrorList errors)
    {
        void Known(Located<string> name)
        {
            if (!clusters.Contains(name.Value))
            {
                var near = ConfigErrorList.Nearest(name.Value, clusters);
                errors.Add(name.Mark, $"{label} refers to unknown cluster '{name.Value}'" + (near is null ? "" : $"; did you mean '{near}'?"));
            }
        }
        if (route.Clusters.Count > 0)
        {
            if (route.Cluster is { } single)
            {
                errors.Add(single.Mark, $"{label} has both 'cluster' and 'clusters'; use 'clusters' with weights to split traffic, or 'cluster' alone");
            }
            if (route.Respond is not null)
            {
                errors.Add(route.ClustersMark, $"{label} has both 'clusters' and 'respond'; a route either forwards or answers, so keep one");
            }
            var seen = new HashSet<string>(StringComparer.Ordinal);
            long total = 0;
            foreach (var entry in route.Clusters)
            {
                total += entry.Weight;
                if (entry.Name is not { } name)
                {
                    continue;
                }
                Known(name);
                if (!seen.Add(name.Value))
                {
                    errors.Add(name.Mark, $"{label} lists cluster '{name.Value}' twice in 'clusters'; give it one entry with the summed weight");
                }
            }
            if (total == 0)
            {
                errors.Add(route.ClustersMark, $"{label}: the weights in 'clusters' add up to 0; at least one must be positive");
            }
            else if (total > MaxWeightSum)
            {
                errors.Add(route.ClustersMark, $"{label}: the weights in 'clusters' add up to {total}, more than {MaxWeightSum}; scale them down (only their ratios matter)");
            }
        }
        if (route.Canary is { } canary)
        {
            if (route.Respond is not null)
            {
                errors.Add(canary.Mark, $"{label} has 'canary' and 'respond'; a canary only applies to a route that forwards");
            }
            if (canary.Cluster is { } target)
            {
                Known(target);
            }
            if ((canary.Header is null) == (canary.Cookie is null))
            {
                errors.Add(canary.Mark, $"{label}: 'canary' needs exactly one of 'header' or 'cookie' to select its requests");
            }
            if (canary.Header?.Name is { } header && !ConfigSyntax.IsToken(header.Value))
            {
                errors.Add(header.Mark, $"canary header name '{header.Value}' is not a valid field name (RFC 9110 section 5.1)");
            }
            if (canary.Cookie?.Name is { } cookie && !ConfigSyntax.IsToken(cookie.Value))
            {
                errors.Add(cookie.Mark, $"canary cookie name '{cookie.Value}' is not a valid cookie name (RFC 6265 section 4.1.1: a token)");
            }
        }
    }

    /// <summary>A route's <c>rewrite:</c> (docs/routing.md, "Path rewrite"): compiled here as it will be at load, against the route's match path.</summary>
    private static void ValidateRewrite(RouteConfig route, RewriteConfig rewrite, string label, ConfigErrorList errors)
    {
        if (route.Respond is not null)
        {
            errors.Add(rewrite.Mark, $"{label} has 'rewrite' and 'respond'; a route that answers itself forwards nothing, so there is no path to rewrite");
            return;
        }
        if (rewrite.Path is not { } path)
        {
            return; // the reader reported the missing key
        }
        string? matchPath = route.Match.Path?.Value;
        if (matchPath is not null && ConfigSyntax.CheckPathTemplate(matchPath) is not null)
        {
            return; // the match path's own error is reported; its captures are unknown
        }
        if (!PathRewrite.TryCompile(path.Value, matchPath, out _, out var error))
        {
            errors.Add(path.Mark, $"{label}: rewrite {error}");
        }
    }

    private static void ValidateRoutes(
        ProxyConfig config,
        Dictionary<string, (int Index, ListenerConfig Listener)> listeners,
        HashSet<string> clusters,
        ConfigErrorList errors)
    {
        var ids = new Dictionary<string, RouteConfig>(StringComparer.Ordinal);
        // Routes without errors of their own, compiled far enough for the shadowing check.
        var checkable = new List<(RouteModel Model, RouteConfig Config)>();
        for (int order = 0; order < config.Routes.Count; order++)
        {
            var route = config.Routes[order];
            int errorsBefore = errors.Count;
            var label = route.Id is { } id ? $"route '{id.Value}'" : "route";
            if (route.Id is { } routeId)
            {
                if (ids.TryGetValue(routeId.Value, out var first))
                {
                    errors.Add(routeId.Mark, $"duplicate route id '{routeId.Value}' (first defined at line {first.Id!.Value.Mark.Line})");
                }
                else
                {
                    ids.Add(routeId.Value, route);
                }
            }

            if (route.Cluster is null && route.Respond is null && route.Clusters.Count == 0)
            {
                errors.Add(route.Mark, $"{label} needs either 'cluster' (forward) or 'respond' (answer directly)");
            }
            else if (route.Cluster is { } both && route.Respond is not null)
            {
                errors.Add(both.Mark, $"{label} has both 'cluster' and 'respond'; a route either forwards or answers, so keep one");
            }
            if (route.Cluster is { } cluster && !clusters.Contains(cluster.Value))
            {
                var near = ConfigErrorList.Nearest(cluster.Value, clusters);
                errors.Add(cluster.Mark, $"{label} refers to unknown cluster '{cluster.Value}'" + (near is null ? "" : $"; did you mean '{near}'?"));
            }
            ValidateTraffic(route, label, clusters, errors);

            foreach (var name in route.Listeners)
            {
                if (!listeners.TryGetValue(name.Value, out var listener) && config.Admin is not null && name.Value == AdminModel.ListenerName)
                {
                    errors.Add(name.Mark, $"{label} refers to listener '{name.Value}', the admin API's listener, which never routes");
                }
                else if (listener.Listener is null)
                {
                    var near = ConfigErrorList.Nearest(name.Value, listeners.Keys);
                    errors.Add(name.Mark, $"{label} refers to unknown listener '{name.Value}'" + (near is null ? "" : $"; did you mean '{near}'?"));
                }
                else if (listener.Listener.Handler != ListenerHandler.Proxy)
                {
                    errors.Add(name.Mark, $"{label} refers to listener '{name.Value}', which has 'handler: echo' and never routes");
                }
                else if (listener.Index >= MaxListeners)
                {
                    errors.Add(name.Mark, $"{label} refers to listener '{name.Value}', which is beyond the first {MaxListeners}");
                }
            }

            ValidateMatch(route.Match, errors);
            if (route.Respond is { } respond)
            {
                ValidateRespond(respond, errors);
            }
            if (route.Rewrite is { } rewrite)
            {
                ValidateRewrite(route, rewrite, label, errors);
            }

            // The reader's errors (a predicate without its name) came before errorsBefore, so also check that the
            // record is whole: BuildMatch assumes the required keys are there.
            if (errors.Count == errorsBefore && route.Id is { } goodId && IsComplete(route.Match))
            {
                var model = new RouteModel
                {
                    Id = goodId.Value,
                    Order = order,
                    Match = ConfigCompiler.BuildMatch(route.Match),
                    ListenerMask = ConfigCompiler.ListenerMask(route.Listeners, config.Listeners),
                };
                checkable.Add((model, route));
            }
        }

        // With fewer than two routes nothing can shadow anything.
        if (checkable.Count < 2)
        {
            return;
        }
        var configs = new Dictionary<RouteModel, RouteConfig>(ReferenceEqualityComparer.Instance);
        var models = new List<RouteModel>(checkable.Count);
        foreach (var (model, routeConfig) in checkable)
        {
            configs.Add(model, routeConfig);
            models.Add(model);
        }
        foreach (var (shadowed, by) in RouteShadowing.Find(models))
        {
            var shadowedConfig = configs[shadowed];
            var byConfig = configs[by];
            errors.Add(shadowedConfig.Id!.Value.Mark,
                $"route '{shadowed.Id}' is unreachable: every request it matches is taken by route '{by.Id}' (line {byConfig.Id!.Value.Mark.Line})");
        }
    }

    /// <summary>
    /// True when every header and query predicate has its name. The reader has already reported a missing or empty
    /// one (with its position) and left it null; such a match cannot be compiled for the shadowing check.
    /// </summary>
    private static bool IsComplete(MatchConfig match)
    {
        foreach (var header in match.Headers)
        {
            if (header.Name is null)
            {
                return false;
            }
        }
        foreach (var query in match.Query)
        {
            if (query.Name is null)
            {
                return false;
            }
        }
        return true;
    }

    private static void ValidateMatch(MatchConfig match, ConfigErrorList errors)
    {
        if (match.Path is { } path && ConfigSyntax.CheckPathTemplate(path.Value) is { } pathError)
        {
            errors.Add(path.Mark, pathError);
        }
        foreach (var host in match.Hosts)
        {
            if (ConfigSyntax.CheckHostPattern(host.Value) is { } hostError)
            {
                errors.Add(host.Mark, hostError);
            }
        }
        foreach (var method in match.Methods)
        {
            if (!ConfigSyntax.IsToken(method.Value))
            {
                errors.Add(method.Mark, $"invalid method '{method.Value}': a method is a token (letters, digits and !#$%&'*+-.^_`|~)");
            }
        }
        foreach (var header in match.Headers)
        {
            if (header.Name is { } name && !ConfigSyntax.IsToken(name.Value))
            {
                errors.Add(name.Mark, $"invalid header name '{name.Value}': a field name is a token (letters, digits and !#$%&'*+-.^_`|~)");
            }
            if (header.Value is { } value && !ConfigSyntax.IsFieldValue(value.Value))
            {
                errors.Add(value.Mark, "header value must not contain control characters such as CR or LF");
            }
            CheckValueOrPresent(header, errors);
        }
        foreach (var query in match.Query)
        {
            CheckValueOrPresent(query, errors);
        }
    }

    private static void CheckValueOrPresent(FieldMatchConfig field, ConfigErrorList errors)
    {
        if (field.Value is not null && field.Present is { } present)
        {
            errors.Add(present.Mark, "use either 'value' (must equal) or 'present' (must or must not exist), not both");
        }
    }

    private static void ValidateRespond(RespondConfig respond, ConfigErrorList errors)
    {
        // RFC 9110 sections 15.3.5 and 15.4.5: 204 and 304 never carry content.
        if (respond.Status is 204 or 304 && respond.Body.Length != 0)
        {
            errors.Add(respond.StatusMark, $"status {respond.Status} cannot have a body");
        }
        foreach (var (name, value) in respond.Headers)
        {
            if (!ConfigSyntax.IsToken(name.Value))
            {
                errors.Add(name.Mark, $"invalid header name '{name.Value}': a field name is a token (letters, digits and !#$%&'*+-.^_`|~)");
            }
            else if (Array.IndexOf(s_reservedResponseHeaders, name.Value.ToLowerInvariant()) >= 0)
            {
                errors.Add(name.Mark, $"header '{name.Value}' is set by the proxy and cannot be configured");
            }
            if (!ConfigSyntax.IsFieldValue(value.Value))
            {
                errors.Add(value.Mark, $"value of header '{name.Value}' must not contain control characters such as CR or LF");
            }
        }
    }

    private static bool IsAny(IPAddress address) => address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any);
}
