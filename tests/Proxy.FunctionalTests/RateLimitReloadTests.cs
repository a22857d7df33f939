using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// What a reload does to in-memory rate-limit state, over real sockets: a policy whose definition the reload leaves
/// alone keeps every key's budget and quota count; a changed definition starts fresh.
/// </summary>
public sealed class RateLimitReloadTests
{
    /// <summary>
    /// A config with the policy <c>limit</c> (<paramref name="policy"/>, indented under it), named by two routes and
    /// the listener <paramref name="listenerPolicies"/>, and an unrelated route <c>/other</c> answering
    /// <paramref name="otherBody"/>: a reload that changes only that body touches nothing of the policy.
    /// </summary>
    private static string Config(string policy, string otherBody, string listenerPolicies = "") => $$"""
        server: { watch_config: false }
        policies:
          limit:
        {{policy}}
        listeners:
          - { name: public, address: 127.0.0.1:0, policies: [{{listenerPolicies}}] }
        routes:
          - { id: a, match: { path: /a }, respond: { status: 200, body: "a" }, policies: [limit] }
          - { id: b, match: { path: /b }, respond: { status: 200, body: "b" }, policies: [limit] }
          - { id: other, match: { path: /other }, respond: { status: 200, body: "{{otherBody}}" } }

        """;

    private static async Task<HttpMessage> GetAsync(TestProxy proxy, string target, params string[] headers)
    {
        // A connection per request: whichever config a kept-alive connection would pick up, this one reads the
        // snapshot published last.
        await using var client = await proxy.ConnectAsync();
        await client.SendAsync(Wire.Get(target, "example.test", headers));
        return await client.ReadResponseAsync();
    }

    /// <summary>
    /// Reloads <paramref name="yaml"/> and checks, through the unrelated route (when no listener policy guards it),
    /// that it is the running config.
    /// </summary>
    private static async Task ReloadAsync(TestProxy proxy, string yaml, string? otherBody)
    {
        var result = await proxy.Server.ReloadAsync(yaml);
        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.True(result.Changed);
        if (otherBody is null)
        {
            return;
        }
        var other = await GetAsync(proxy, "/other");
        Assert.Equal((200, otherBody), (other.Status, other.BodyText));
    }

    private const string OneAnHour = "    rate_limit: { key: client_ip, rate: 1/h, burst: 1 }";

    [Fact]
    public async Task Reload_UnrelatedRouteChanged_SpentRateBudgetStaysSpent()
    {
        await using var proxy = await TestProxy.StartAsync(Config(OneAnHour, "one"));
        Assert.Equal(200, (await GetAsync(proxy, "/a")).Status);
        Assert.Equal(429, (await GetAsync(proxy, "/a")).Status);

        await ReloadAsync(proxy, Config(OneAnHour, "two"), "two");

        var limited = await GetAsync(proxy, "/a");
        Assert.Equal(429, limited.Status);
        Assert.Contains("Rate limit of policy 'limit'", limited.BodyText, StringComparison.Ordinal);
        // Every route naming the policy shares the one budget, before and after the reload.
        Assert.Equal(429, (await GetAsync(proxy, "/b")).Status);

        // And again: the state is handed on from reload to reload, not only once.
        await ReloadAsync(proxy, Config(OneAnHour, "three"), "three");
        Assert.Equal(429, (await GetAsync(proxy, "/a")).Status);
    }

    [Fact]
    public async Task Reload_PolicyMovedToListenerAndBurstSpelledOut_BudgetKept()
    {
        // Where the policy is named (routes, listener defaults) and a default spelled out (burst = rate) are not
        // part of its state's definition.
        string route = "    rate_limit: { key: client_ip, rate: 1/h }";
        string spelled = "    rate_limit: { key: client_ip, rate: 1/h, burst: 1, max_keys: 65536 }";
        await using var proxy = await TestProxy.StartAsync(Config(route, "one"));
        Assert.Equal(200, (await GetAsync(proxy, "/a")).Status);

        await ReloadAsync(proxy, Config(spelled, "two", listenerPolicies: "limit"), null);

        Assert.Equal(429, (await GetAsync(proxy, "/a")).Status);
        // The listener's default now guards the unrelated route too, with the same spent budget.
        Assert.Equal(429, (await GetAsync(proxy, "/other")).Status);
    }

    [Theory]
    [InlineData("    rate_limit: { key: client_ip, rate: 2/h, burst: 1 }")]
    [InlineData("    rate_limit: { key: client_ip, rate: 1/h, burst: 2 }")]
    [InlineData("    rate_limit: { key: client_ip, rate: 1/h, burst: 1, max_keys: 4096 }")]
    [InlineData("    rate_limit: { key: header:x-api-key, rate: 1/h, burst: 1 }")]
    public async Task Reload_PolicyDefinitionChanged_FreshBudget(string changed)
    {
        await using var proxy = await TestProxy.StartAsync(Config(OneAnHour, "one"));
        Assert.Equal(200, (await GetAsync(proxy, "/a")).Status);
        Assert.Equal(429, (await GetAsync(proxy, "/a")).Status);

        await ReloadAsync(proxy, Config(changed, "two"), "two");

        Assert.Equal(200, (await GetAsync(proxy, "/a")).Status);
    }

    [Fact]
    public async Task Reload_PolicyRenamed_FreshBudget()
    {
        await using var proxy = await TestProxy.StartAsync(Config(OneAnHour, "one"));
        Assert.Equal(200, (await GetAsync(proxy, "/a")).Status);

        await ReloadAsync(proxy, Config(OneAnHour, "two").Replace("  limit:", "  renamed:", StringComparison.Ordinal).Replace("[limit]", "[renamed]", StringComparison.Ordinal), "two");

        Assert.Equal(200, (await GetAsync(proxy, "/a")).Status);
    }

    private const string OneADay = "    rate_limit: { key: header:x-api-key, quota: 1/day }";

    [Fact]
    public async Task Reload_UnrelatedRouteChanged_SpentQuotaStaysSpent()
    {
        await using var proxy = await TestProxy.StartAsync(Config(OneADay, "one"));
        Assert.Equal(200, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);
        Assert.Equal(429, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);

        await ReloadAsync(proxy, Config(OneADay, "two"), "two");

        var exceeded = await GetAsync(proxy, "/a", "X-API-Key: k1");
        Assert.Equal(429, exceeded.Status);
        Assert.Contains("Quota of policy 'limit'", exceeded.BodyText, StringComparison.Ordinal);
        // Another key still has its own quota: the table was kept, not frozen.
        Assert.Equal(200, (await GetAsync(proxy, "/b", "X-API-Key: k2")).Status);
    }

    [Fact]
    public async Task Reload_QuotaChanged_FreshQuota()
    {
        await using var proxy = await TestProxy.StartAsync(Config(OneADay, "one"));
        Assert.Equal(200, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);
        Assert.Equal(429, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);

        await ReloadAsync(proxy, Config("    rate_limit: { key: header:x-api-key, quota: 2/day }", "two"), "two");

        Assert.Equal(200, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);
    }

    private static string Plans(string pro, bool reversed) => $$"""
            rate_limit:
              key: header:x-api-key
              plans:
        {{(reversed ? $"        pro: {pro}\n        free: {{ rate: 1/h, burst: 1, quota: 100/day }}" : $"        free: {{ rate: 1/h, burst: 1, quota: 100/day }}\n        pro: {pro}")}}
              default_plan: free
        """;

    [Fact]
    public async Task Reload_PlansReordered_BudgetKept_PlanChanged_FreshBudget()
    {
        // Requests without an identity get default_plan: free (1/h).
        await using var proxy = await TestProxy.StartAsync(Config(Plans("{ rate: 100/h }", reversed: false), "one"));
        Assert.Equal(200, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);
        Assert.Equal(429, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);

        // The same plans in another order: the same definition.
        await ReloadAsync(proxy, Config(Plans("{ rate: 100/h }", reversed: true), "two"), "two");
        Assert.Equal(429, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);

        // Another plan's limits changed: the policy's definition changed, so every key starts fresh.
        await ReloadAsync(proxy, Config(Plans("{ rate: 200/h }", reversed: true), "three"), "three");
        Assert.Equal(200, (await GetAsync(proxy, "/a", "X-API-Key: k1")).Status);
    }
}
