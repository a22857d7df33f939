using System.Net;
using Proxy.Model;
using Proxy.Routing;

namespace Proxy.Configuration;

/// <summary>One thing to harden, with where it is in the file.</summary>
internal sealed record LintFinding(string File, int Line, int Column, string Code, string Message)
{
    public override string ToString() => $"{File}:{Line}:{Column}: {Code}: {Message}";
}

/// <summary>
/// <c>proxy lint</c>: on a valid config, lists what a team should harden first: routes without authentication
/// (no <c>jwt</c> policy on the route or its listeners), routes without a rate limit, catch-all routes on listeners
/// reachable from outside the host, clusters relying on default timeouts, and exact routes whose policies a trailing
/// slash or a ';' parameter walks around. Findings are advice, not errors.
/// </summary>
internal static class ConfigLint
{
    public static (IReadOnlyList<ConfigError> Errors, IReadOnlyList<LintFinding> Findings) Run(string path)
    {
        var load = ConfigLoader.LoadFile(path);
        if (!load.Success)
        {
            return (load.Errors, []);
        }
        var errors = new ConfigErrorList(path);
        var config = YamlConfigReader.Read(File.ReadAllText(path), errors)!;
        return ([], Lint(config, path));
    }

    public static List<LintFinding> Lint(ProxyConfig config, string file)
    {
        var findings = new List<LintFinding>();
        void Add(Mark mark, string code, string message) => findings.Add(new LintFinding(file, mark.Line, mark.Column, code, message));

        var kinds = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var policy in config.Policies)
        {
            if (policy.Kind is { } kind)
            {
                kinds[policy.Name.Value] = kind.Value;
            }
        }
        var proxyListeners = config.Listeners.Where(l => l.Handler == ListenerHandler.Proxy && l.Name is not null).ToList();

        foreach (var route in config.Routes)
        {
            string id = route.Id?.Value ?? "?";
            var listeners = route.Listeners.Count == 0
                ? proxyListeners
                : proxyListeners.Where(l => route.Listeners.Any(n => n.Value == l.Name!.Value.Value)).ToList();
            if (listeners.Count == 0)
            {
                continue;
            }
            // A check holds only when every listener the route is served on provides it (or the route itself does).
            bool Has(string kind) => route.Policies.Any(p => kinds.GetValueOrDefault(p.Value) == kind)
                || listeners.All(l => l.Policies.Any(p => kinds.GetValueOrDefault(p.Value) == kind));
            if (!Has("jwt") && !Has("api_key") && !Has("introspection"))
            {
                Add(route.Mark, "no_authentication", $"route '{id}' has no authentication (no jwt, api_key or introspection policy on the route or on all of its listeners)");
            }
            if (!Has("rate_limit"))
            {
                Add(route.Mark, "no_rate_limit", $"route '{id}' has no rate limit (no rate_limit policy on the route or on all of its listeners)");
            }
            if (IsCatchAll(route.Match) && listeners.FirstOrDefault(l => !IsLocalOnly(l.Address?.Value)) is { } exposed)
            {
                Add(route.Mark, "public_catch_all", $"route '{id}' matches every path on every host on listener '{exposed.Name!.Value.Value}' ({exposed.Address?.Value}), which is reachable from other hosts: narrow its path or hosts");
            }
        }
        foreach (var (route, message) in ExactPathBypasses(config))
        {
            Add(route.Mark, "exact_path_bypass", message);
        }
        foreach (var cluster in config.Clusters)
        {
            var missing = new List<string>();
            if (cluster.ConnectTimeout is null)
            {
                missing.Add("connect_timeout");
            }
            if (cluster.RequestTimeout is null)
            {
                missing.Add("request_timeout");
            }
            if (missing.Count > 0)
            {
                Add(cluster.Name.Mark, "default_timeouts", $"cluster '{cluster.Name.Value}' sets no {string.Join(" or ", missing)}: the defaults may not fit this upstream");
            }
        }
        // In file order (a stable sort: findings on one line keep the order above).
        return [.. findings.OrderBy(f => f.Line).ThenBy(f => f.Column)];
    }

    /// <summary>
    /// An exact route (a path of literals only) with policies of its own, next to a route without some of them that
    /// takes the same path with a trailing slash or a ';' parameter ("/secret/", "/secret;x") to a cluster the exact
    /// route also forwards to. Routing tells those paths apart (docs/routing.md), but many upstreams do not: Express,
    /// Spring before 6 and ASP.NET Core serve "/secret/" as "/secret", and servlet containers strip ";x". The other
    /// route then serves the protected resource without the policies.
    /// </summary>
    private static List<(RouteConfig Route, string Message)> ExactPathBypasses(ProxyConfig config)
    {
        var result = new List<(RouteConfig, string)>();
        var models = new List<RouteModel>();
        var configs = new Dictionary<RouteModel, RouteConfig>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < config.Routes.Count; i++)
        {
            var route = config.Routes[i];
            if (route.Id is not { } id)
            {
                continue;
            }
            var model = new RouteModel
            {
                Id = id.Value,
                Order = i,
                Match = ConfigCompiler.BuildMatch(route.Match),
                ListenerMask = ConfigCompiler.ListenerMask(route.Listeners, config.Listeners),
            };
            models.Add(model);
            configs.Add(model, route);
        }
        RouteEntry[] ordered = RouteEntry.CreateAll(models);
        Array.Sort(ordered, RouteEntry.Compare);

        foreach (RouteEntry exact in ordered)
        {
            var route = configs[exact.Route];
            string? path = exact.Route.Match.Path;
            if (route.Policies.Count == 0 || path is null || path.EndsWith('/') || !IsLiteral(exact.Template))
            {
                continue;
            }
            var clusters = ClustersOf(route);
            // The route that takes each variant (the first in match order that admits every request the exact route
            // does, bar the path), when it forwards to one of the same clusters without all of the exact route's policies.
            var takenBy = new List<(string Variant, RouteConfig By)>();
            foreach (string variant in new[] { path + "/", path + ";x" })
            {
                foreach (RouteEntry other in ordered)
                {
                    if (other == exact || !other.Template.Matches(System.Text.Encoding.UTF8.GetBytes(variant)) || !other.CoversPredicatesOf(exact))
                    {
                        continue;
                    }
                    var by = configs[other.Route];
                    bool sameUpstream = ClustersOf(by).Overlaps(clusters);
                    bool fewerPolicies = route.Policies.Any(p => !by.Policies.Any(q => q.Value == p.Value));
                    if (sameUpstream && fewerPolicies)
                    {
                        takenBy.Add((variant, by));
                    }
                    break;
                }
            }
            foreach (var group in takenBy.GroupBy(t => t.By))
            {
                string variants = string.Join(" and ", group.Select(t => $"'{t.Variant}'"));
                string kinds = string.Join(", ", group.Select(t => t.Variant.EndsWith('/') ? "a trailing slash" : "a ';' parameter"));
                var missing = route.Policies.Where(p => !group.Key.Policies.Any(q => q.Value == p.Value)).Select(p => p.Value);
                string shared = string.Join("', '", ClustersOf(group.Key).Intersect(clusters).Order(StringComparer.Ordinal));
                string other = group.Key.Id!.Value.Value;
                result.Add((route, $"route '{exact.Route.Id}' matches '{path}' exactly, but route '{other}' (line {group.Key.Mark.Line}) "
                    + $"takes {variants} ({kinds}) to the same cluster '{shared}' without its policies [{string.Join(", ", missing)}]; "
                    + $"many upstreams serve those as '{path}': put the policies on route '{other}' too, or on a route for "
                    + $"'{path}/{{**rest}}' (which leaves ';' parameters)"));
            }
        }
        return result;
    }

    private static bool IsLiteral(RouteTemplate template)
    {
        foreach (var segment in template.Segments)
        {
            if (segment.Kind != SegmentKind.Literal)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Every cluster a route can forward to: its cluster, its split's clusters and its canary's.</summary>
    private static HashSet<string> ClustersOf(RouteConfig route)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        if (route.Cluster is { } cluster)
        {
            names.Add(cluster.Value);
        }
        foreach (var entry in route.Clusters)
        {
            if (entry.Name is { } name)
            {
                names.Add(name.Value);
            }
        }
        if (route.Canary?.Cluster is { } canary)
        {
            names.Add(canary.Value);
        }
        return names;
    }

    private static bool IsCatchAll(MatchConfig match)
    {
        if (match.Hosts.Count > 0 || match.Methods.Count > 0)
        {
            return false;
        }
        string? path = match.Path?.Value;
        return path is null || (path.StartsWith("/{*", StringComparison.Ordinal) && path.EndsWith('}') && path.IndexOf('/', 1) < 0);
    }

    private static bool IsLocalOnly(string? address)
        => address is not null && ConfigSyntax.TryParseListenerAddress(address, out var endPoint, out _) && IPAddress.IsLoopback(endPoint.Address);
}
