using Proxy.FunctionalTests.Http2;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// A route must not be escaped by spelling its path another way the upstream reads the same: percent-encoded
/// unreserved characters (RFC 3986 section 6.2.2.2) are decoded before routing and forwarded decoded; invalid
/// percent-encoding is refused. Here a route answers 403 for /admin and everything else goes to the upstream.
/// </summary>
public sealed class PathNormalizationTests
{
    private static ProxyConfig WithAdminDenied(ProxyConfig config) => config with
    {
        Routes = """
              - { id: admin, match: { path: "/admin/{**rest}" }, respond: { status: 403, body: "forbidden\n" } }
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            """,
    };

    [Theory]
    [InlineData("/%61dmin/secret")]
    [InlineData("/%61%64%6D%69%6E/secret")]
    [InlineData("/adm%69n/secret?x=1")]
    public async Task EncodedUnreservedCharacters_MatchTheDecodedRoute(string target)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithAdminDenied);

        var (response, client) = await scenario.SendAsync(Wire.Get(target));
        await client.DisposeAsync();

        Assert.Equal(403, response.Status);
        Assert.Empty(scenario.Upstream.Requests);
    }

    [Fact]
    public async Task EncodedUnreservedCharacters_ForwardedDecoded_OtherEscapesAsSent()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithAdminDenied);

        var (response, client) = await scenario.SendAsync(Wire.Get("/%7Ejoe/a%2Fb%20c?q=%61"));
        await client.DisposeAsync();
        var forwarded = await scenario.Upstream.WaitForRequestAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("/~joe/a%2Fb%20c?q=%61", forwarded.Target);
    }

    private static ProxyConfig WithCafeDenied(ProxyConfig config) => config with
    {
        Routes = """
              - { id: cafe, match: { path: "/caf%C3%A9/{**rest}" }, respond: { status: 403, body: "forbidden\n" } }
              - { id: lower, match: { path: "/th%c3%a9/{**rest}" }, respond: { status: 403, body: "forbidden\n" } }
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            """,
    };

    [Theory]
    [InlineData("/caf%C3%A9/admin")]
    [InlineData("/caf%c3%a9/admin")]
    [InlineData("/caf%C3%a9/admin?x=%aa")]
    [InlineData("/th%C3%A9/admin")]
    [InlineData("/th%c3%A9/admin")]
    public async Task EscapeHexCase_MatchesTheRouteEitherWay(string target)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithCafeDenied);

        var (response, client) = await scenario.SendAsync(Wire.Get(target));
        await client.DisposeAsync();

        Assert.Equal(403, response.Status);
        Assert.Empty(scenario.Upstream.Requests);
    }

    [Fact]
    public async Task KeptEscapes_ForwardedWithUpperCaseHex_QueryAsSent()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithCafeDenied);

        var (response, client) = await scenario.SendAsync(Wire.Get("/a%2fb%c3%a9%7e?q=%c3%a9"));
        await client.DisposeAsync();
        var forwarded = await scenario.Upstream.WaitForRequestAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("/a%2Fb%C3%A9~?q=%c3%a9", forwarded.Target);
    }

    [Fact]
    public async Task Http2_EscapeHexCase_MatchesTheRouteEitherWay()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithCafeDenied);
        await using var h2 = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await h2.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/caf%c3%a9/admin"));
        var response = await h2.ReadResponseAsync(1);

        Assert.Equal(403, response.Status);
        Assert.Empty(scenario.Upstream.Requests);
    }

    [Theory]
    [InlineData("/a%zz")]
    [InlineData("/a%4")]
    [InlineData("/%")]
    public async Task InvalidPercentEncoding_Returns400AndForwardsNothing(string target)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithAdminDenied);

        var (response, client) = await scenario.SendAsync(Wire.Get(target));
        await client.DisposeAsync();

        Assert.Equal(400, response.Status);
        Assert.Empty(scenario.Upstream.Requests);
    }

    [Fact]
    public async Task Http2_EncodedUnreservedCharacters_MatchTheDecodedRoute()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithAdminDenied);
        await using var h2 = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await h2.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/%61dmin/secret"));
        var response = await h2.ReadResponseAsync(1);

        Assert.Equal(403, response.Status);
        Assert.Empty(scenario.Upstream.Requests);
    }
}
