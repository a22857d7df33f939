using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>X-Request-Id: kept when the client sends a valid one, generated otherwise, upstream and on local replies.</summary>
public sealed class RequestIdTests
{
    private static string Header(HttpMessage message, string name)
        => message.Headers.Where(h => h.Key.Equals(name, StringComparison.OrdinalIgnoreCase)).Select(h => h.Value).SingleOrDefault()
           ?? throw new Xunit.Sdk.XunitException($"no {name} in:\n{message.StartLine}");

    private static int Count(HttpMessage message, string name)
        => message.Headers.Count(h => h.Key.Equals(name, StringComparison.OrdinalIgnoreCase));

    [Fact]
    public async Task RequestId_Absent_GeneratedAndForwarded()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var (_, client) = await scenario.SendAsync("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        await using var _c = client;

        var upstreamRequest = await scenario.Upstream.WaitForRequestAsync();
        Assert.Matches("^[0-9a-f]{16}$", Header(upstreamRequest, "x-request-id"));
    }

    [Fact]
    public async Task RequestId_GeneratedTwice_Differs()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var (first, c1) = await scenario.SendAsync("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        await using var _1 = c1;
        var (second, c2) = await scenario.SendAsync("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        await using var _2 = c2;

        Assert.Matches("^[0-9a-f]{16}$", Header(first, "x-request-id"));
        Assert.NotEqual(Header(first, "x-request-id"), Header(second, "x-request-id"));
    }

    [Fact]
    public async Task RequestId_ValidIncoming_PassedThroughBothWays()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var (_, client) = await scenario.SendAsync("GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123_XYZ\r\n\r\n");
        await using var _c = client;
        var upstreamRequest = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("abc-123_XYZ", Header(upstreamRequest, "x-request-id"));
        Assert.Equal(1, Count(upstreamRequest, "x-request-id"));

        // A local reply (direct response route) returns the client's id.
        var (local, c2) = await scenario.SendAsync("GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123_XYZ\r\n\r\n");
        await using var _2 = c2;
        Assert.Equal("abc-123_XYZ", Header(local, "x-request-id"));
    }

    /// <summary>A client that names X-Request-Id in Connection makes it hop-by-hop: it is not forwarded, so the proxy's
    /// own id goes upstream and back to the client, and both sides log the same one.</summary>
    [Fact]
    public async Task RequestId_NamedInConnection_ProxyIdForwardedAndReturned()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var (response, client) = await scenario.SendAsync("GET /a HTTP/1.1\r\nHost: x\r\nConnection: x-request-id\r\nX-Request-Id: abc123\r\n\r\n");
        await using var _c = client;
        var upstreamRequest = await scenario.Upstream.WaitForRequestAsync();

        Assert.Equal(1, Count(upstreamRequest, "x-request-id"));
        Assert.Matches("^[0-9a-f]{16}$", Header(upstreamRequest, "x-request-id"));
        Assert.Equal(Header(upstreamRequest, "x-request-id"), Header(response, "x-request-id"));
    }

    [Fact]
    public async Task RequestId_InvalidIncoming_ReplacedUpstream()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        string tooLong = new('a', 129);

        var (_, client) = await scenario.SendAsync($"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: {tooLong}\r\n\r\n");
        await using var _c = client;

        var upstreamRequest = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal(1, Count(upstreamRequest, "x-request-id"));
        Assert.Matches("^[0-9a-f]{16}$", Header(upstreamRequest, "x-request-id"));
    }

    [Fact]
    public async Task RequestId_NoRoute404_CarriesId()
    {
        await using var proxy = await TestProxy.StartAsync("""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
            """);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync("GET /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-1\r\n\r\n");
        var response = await client.ReadResponseAsync();

        Assert.Equal(404, response.Status);
        Assert.Equal("trace-1", Header(response, "x-request-id"));
    }
}
