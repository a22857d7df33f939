using System.Net;
using Proxy.Model;

namespace Proxy.Configuration;

/// <summary>One thing to harden, with where it is in the file.</summary>
internal sealed record LintFinding(string File, int Line, int Column, string Code, string Message)
{
    public override string ToString() => $"{File}:{Line}:{Column}: {Code}: {Message}";
}

/// <summary>
/// <c>proxy lint</c>: on a valid config, lists what a team should harden first: routes without authentication
/// (no <c>jwt</c> policy on the route or its listeners), routes without a rate limit, catch-all routes on listeners
/// reachable from outside the host, and clusters relying on default timeouts. Findings are advice, not errors.
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
        return findings;
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
