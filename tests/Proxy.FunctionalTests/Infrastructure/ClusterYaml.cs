namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// The config most resilience and upstream-protocol tests need: one public listener, one catch-all route and one
/// cluster named <c>backend</c>. Only the cluster's settings differ from test to test, so a test states just those and
/// the scaffolding lives here once (a test whose listeners or routes differ writes its own YAML).
/// </summary>
internal static class ClusterYaml
{
    /// <summary>Renders the config.</summary>
    /// <param name="destinations">The inside of the cluster's <c>destinations: [...]</c> flow list, verbatim.</param>
    /// <param name="protocol">The cluster's <c>protocol</c> (<c>h2c</c>, <c>h2</c>, <c>auto</c>); omitted when null.</param>
    /// <param name="cluster">
    /// Further keys of the cluster, one per line in flow style (<c>retry: { attempts: 1 }</c>); each line is trimmed and
    /// indented under <c>backend</c>, so callers need not count spaces. Blank lines are dropped.
    /// </param>
    /// <param name="top">Top-level sections appended after <c>clusters</c> (<c>admin: ...</c>), verbatim.</param>
    public static string Render(string destinations, string? protocol = null, string cluster = "", string top = "")
    {
        var yaml = new System.Text.StringBuilder("""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend:

            """);
        if (protocol is not null)
        {
            yaml.Append("    protocol: ").Append(protocol).Append('\n');
        }
        yaml.Append("    destinations: [").Append(destinations).Append("]\n");
        foreach (string line in cluster.Split('\n'))
        {
            string key = line.Trim();
            if (key.Length > 0)
            {
                yaml.Append("    ").Append(key).Append('\n');
            }
        }
        if (top.Length > 0)
        {
            yaml.Append(top.Trim()).Append('\n');
        }
        return yaml.ToString();
    }

    /// <summary>Starts a proxy with <see cref="Render"/>'s config.</summary>
    public static Task<TestProxy> StartAsync(string destinations, string? protocol = null, string cluster = "", string top = "")
        => TestProxy.StartAsync(Render(destinations, protocol, cluster, top));

    /// <summary>One destination item, <c>{ address: "url" }</c>, for <see cref="Render"/>'s <c>destinations</c>.</summary>
    public static string Address(string url) => $$"""{ address: "{{url}}" }""";
}
