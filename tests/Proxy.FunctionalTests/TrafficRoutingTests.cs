using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Weighted splits and header/cookie canaries (docs/routing.md, "Canary and weighted routing") over real sockets.</summary>
public sealed class TrafficRoutingTests
{
    private static string Yaml(string stable, string canary, string route) => $$"""
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: all, match: { path: "/{**rest}" }, {{route}} }
        clusters:
          stable: { destinations: ["{{stable}}"] }
          canary: { destinations: ["{{canary}}"] }

        """;

    private static async Task<string?> ServedByAsync(RawClient client, params string[] headers)
    {
        await client.SendAsync(Wire.Get("/x", "example.test", headers));
        var response = await client.ReadResponseAsync();
        Assert.Equal(200, response.Status);
        return response.Header("x-upstream");
    }

    [Fact]
    public async Task WeightedClusters_NinetyTen_SplitsTrafficNearTheWeights()
    {
        await using var stable = FaultyUpstream.Start("stable");
        await using var canary = FaultyUpstream.Start("canary");
        await using var proxy = await TestProxy.StartAsync(Yaml(stable.Address, canary.Address,
            "clusters: [{ name: stable, weight: 90 }, { name: canary, weight: 10 }]"));
        await using var client = await proxy.ConnectAsync();

        int toCanary = 0;
        const int Requests = 1000;
        for (int i = 0; i < Requests; i++)
        {
            if (await ServedByAsync(client) == "canary")
            {
                toCanary++;
            }
        }
        // Binomial(1000, 0.1): mean 100, standard deviation 9.5; 55..145 is beyond 4.7 deviations either side.
        Assert.InRange(toCanary, 55, 145);
        Assert.Equal(Requests - toCanary, stable.TrafficCount);
    }

    [Fact]
    public async Task WeightedClusters_ZeroWeight_NeverTakesTraffic()
    {
        await using var stable = FaultyUpstream.Start("stable");
        await using var canary = FaultyUpstream.Start("canary");
        await using var proxy = await TestProxy.StartAsync(Yaml(stable.Address, canary.Address,
            "clusters: [{ name: stable, weight: 1 }, { name: canary, weight: 0 }]"));
        await using var client = await proxy.ConnectAsync();
        for (int i = 0; i < 50; i++)
        {
            Assert.Equal("stable", await ServedByAsync(client));
        }
        Assert.Equal(0, canary.TrafficCount);
    }

    [Fact]
    public async Task CanaryHeader_MatchingValue_GoesToCanaryOthersStayOnStable()
    {
        await using var stable = FaultyUpstream.Start("stable");
        await using var canary = FaultyUpstream.Start("canary");
        await using var proxy = await TestProxy.StartAsync(Yaml(stable.Address, canary.Address,
            "cluster: stable, canary: { cluster: canary, header: { name: X-Canary, value: \"1\" } }"));
        await using var client = await proxy.ConnectAsync();

        Assert.Equal("canary", await ServedByAsync(client, "x-canary: 1"));
        Assert.Equal("canary", await ServedByAsync(client, "X-CANARY: 1"));
        Assert.Equal("stable", await ServedByAsync(client, "x-canary: 0"));
        Assert.Equal("stable", await ServedByAsync(client));
        Assert.Equal(2, canary.TrafficCount);
    }

    [Fact]
    public async Task CanaryCookie_AmongOtherCookies_GoesToCanary()
    {
        await using var stable = FaultyUpstream.Start("stable");
        await using var canary = FaultyUpstream.Start("canary");
        await using var proxy = await TestProxy.StartAsync(Yaml(stable.Address, canary.Address,
            "clusters: [stable], canary: { cluster: canary, cookie: { name: canary, value: \"yes\" } }"));
        await using var client = await proxy.ConnectAsync();

        Assert.Equal("canary", await ServedByAsync(client, "cookie: session=abc; canary=yes; theme=dark"));
        Assert.Equal("canary", await ServedByAsync(client, "cookie: canary=\"yes\""));
        Assert.Equal("stable", await ServedByAsync(client, "cookie: canary=no"));
        Assert.Equal("stable", await ServedByAsync(client, "cookie: xcanary=yes"));
        Assert.Equal("stable", await ServedByAsync(client, "x-canary: yes"));
    }

    [Fact]
    public async Task CanaryRouting_SteadyState_DecisionAllocatesNothing()
    {
        await using var stable = FaultyUpstream.Start("stable");
        await using var canary = FaultyUpstream.Start("canary");
        await using var proxy = await TestProxy.StartAsync(Yaml(stable.Address, canary.Address,
            "clusters: [{ name: stable, weight: 50 }, { name: canary, weight: 50 }], canary: { cluster: canary, cookie: { name: c, value: \"1\" } }"));
        var route = proxy.Server.Snapshot.Routes.Match(Head("cookie: a=b; c=0"), 0)!;
        var head = Head("cookie: a=b; c=0");
        long allocated = BestOfRounds(() => route.SelectCluster(head), iterations: 1000);
        Assert.Equal(0, allocated);
    }

    /// <summary>
    /// The fewest bytes this thread allocated over <paramref name="iterations"/> calls in any of three rounds, after a
    /// warming round: the runtime may allocate once on this thread while it re-tiers a hot loop (tiered compilation,
    /// on-stack replacement), which hits one round at most; a per-call allocation shows in every round. The unit
    /// tests' SteadyStateAllocation does the same; this project does not reference that one.
    /// </summary>
    private static long BestOfRounds(Action iteration, int iterations)
    {
        for (int i = 0; i < iterations; i++)
        {
            iteration();
        }
        long best = long.MaxValue;
        for (int round = 0; round < 3; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < iterations; i++)
            {
                iteration();
            }
            best = Math.Min(best, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        return best;
    }

    private static Proxy.Http.RequestHead Head(string field)
    {
        var head = new Proxy.Http.RequestHead();
        var bytes = System.Text.Encoding.ASCII.GetBytes($"GET /x HTTP/1.1\r\nhost: example.test\r\n{field}\r\n\r\n");
        var status = Proxy.Http1.Http1RequestReader.TryRead(new System.Buffers.ReadOnlySequence<byte>(bytes), head, Proxy.Http.HttpLimits.Default, out _, out _);
        Assert.Equal(Proxy.Http1.HeadStatus.Complete, status);
        return head;
    }
}
