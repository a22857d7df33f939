using System.Globalization;
using Proxy.Core.Tests.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// <c>proxy_policy_decisions_total</c> across a reload, read from the admin listener's <c>/metrics</c> after real
/// requests: a counter that goes back is a reset to Prometheus, so a policy the reload keeps goes on counting.
/// </summary>
public sealed class PolicyDecisionsReloadTests : IDisposable
{
    private const string Decisions = "proxy_policy_decisions_total";

    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-decisions-").FullName;

    public PolicyDecisionsReloadTests()
        // An HS256 key: the jwt policy only needs a set to load; these tests send it no token.
        => File.WriteAllText(Path.Combine(_dir, "jwks.json"), """{"keys":[{"kty":"oct","kid":"h1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0"}]}""");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// One policy of each built-in kind that counts, each on its own route; <paramref name="generation"/> 2 changes
    /// every definition (and the unrelated route <c>/other</c>), renames <c>old-name</c> to <c>new-name</c> and turns
    /// <c>gate</c> from an <c>api_key</c> policy into a <c>jwt</c> one.
    /// </summary>
    private string Config(int upstreamPort, int introspectionPort, int generation)
    {
        bool second = generation == 2;
        string jwks = Path.Combine(_dir, "jwks.json");
        string jwt = $$"""jwt: { issuer: https://idp.example.test, audiences: [orders-api], jwks_file: "{{jwks}}", clock_skew: {{(second ? "10s" : "30s")}} }""";
        string apiKey = $$"""api_key: { header: x-api-key, keys: [{ sha256: {{IdentityPolicyTests.Sha("alice-key")}}, consumer: alice }]{{(second ? ", forward_identity: { consumer: x-consumer }" : "")}} }""";
        string renamed = second ? "new-name" : "old-name";
        return $$"""
            server: { watch_config: false }
            admin: { address: "127.0.0.1:0" }
            policies:
              limit:
                rate_limit: { key: client_ip, rate: {{(second ? "2/h" : "1/h")}}, burst: 1 }
              ipf:
                ip_filter: { deny: [127.0.0.0/8{{(second ? ", 10.0.0.0/8" : "")}}] }
              keys:
                {{apiKey}}
              waf:
                deny: { xss: true{{(second ? ", sql_injection: true" : "")}} }
              body:
                request_body: { content_types: [application/json{{(second ? ", text/json" : "")}}] }
              opaque:
                introspection: { url: "http://127.0.0.1:{{introspectionPort.ToString(CultureInfo.InvariantCulture)}}/introspect", client_id: gw, client_secret: s3cret, timeout: {{(second ? "3s" : "2s")}} }
              token:
                {{jwt}}
              {{renamed}}:
                ip_filter: { deny: [127.0.0.0/8] }
              gate:
                {{(second ? jwt : apiKey)}}
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: limit, match: { path: /limit }, cluster: up, policies: [limit] }
              - { id: ipf, match: { path: /ipf }, cluster: up, policies: [ipf] }
              - { id: keys, match: { path: /keys }, cluster: up, policies: [keys] }
              - { id: waf, match: { path: /waf }, cluster: up, policies: [waf] }
              - { id: body, match: { path: /body }, cluster: up, policies: [body] }
              - { id: opaque, match: { path: /opaque }, cluster: up, policies: [opaque] }
              - { id: token, match: { path: /token }, cluster: up, policies: [token] }
              - { id: renamed, match: { path: /renamed }, cluster: up, policies: [{{renamed}}] }
              - { id: gate, match: { path: /gate }, cluster: up, policies: [gate] }
              - { id: other, match: { path: /other }, respond: { status: 200, body: "{{generation}}" } }
            clusters:
              up: { destinations: ["http://127.0.0.1:{{upstreamPort.ToString(CultureInfo.InvariantCulture)}}"] }

            """;
    }

    private static async Task<int> StatusAsync(TestProxy proxy, string request)
    {
        await using var client = await proxy.ConnectAsync();
        await client.SendAsync(request);
        return (await client.ReadResponseAsync()).Status;
    }

    private static Task<int> GetAsync(TestProxy proxy, string target, params string[] headers)
        => StatusAsync(proxy, Wire.Get(target, "example.test", headers));

    private static async Task<PrometheusTextParser.Result> ScrapeAsync(TestProxy proxy)
    {
        using var http = new HttpClient();
        return PrometheusTextParser.Parse(await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/metrics"));
    }

    private static double Count(PrometheusTextParser.Result scrape, string policy, string decision)
        => scrape.Value(Decisions, ("policy", policy), ("decision", decision));

    /// <summary>
    /// A reload that changes every policy's definition, but neither its name nor its kind, leaves every
    /// <c>proxy_policy_decisions_total</c> series where it was, and the new filters count on from there. A renamed
    /// policy is a new series (the old name is no longer exported); a policy whose kind changed starts over. Before,
    /// the counters belonged to the compiled filters, and every reload set them all back to 0.
    /// </summary>
    [Fact]
    public async Task Reload_PoliciesKeptWithChangedDefinitions_DecisionCountersGoOn()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        int introspection = Ports.ClosedPort();
        await using var proxy = await TestProxy.StartAsync(Config(upstream.Port, introspection, generation: 1));

        Assert.Equal(200, await GetAsync(proxy, "/limit"));
        Assert.Equal(429, await GetAsync(proxy, "/limit"));
        Assert.Equal(403, await GetAsync(proxy, "/ipf"));
        Assert.Equal(401, await GetAsync(proxy, "/keys"));
        Assert.Equal(200, await GetAsync(proxy, "/keys", "X-API-Key: alice-key"));
        Assert.Equal(200, await GetAsync(proxy, "/waf"));
        Assert.Equal(403, await GetAsync(proxy, "/waf?q=%3Cscript%3E"));
        Assert.Equal(415, await StatusAsync(proxy, "POST /body HTTP/1.1\r\nHost: example.test\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"));
        Assert.Equal(503, await GetAsync(proxy, "/opaque", "Authorization: Bearer abc"));
        Assert.Equal(401, await GetAsync(proxy, "/token"));
        Assert.Equal(403, await GetAsync(proxy, "/renamed"));
        Assert.Equal(401, await GetAsync(proxy, "/gate"));

        (string Policy, string Decision, double Count)[] expected =
        [
            ("limit", "allowed", 1), ("limit", "limited", 1), ("ipf", "denied", 1), ("keys", "allowed", 1), ("keys", "rejected", 1),
            ("waf", "allowed", 1), ("waf", "denied", 1), ("body", "refused", 1), ("opaque", "unavailable", 1), ("token", "rejected", 1),
        ];
        var before = await ScrapeAsync(proxy);
        foreach (var (policy, decision, count) in expected)
        {
            Assert.True(count == Count(before, policy, decision), $"{policy} {decision} before the reload: {Count(before, policy, decision)}");
        }
        Assert.Equal(1, Count(before, "old-name", "denied"));
        Assert.Equal(1, Count(before, "gate", "rejected"));

        var result = await proxy.Server.ReloadAsync(Config(upstream.Port, introspection, generation: 2));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, await GetAsync(proxy, "/other"));

        var after = await ScrapeAsync(proxy);
        foreach (var (policy, decision, count) in expected)
        {
            Assert.True(count == Count(after, policy, decision), $"{policy} {decision} after the reload: {Count(after, policy, decision)}, was {count}");
        }
        Assert.Empty(after.Find(Decisions, ("policy", "old-name")));
        Assert.Equal(0, Count(after, "new-name", "denied"));
        Assert.Equal(0, Count(after, "gate", "rejected"));

        // The new filters count on from there: the changed rate (2/h) is a fresh budget, the counter is not.
        Assert.Equal(200, await GetAsync(proxy, "/limit"));
        Assert.Equal(403, await GetAsync(proxy, "/ipf"));
        var later = await ScrapeAsync(proxy);
        Assert.Equal(2, Count(later, "limit", "allowed"));
        Assert.Equal(2, Count(later, "ipf", "denied"));
    }
}
