using Proxy.Configuration;

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

        var second = ConfigLoader.LoadText(Yaml("", routeId: "other"), "a.yaml", first.Clusters).Snapshot!;

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

        var result = ConfigLoader.LoadText(Yaml(extra), "a.yaml", first.Clusters);

        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.NotSame(first.Clusters["backend"], result.Snapshot!.Clusters["backend"]);
    }

    [Fact]
    public void Compile_DefaultSpelledOut_SameDefinition()
    {
        var first = ConfigLoader.LoadText(Yaml(""), "a.yaml").Snapshot!;

        var second = ConfigLoader.LoadText(Yaml("    connect_timeout: 2s"), "a.yaml", first.Clusters).Snapshot!;

        Assert.Same(first.Clusters["backend"], second.Clusters["backend"]);
    }

    [Fact]
    public void Read_WatchConfig_ParsedIntoServerModel()
    {
        var snapshot = ConfigLoader.LoadText("server: { watch_config: false }\n" + Yaml(""), "a.yaml").Snapshot!;

        Assert.False(snapshot.Server.WatchConfig);
        Assert.Null(ConfigLoader.LoadText(Yaml(""), "a.yaml").Snapshot!.Server.WatchConfig);
    }
}
