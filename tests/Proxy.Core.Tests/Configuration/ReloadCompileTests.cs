using Proxy.Configuration;
using Proxy.Model;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Configuration;

public sealed class ReloadCompileTests
{
    private static string Yaml(string clusterExtra, string routeId = "r") => $$"""
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: {{routeId}}, match: { path: / }, cluster: backend }
        clusters:
          backend:
            destinations: [{ address: "http://127.0.0.1:9000" }]
        {{clusterExtra}}
        """;

    [Fact]
    public void Compile_SameClusterDefinition_TakesOverRunningCluster()
    {
        var first = ConfigLoader.LoadText(Yaml(""), "a.yaml").Snapshot!;

        var second = ConfigLoader.LoadText(Yaml("", routeId: "other"), "a.yaml", first).Snapshot!;

        Assert.Same(first.Clusters["backend"], second.Clusters["backend"]);
        Assert.Same(first.Clusters["backend"], second.Routes.InMatchOrder.Single().Cluster);
    }

    [Theory]
    [InlineData("    connect_timeout: 5s")]
    [InlineData("    load_balancing: random")]
    [InlineData("    circuit_breaker: { max_requests: 5 }")]
    public void Compile_ChangedClusterDefinition_BuildsNewCluster(string extra)
    {
        var first = ConfigLoader.LoadText(Yaml(""), "a.yaml").Snapshot!;

        var result = ConfigLoader.LoadText(Yaml(extra), "a.yaml", first);

        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.NotSame(first.Clusters["backend"], result.Snapshot!.Clusters["backend"]);
    }

    [Fact]
    public void Compile_DefaultSpelledOut_SameDefinition()
    {
        var first = ConfigLoader.LoadText(Yaml(""), "a.yaml").Snapshot!;

        var second = ConfigLoader.LoadText(Yaml("    connect_timeout: 2s"), "a.yaml", first).Snapshot!;

        Assert.Same(first.Clusters["backend"], second.Clusters["backend"]);
    }

    [Fact]
    public void Read_WatchConfig_ParsedIntoServerModel()
    {
        var snapshot = ConfigLoader.LoadText("server: { watch_config: false }\n" + Yaml(""), "a.yaml").Snapshot!;

        Assert.False(snapshot.Server.WatchConfig);
        Assert.Null(ConfigLoader.LoadText(Yaml(""), "a.yaml").Snapshot!.Server.WatchConfig);
    }

    private static string WithPolicy(string policy, string routeId = "r") => $$"""
        policies:
          limit:
            rate_limit: {{policy}}
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: {{routeId}}, match: { path: / }, respond: { status: 200 }, policies: [limit] }
        """;

    private static RateLimitFilter Limit(ProxySnapshot snapshot)
        => (RateLimitFilter)snapshot.Policies.Single(p => p.Key == "limit").Value;

    [Theory]
    [InlineData("{ rate: 10/s, quota: 5/day }", "{ rate: 10/s, burst: 10, quota: 5/day, max_keys: 65536 }")]
    [InlineData("{ key: route, rate: 10/s }", "{ key: route, rate: 10/s, max_keys: 1024 }")]
    [InlineData("{ plans: { a: { rate: 1/s }, b: { quota: 9/month } }, default_plan: a }", "{ plans: { b: { quota: 9/month }, a: { rate: 1/s, burst: 1 } }, default_plan: a }")]
    [InlineData("{ rate: 1/m, store: redis, redis: { address: 127.0.0.1:1, local_budget: 5 } }", "{ rate: 1/m, store: redis, redis: { address: 127.0.0.1:1, local_budget: 5, on_error: deny, timeout: 1s } }")]
    public void Compile_SameRateLimitState_TakesOverRunningTables(string before, string after)
    {
        var first = ConfigLoader.LoadText(WithPolicy(before), "a.yaml").Snapshot!;

        var second = ConfigLoader.LoadText(WithPolicy(after, routeId: "other"), "a.yaml", first).Snapshot!;

        RateLimitFilter was = Limit(first), now = Limit(second);
        Assert.NotSame(was, now);
        Assert.True(now.KeptState);
        Assert.Same(was.Table, now.Table);
        Assert.Same(was.Quotas, now.Quotas);
        Assert.Same(was.Budget, now.Budget);
    }

    [Theory]
    [InlineData("{ rate: 10/s }", "{ rate: 10/m }")]
    [InlineData("{ rate: 10/s }", "{ rate: 10/s, burst: 11 }")]
    [InlineData("{ rate: 10/s, quota: 5/day }", "{ rate: 10/s, quota: 5/hour }")]
    [InlineData("{ rate: 10/s, quota: 5/day }", "{ rate: 10/s, quota: 6/day }")]
    [InlineData("{ rate: 10/s }", "{ rate: 10/s, key: header:x-api-key }")]
    [InlineData("{ key: header:x-a, rate: 10/s }", "{ key: header:x-b, rate: 10/s }")]
    [InlineData("{ rate: 10/s }", "{ rate: 10/s, max_keys: 4096 }")]
    [InlineData("{ plans: { a: { rate: 1/s }, b: { rate: 2/s } } }", "{ plans: { a: { rate: 1/s }, b: { rate: 3/s } } }")]
    [InlineData("{ plans: { a: { rate: 1/s }, b: { rate: 2/s } } }", "{ plans: { a: { rate: 1/s }, c: { rate: 2/s } } }")]
    [InlineData("{ plans: { a: { rate: 1/s }, b: { rate: 2/s } } }", "{ plans: { a: { rate: 1/s }, b: { rate: 2/s } }, default_plan: b }")]
    [InlineData("{ rate: 10/s }", "{ rate: 10/s, store: redis, redis: { address: 127.0.0.1:1 } }")]
    [InlineData("{ rate: 1/m, store: redis, redis: { address: 127.0.0.1:1, local_budget: 5 } }", "{ rate: 1/m, store: redis, redis: { address: 127.0.0.1:1, local_budget: 6 } }")]
    public void Compile_ChangedRateLimitState_StartsFresh(string before, string after)
    {
        var first = ConfigLoader.LoadText(WithPolicy(before), "a.yaml").Snapshot!;

        var result = ConfigLoader.LoadText(WithPolicy(after), "a.yaml", first);

        Assert.True(result.Success, string.Join("\n", result.Errors));
        RateLimitFilter was = Limit(first), now = Limit(result.Snapshot!);
        Assert.False(now.KeptState);
        Assert.NotSame(was.Table, now.Table);
    }
}
