using Proxy.Configuration;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Proxy.Core.Tests.Configuration;

/// <summary>
/// A config with one scalar spoiled must come back as errors with a position, never as an exception: the validator
/// runs on records the reader left incomplete (a missing required key is null), and an exception there ended
/// `proxy validate` and `proxy run` with a stack trace (exit 134) and made a reload log one. Each scalar of a valid
/// config (keys and values) is replaced in turn by an empty string, by YAML null and by text no key accepts.
/// </summary>
public class ConfigMutationTests
{
    /// <summary>Most sections and every kind of route predicate, so every reader path that can leave a null is hit.</summary>
    private const string Rich = """
        server: { shutdown_timeout: 10s, max_connections: 1000, watch_config: false }
        limits:
          max_request_line: 8KiB
          http2: { max_concurrent_streams: 100, rapid_reset: { max: 100, window: 10s } }
        forwarded: { mode: trust, trusted_networks: [10.0.0.0/8] }
        admin: { address: 127.0.0.1:0, token: s3cret-token }
        listeners:
          - { name: public, address: 127.0.0.1:0, policies: [per-client], forwarded: { mode: append } }
          - { name: echo, address: 127.0.0.1:0, handler: echo }
        policies:
          per-client:
            rate_limit: { key: header:x-api-key, rate: 100/s, burst: 200 }
          per-plan:
            rate_limit: { key: consumer, plans: { free: { rate: 10/s, quota: 10000/day } }, default_plan: free }
          office-only:
            ip_filter: { allow: [10.0.0.0/8, "::1/128"], deny: [10.1.2.3/32], trusted_proxies: [127.0.0.1] }
          keys:
            api_key:
              keys: [{ sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, consumer: alice, plan: free }]
              forward_identity: { consumer: x-consumer }
          waf:
            deny: { path_traversal: true, methods: [GET, POST], patterns: [wp-login] }
          to-origin:
            request_headers: { add: { x-gateway: edge }, set: { x-env: prod }, remove: [x-debug] }
          json-api:
            request_body: { max_bytes: 1MiB, content_types: [application/json], json: true }
        routes:
          - id: hello
            listeners: [public]
            match: { path: /hello, hosts: [api.example.com, "*.example.org"], methods: [GET] }
            respond: { status: 200, body: "hello\n", headers: { content-type: text/plain } }
          - id: api
            match:
              path: "/api/{version}/{**rest}"
              headers: [{ name: x-version, value: "2" }, { name: x-debug, present: false }]
              query: [{ name: beta, value: "1" }, { name: trace }]
            clusters: [{ name: stable, weight: 90 }, { name: canary, weight: 10 }]
            canary: { cluster: canary, header: { name: x-canary, value: "1" } }
            policies: [keys, per-plan, waf, to-origin, json-api]
            request_timeout: 5s
          - id: web
            match: { path: "/{**rest}" }
            cluster: stable
            canary: { cluster: canary, cookie: { name: canary, value: "yes" } }
            policies: [office-only]
        clusters:
          stable:
            load_balancing: least_requests
            destinations: [{ address: "http://127.0.0.1:9001", weight: 3 }, "http://127.0.0.1:9002"]
            connect_timeout: 1s
            health_check: { path: /healthz, interval: 5s, timeout: 1s, expected_statuses: [200, 3xx] }
            outlier_detection: { consecutive_failures: 5, base_ejection: 30s }
            retry: { attempts: 2, on: [connect_failure, "503"], backoff: { base: 10ms, max: 100ms } }
            circuit_breaker: { max_connections: 100, max_pending: 10 }
            session_affinity: { mode: cookie, name: sticky, ttl: 1h }
          canary:
            protocol: h2
            destinations: ["https://127.0.0.1:9443"]
            tls: { sni: canary.internal, insecure_skip_verify: true }
        access_log: { path: stdout, fields: [time, route, status] }
        """;

    public static TheoryData<string> Configs() => new() { "samples/quickstart/proxy.yaml", "samples/tls/proxy.yaml", "rich" };

    [Theory]
    [MemberData(nameof(Configs))]
    public void Load_EachScalarSpoiled_ReportsPositionedErrorsWithoutThrowing(string source)
    {
        string root = RepositoryRoot();
        string text = source == "rich" ? Rich : File.ReadAllText(Path.Combine(root, source));
        // Named as if beside the sample, so relative certificate paths resolve as they would for the real file.
        string fileName = Path.Combine(root, source == "rich" ? "samples/rich.yaml" : source);
        int scalars = Parse(text).AllNodes.OfType<YamlScalarNode>().Count();
        Assert.True(scalars > 10, $"{source}: only {scalars} scalars");

        var failures = new List<string>();
        for (int i = 0; i < scalars; i++)
        {
            foreach (var (replacement, style) in new[] { ("", ScalarStyle.DoubleQuoted), ("", ScalarStyle.Plain), ("x y", ScalarStyle.DoubleQuoted) })
            {
                YamlDocument document = Parse(text);
                YamlScalarNode node = document.AllNodes.OfType<YamlScalarNode>().ElementAt(i);
                string original = node.Value ?? "";
                node.Value = replacement;
                node.Style = style;
                var writer = new StringWriter();
                new YamlStream(document).Save(writer, assignAnchors: false);
                string label = $"scalar {i} ('{original}' at {node.Start.Line}:{node.Start.Column}) -> {style} '{replacement}'";
                try
                {
                    ConfigLoadResult result = ConfigLoader.LoadText(writer.ToString(), fileName);
                    if (!result.Success && result.Errors.Count == 0)
                    {
                        failures.Add($"{label}: no snapshot and no error");
                    }
                    foreach (ConfigError error in result.Errors)
                    {
                        if (error.Line < 1 || error.Column < 1)
                        {
                            failures.Add($"{label}: error without a position: {error}");
                        }
                    }
                }
                catch (Exception e)
                {
                    failures.Add($"{label}: {e.GetType().Name}: {e.Message}");
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join('\n', failures));
    }

    private static YamlDocument Parse(string text)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(text));
        return stream.Documents[0];
    }

    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Proxy.sln")))
        {
            dir = dir.Parent;
        }
        Assert.NotNull(dir);
        return dir.FullName;
    }
}
