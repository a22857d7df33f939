using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Cluster <c>session_affinity</c> by cookie and by header (docs/resilience.md, "Session affinity").</summary>
public sealed class SessionAffinityTests
{
    private static string Yaml(string destinations, string affinity, string extra = "")
        => ClusterYaml.Render(destinations, cluster: $"session_affinity: {affinity}\n{extra}");

    private static async Task<HttpMessage> GetAsync(TestProxy proxy, params string[] headers)
    {
        await using var client = await proxy.ConnectAsync();
        await client.SendAsync(Wire.Get("/x", "example.test", headers));
        return await client.ReadResponseAsync();
    }

    private static string CookiePair(HttpMessage response)
    {
        var setCookie = response.Header("set-cookie");
        Assert.NotNull(setCookie);
        return setCookie!.Split(';')[0];
    }

    [Fact]
    public async Task CookieMode_NoCookie_SetsOneAndLaterRequestsStick()
    {
        await using var a = FaultyUpstream.Start("a");
        await using var b = FaultyUpstream.Start("b");
        await using var proxy = await TestProxy.StartAsync(Yaml($"\"{a.Address}\", \"{b.Address}\"", "{ mode: cookie, name: sticky, ttl: 1h }"));

        var first = await GetAsync(proxy);
        Assert.Equal(200, first.Status);
        var setCookie = first.Header("set-cookie")!;
        Assert.Matches("^sticky=[0-9a-f]{16}; Path=/; HttpOnly; Max-Age=3600$", setCookie);
        string pinnedTo = first.Header("x-upstream")!;
        string cookie = CookiePair(first);

        // Round robin alone would alternate; the cookie keeps every request on the first destination, and a
        // request that already carries a valid cookie gets no new one.
        for (int i = 0; i < 6; i++)
        {
            var next = await GetAsync(proxy, $"cookie: other=1; {cookie}");
            Assert.Equal(pinnedTo, next.Header("x-upstream"));
            Assert.Null(next.Header("set-cookie"));
        }
    }

    [Fact]
    public async Task CookieMode_PinnedDestinationEjected_FallsBackAndRepins()
    {
        await using var a = FaultyUpstream.Start("a");
        await using var b = FaultyUpstream.Start("b");
        await using var proxy = await TestProxy.StartAsync(Yaml($"\"{a.Address}\", \"{b.Address}\"", "{ mode: cookie }",
            "    outlier_detection: { consecutive_failures: 1, base_ejection: 30s, max_ejection_percent: 50 }"));
        var first = await GetAsync(proxy);
        string cookie = CookiePair(first);
        Assert.StartsWith("proxy_affinity=", cookie, StringComparison.Ordinal);
        var pinned = first.Header("x-upstream") == "a" ? a : b;
        var other = ReferenceEquals(pinned, a) ? b : a;

        // The pinned destination fails once and is ejected; the request that saw the failure gets its 500.
        pinned.Status = 500;
        Assert.Equal(500, (await GetAsync(proxy, $"cookie: {cookie}")).Status);

        var moved = await GetAsync(proxy, $"cookie: {cookie}");
        Assert.Equal(200, moved.Status);
        Assert.Equal(other.Name, moved.Header("x-upstream"));
        string newCookie = CookiePair(moved);
        Assert.NotEqual(cookie, newCookie);
        var again = await GetAsync(proxy, $"cookie: {newCookie}");
        Assert.Equal(other.Name, again.Header("x-upstream"));
        Assert.Null(again.Header("set-cookie"));
    }

    [Fact]
    public async Task HeaderMode_SameValue_SameDestinationAndNoCookie()
    {
        await using var a = FaultyUpstream.Start("a");
        await using var b = FaultyUpstream.Start("b");
        await using var c = FaultyUpstream.Start("c");
        await using var proxy = await TestProxy.StartAsync(Yaml($"\"{a.Address}\", \"{b.Address}\", \"{c.Address}\"", "{ mode: header, name: x-user }"));

        var seen = new HashSet<string>();
        for (int user = 0; user < 12; user++)
        {
            var firstAnswer = await GetAsync(proxy, $"x-user: user-{user}");
            Assert.Null(firstAnswer.Header("set-cookie"));
            string served = firstAnswer.Header("x-upstream")!;
            seen.Add(served);
            for (int i = 0; i < 3; i++)
            {
                Assert.Equal(served, (await GetAsync(proxy, $"x-user: user-{user}")).Header("x-upstream"));
            }
        }
        // 12 values hashed over 3 destinations do not all land on one (probability 3 * (1/3)^12).
        Assert.True(seen.Count > 1);
    }
}
