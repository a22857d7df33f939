using Proxy.Configuration;
using Proxy.Model;

namespace Proxy.Core.Tests.Traffic;

/// <summary>The keys of canary routing, timeouts and per-IP caps: parsed, validated with positions, compiled.</summary>
public class TrafficConfigTests
{
    private static string Config(string route, string clusterExtra = "", string limits = "") => $$"""
        {{(limits.Length > 0 ? $"limits: {{ {limits} }}" : "")}}
        listeners:
          - { name: public, address: "127.0.0.1:8080" }
        routes:
          - { id: r, match: { path: "/{**rest}" }, {{route}} }
        clusters:
          stable:
            destinations: ["http://127.0.0.1:9000"]
        {{clusterExtra}}
          canary:
            destinations: ["http://127.0.0.1:9001"]

        """;

    private static ConfigLoadResult Load(string yaml) => ConfigLoader.LoadText(yaml, "t.yaml");

    private static ProxySnapshot Compile(string yaml)
    {
        var result = Load(yaml);
        Assert.True(result.Errors.Count == 0, string.Join("\n", result.Errors));
        return result.Snapshot!;
    }

    private static string AllErrors(string yaml) => string.Join("\n", Load(yaml).Errors.Select(e => e.ToString()));

    private static RouteModel Route(ProxySnapshot snapshot) => snapshot.Routes.InMatchOrder.Single(r => r.Id == "r");

    [Fact]
    public void Compile_WeightedClusters_BuildsCumulativeSplit()
    {
        var route = Route(Compile(Config("clusters: [{ name: stable, weight: 90 }, { name: canary, weight: 10 }]")));
        Assert.NotNull(route.Split);
        Assert.Equal(100, route.Split!.Total);
        Assert.Equal([90, 100], route.Split.Cumulative);
        Assert.Equal("stable", route.Cluster!.Name);
        Assert.Equal("stable", route.Split.Pick(0).Name);
        Assert.Equal("stable", route.Split.Pick(89).Name);
        Assert.Equal("canary", route.Split.Pick(90).Name);
        Assert.Equal("canary", route.Split.Pick(99).Name);
    }

    /// <summary>The sum of the weights went past int.MaxValue, turned negative, and every draw threw.</summary>
    [Fact]
    public void SelectCluster_WeightsSumPastIntMaxValue_DrawsWithoutOverflow()
    {
        var compiled = Route(Compile(Config("clusters: [stable, canary]")));
        var (stable, canary) = (compiled.Split!.Clusters[0], compiled.Split.Clusters[1]);
        var split = new WeightedClustersModel([stable, canary], [int.MaxValue, int.MaxValue]);
        var route = new RouteModel { Id = "r", Order = 0, Match = compiled.Match, Cluster = stable, Split = split };

        Assert.Equal(2L * int.MaxValue, split.Total);
        Assert.Same(stable, split.Pick(int.MaxValue - 1));
        Assert.Same(canary, split.Pick(split.Total - 1));
        var seen = new HashSet<string>();
        for (int i = 0; i < 200; i++)
        {
            seen.Add(route.SelectCluster(null!).Name);
        }
        Assert.Equal(["canary", "stable"], seen.Order());
    }

    [Fact]
    public void Compile_BareNamesInClusters_WeightOneEach()
    {
        var route = Route(Compile(Config("clusters: [stable, canary]")));
        Assert.Equal(2, route.Split!.Total);
    }

    [Fact]
    public void Compile_CanaryHeader_LowerCasesNameKeepsValue()
    {
        var route = Route(Compile(Config("cluster: stable, canary: { cluster: canary, header: { name: X-Canary, value: On } }")));
        Assert.Equal("x-canary"u8.ToArray(), route.Canary!.HeaderName);
        Assert.Equal("On"u8.ToArray(), route.Canary.Value);
        Assert.Null(route.Canary.CookieName);
        Assert.Equal("canary", route.Canary.Cluster.Name);
        Assert.Null(route.Split);
    }

    [Fact]
    public void Validate_ClusterAndClusters_ReportsBoth()
        => Assert.Contains("has both 'cluster' and 'clusters'", AllErrors(Config("cluster: stable, clusters: [canary]")));

    [Fact]
    public void Validate_UnknownClusterInSplit_SuggestsNearest()
        => Assert.Contains("unknown cluster 'canry'; did you mean 'canary'?", AllErrors(Config("clusters: [stable, canry]")));

    [Fact]
    public void Validate_AllWeightsZero_Reported()
        => Assert.Contains("add up to 0", AllErrors(Config("clusters: [{ name: stable, weight: 0 }]")));

    /// <summary>
    /// Each weight is at most 1,000,000, but 2,148 of them passed validation and overflowed the 32-bit running sums: every
    /// request on the route hung. A split at the limit still compiles.
    /// </summary>
    [Theory]
    [InlineData(2148, true)]
    [InlineData(2147, false)]
    public void Validate_SplitWeightsOverInt32_ReportedAtClusters(int count, bool refused)
    {
        var yaml = new System.Text.StringBuilder();
        yaml.Append("listeners:\n  - { name: public, address: \"127.0.0.1:8080\" }\nroutes:\n  - id: r\n    clusters:\n");
        for (int i = 0; i < count; i++)
        {
            yaml.Append($"      - {{ name: c{i}, weight: 1000000 }}\n");
        }
        yaml.Append("clusters:\n");
        for (int i = 0; i < count; i++)
        {
            yaml.Append($"  c{i}: {{ destinations: [\"http://127.0.0.1:9000\"] }}\n");
        }

        var errors = Load(yaml.ToString()).Errors.Select(e => e.ToString()).ToArray();

        if (refused)
        {
            Assert.Equal(["t.yaml:6:7: route 'r': the weights in 'clusters' add up to 2148000000, more than 2147483647; scale them down (only their ratios matter)"], errors);
        }
        else
        {
            Assert.Empty(errors);
        }
    }

    [Fact]
    public void Validate_DestinationWeightsOverInt32_ReportedAtCluster()
    {
        var yaml = new System.Text.StringBuilder();
        yaml.Append("listeners:\n  - { name: public, address: \"127.0.0.1:8080\" }\nclusters:\n  big:\n    destinations:\n");
        for (int i = 0; i < 2148; i++)
        {
            yaml.Append($"      - {{ address: \"http://10.0.{i / 256}.{i % 256}:9000\", weight: 1000000 }}\n");
        }

        Assert.Equal(
            ["t.yaml:4:3: cluster 'big': the weights of its destinations add up to 2148000000, more than 2147483647; scale them down (only their ratios matter)"],
            Load(yaml.ToString()).Errors.Select(e => e.ToString()));
    }

    [Fact]
    public void Validate_DuplicateClusterInSplit_Reported()
        => Assert.Contains("twice", AllErrors(Config("clusters: [stable, stable]")));

    [Fact]
    public void Validate_CanaryWithHeaderAndCookie_Reported()
        => Assert.Contains("exactly one of 'header' or 'cookie'",
            AllErrors(Config("cluster: stable, canary: { cluster: canary, header: { name: a }, cookie: { name: b } }")));

    [Fact]
    public void Validate_CanaryWithNeither_Reported()
        => Assert.Contains("exactly one of 'header' or 'cookie'", AllErrors(Config("cluster: stable, canary: { cluster: canary }")));

    [Fact]
    public void Validate_CanaryUnknownCluster_ReportedWithLine()
        => Assert.Matches(@"t\.yaml:5:\d+: .*unknown cluster 'nope'", AllErrors(Config("cluster: stable, canary: { cluster: nope, header: { name: a } }")));

    [Fact]
    public void Validate_CanaryBadCookieName_Reported()
        => Assert.Contains("not a valid cookie name", AllErrors(Config("cluster: stable, canary: { cluster: canary, cookie: { name: \"a b\" } }")));

    [Fact]
    public void Compile_RouteTimeouts_SetOnRouteOthersZero()
    {
        var route = Route(Compile(Config("cluster: stable, request_timeout: 5s, response_timeout: 2s")));
        Assert.Equal(TimeSpan.FromSeconds(5), route.Timeouts.Request);
        Assert.Equal(TimeSpan.FromSeconds(2), route.Timeouts.Response);
        Assert.Equal(TimeSpan.Zero, route.Timeouts.StreamIdle);
    }

    [Fact]
    public void Compile_ClusterTimeouts_DefaultsAndOverrides()
    {
        var snapshot = Compile(Config("cluster: stable", "    response_timeout: 3s\n    stream_idle_timeout: 4s\n    retry: { per_try_timeout: 500ms }"));
        var stable = snapshot.Clusters["stable"];
        Assert.Equal(TimeSpan.FromSeconds(3), stable.ResponseTimeout);
        Assert.Equal(TimeSpan.FromSeconds(4), stable.StreamIdleTimeout);
        Assert.Equal(TimeSpan.Zero, stable.RequestTimeout);
        Assert.Equal(TimeSpan.FromMilliseconds(500), stable.Retry!.PerTryTimeout);
        Assert.True((stable.Retry.On & RetryOn.PerTryTimeout) != 0);
        var canary = snapshot.Clusters["canary"];
        Assert.Equal(TimeSpan.FromSeconds(30), canary.ResponseTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), canary.StreamIdleTimeout);
    }

    [Fact]
    public void UpstreamTimeouts_Over_RouteWinsWhereSet()
    {
        var merged = new UpstreamTimeouts(TimeSpan.FromSeconds(1), TimeSpan.Zero, TimeSpan.Zero)
            .Over(new UpstreamTimeouts(TimeSpan.FromSeconds(9), TimeSpan.FromSeconds(8), TimeSpan.FromSeconds(7)));
        Assert.Equal(new UpstreamTimeouts(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(8), TimeSpan.FromSeconds(7)), merged);
    }

    [Fact]
    public void Read_RouteTimeoutWithoutUnit_Reported()
        => Assert.Contains("add a unit", AllErrors(Config("cluster: stable, response_timeout: 5")));

    [Fact]
    public void Compile_PerIpLimits_ServerWideInheritedByListener()
    {
        var snapshot = Compile(Config("cluster: stable", limits: "max_connections_per_ip: 8, max_requests_per_ip: 16"));
        Assert.Equal(8, snapshot.Listeners[0].Limits.MaxConnectionsPerIp);
        Assert.Equal(16, snapshot.Listeners[0].Limits.MaxRequestsPerIp);
    }

    [Fact]
    public void Read_PerIpLimitZero_Reported()
        => Assert.Contains("'max_connections_per_ip' must be at least 1", AllErrors(Config("cluster: stable", limits: "max_connections_per_ip: 0")));

    [Fact]
    public void Compile_SessionAffinityCookie_EncodesKeysAndSetCookie()
    {
        var stable = Compile(Config("cluster: stable", "    session_affinity: { mode: cookie, name: sid, ttl: 10m }")).Clusters["stable"];
        var affinity = stable.Affinity!;
        Assert.Equal(AffinityMode.Cookie, affinity.Mode);
        string key = System.Text.Encoding.ASCII.GetString(affinity.Keys[0]);
        Assert.Matches("^[0-9a-f]{16}$", key);
        Assert.Equal($"set-cookie: sid={key}; Path=/; HttpOnly; Max-Age=600\r\n", System.Text.Encoding.ASCII.GetString(affinity.SetCookieFor(stable.Destinations[0])!));
    }

    [Fact]
    public void Compile_SessionAffinitySameAddress_SameKeyAcrossLoads()
    {
        var first = Compile(Config("cluster: stable", "    session_affinity: {}")).Clusters["stable"].Affinity!;
        var second = Compile(Config("cluster: stable", "    session_affinity: { mode: cookie }")).Clusters["stable"].Affinity!;
        Assert.Equal(first.Keys[0], second.Keys[0]);
        Assert.Equal("proxy_affinity"u8.ToArray(), first.Name);
    }

    [Fact]
    public void Compile_SessionAffinityHeader_DefaultNameNoCookie()
    {
        var stable = Compile(Config("cluster: stable", "    session_affinity: { mode: header }")).Clusters["stable"];
        Assert.Equal("x-proxy-affinity"u8.ToArray(), stable.Affinity!.Name);
        Assert.Null(stable.Affinity.SetCookieFor(stable.Destinations[0]));
    }

    [Fact]
    public void Validate_SessionAffinityBadName_Reported()
        => Assert.Contains("session_affinity 'name' must be a token", AllErrors(Config("cluster: stable", "    session_affinity: { name: \"a;b\" }")));

    [Fact]
    public void Read_SessionAffinityUnknownMode_SuggestsNearest()
        => Assert.Contains("did you mean 'cookie'", AllErrors(Config("cluster: stable", "    session_affinity: { mode: cookies }")));
}
