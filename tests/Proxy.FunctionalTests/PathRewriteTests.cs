using System.Text.Json;
using Proxy.FunctionalTests.Grpc;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// A route's <c>rewrite: { path }</c> (docs/routing.md, "Path rewrite"): the upstream receives the rewritten target,
/// byte for byte, with the client's query; the access log keeps the client's path.
/// </summary>
public sealed class PathRewriteTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-rewrite-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private const string RewriteRoutes = """
          - { id: api, match: { path: "/api/{**rest}" }, rewrite: { path: "/v2/{rest}" }, cluster: backend }
          - { id: user, match: { path: "/users/{id}/profile" }, rewrite: { path: "/profiles/{id}.json" }, cluster: backend }
          - { id: fixed, match: { path: "/status" }, rewrite: { path: "/internal/health" }, cluster: backend }
          - { id: all, match: { path: "/{**rest}" }, cluster: backend }
        """;

    private static ProxyConfig WithRewrites(ProxyConfig config) => config with { Routes = RewriteRoutes };

    [Theory]
    [InlineData("/api/orders/42", "/v2/orders/42")]
    [InlineData("/api/orders/42?x=1&y=%41", "/v2/orders/42?x=1&y=%41")]
    [InlineData("/api", "/v2/")]
    [InlineData("/api/", "/v2/")]
    [InlineData("/api?q", "/v2/?q")]
    [InlineData("/api/a%2Fb%20c/%C3%A9", "/v2/a%2Fb%20c/%C3%A9")]
    [InlineData("/api/a%2fb", "/v2/a%2Fb")]
    [InlineData("/api/%7Ejoe", "/v2/~joe")]
    [InlineData("/users/7/profile", "/profiles/7.json")]
    [InlineData("/users/j%20d/profile?full=1", "/profiles/j%20d.json?full=1")]
    [InlineData("/status?verbose", "/internal/health?verbose")]
    [InlineData("/other/path?z", "/other/path?z")]
    [InlineData("http://example.test/api/x?q=1", "/v2/x?q=1")]
    public async Task Get_RouteWithRewrite_UpstreamRequestLineRewritten(string target, string expected)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithRewrites);

        var (response, client) = await scenario.SendAsync(Wire.Get(target));
        await client.DisposeAsync();
        var forwarded = await scenario.Upstream.WaitForRequestAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal(expected, forwarded.Target);
        Assert.StartsWith($"GET {expected} HTTP/1.1\r\n", scenario.Upstream.ReceivedText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PostAndHead_KeepAlive_EachRewrittenWithItsBody()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithRewrites);
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("POST /api/items?dry=1 HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello");
        var post = await client.ReadResponseAsync("POST");
        await client.SendAsync("POST /api HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        var chunked = await client.ReadResponseAsync("POST");
        // Last: the Ok upstream answers HEAD with a body too, which spoils its connection for anything after.
        await client.SendAsync("HEAD /users/9/profile HTTP/1.1\r\nHost: example.test\r\n\r\n");
        var head = await client.ReadResponseAsync("HEAD");

        Assert.Equal(200, post.Status);
        Assert.Equal("POST /v2/items?dry=1", post.BodyText);
        Assert.Equal(200, head.Status);
        Assert.Equal(200, chunked.Status);
        Assert.Equal("POST /v2/", chunked.BodyText);
        var requests = scenario.Upstream.Requests;
        Assert.Equal(["/v2/items?dry=1", "/v2/", "/profiles/9.json"], requests.Select(r => r.Target));
        Assert.Equal("hello", requests[0].BodyText);
        Assert.Equal("abc", requests[1].BodyText);
        Assert.Equal("HEAD", requests[2].Method);
    }

    [Fact]
    public async Task WebSocketUpgrade_RouteWithRewrite_UpgradeRequestRewritten()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.SwitchingProtocolsEcho(), WithRewrites);
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/api/socket?room=1", "example.test",
            "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="));
        var response = await client.ReadResponseAsync();

        Assert.Equal(101, response.Status);
        Assert.Equal("/v2/socket?room=1", (await scenario.Upstream.WaitForRequestAsync()).Target);
    }

    [Fact]
    public async Task AccessLog_RouteWithRewrite_ShowsTheClientsPath()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string log = Path.Combine(_directory, "access.log");
        string yaml = new ProxyConfig { BackendPort = upstream.Port, Routes = RewriteRoutes }.Render() + $$"""
            access_log: { path: "{{log}}" }
            """;
        await using var proxy = await TestProxy.StartAsync(yaml);

        await using (var client = await proxy.ConnectAsync())
        {
            await client.SendAsync(Wire.Get("/api/orders?id=1"));
            Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        }

        Assert.Equal("/v2/orders?id=1", (await upstream.WaitForRequestAsync()).Target);
        JsonElement line = await WaitForLineAsync(log);
        Assert.Equal("api", line.GetProperty("route").GetString());
        Assert.Equal("/api/orders", line.GetProperty("path").GetString());
    }

    [Theory]
    [InlineData("/api/echo", "/target/echo")]
    [InlineData("/api/a%2Fb?x=%41&y", "/target/a%2Fb?x=%41&y")]
    [InlineData("/api", "/target/")]
    public async Task H2cUpstream_RouteWithRewrite_PathPseudoHeaderRewritten(string target, string expected)
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: api, match: { path: "/api/{**rest}" }, rewrite: { path: "/target/{rest}" }, cluster: backend }
            clusters:
              backend:
                protocol: h2c
                destinations: [{ address: "http://127.0.0.1:{{upstream.Port}}" }]
            """);
        await using var client = await proxy.ConnectAsync();

        // Twice on one connection: the second reuses the HPACK state and the forwarder's :path buffer.
        for (int i = 0; i < 2; i++)
        {
            await client.SendAsync(Wire.Get(target));
            var response = await client.ReadResponseAsync();
            Assert.Equal(200, response.Status);
            Assert.Equal(expected, response.BodyText);
        }
    }

    private static async Task<JsonElement> WaitForLineAsync(string path)
    {
        var deadline = DateTime.UtcNow + TestDefaults.Timeout;
        while (true)
        {
            string[] lines = File.Exists(path) ? (await File.ReadAllLinesAsync(path)).Where(l => l.Length > 0).ToArray() : [];
            if (lines.Length > 0)
            {
                return JsonDocument.Parse(lines[0]).RootElement.Clone();
            }
            Assert.True(DateTime.UtcNow < deadline, $"no access log line in {path}");
            await Task.Delay(20);
        }
    }

    /// <summary>An HTTP/2 client's stream through a rewrite to an HTTP/1.1 upstream: its request line carries the rewrite.</summary>
    [Fact]
    public async Task Http2Client_RouteWithRewrite_UpstreamRequestLineRewritten()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), WithRewrites);
        await using var client = await Http2.Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: true, Http2.Http2TestClient.Get("/users/9/profile?v=2"));
        var response = await client.ReadResponseAsync(1);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("/profiles/9.json?v=2", forwarded.Target);
    }

    /// <summary>
    /// A retried request is rewritten on every try: the upstream answers the first 503, the retry's request line
    /// carries the same rewritten target.
    /// </summary>
    [Fact]
    public async Task RetriedRequest_EachTryRewritten()
    {
        int tries = 0;
        await using var scenario = await ProxyScenario.StartAsync(
            UpstreamBehaviors.Respond((request, _) => Interlocked.Increment(ref tries) == 1
                ? Wire.Response(503, "busy", ("content-type", "text/plain"))
                : Wire.Response(200, request.Target, ("content-type", "text/plain"))),
            c => WithRewrites(c) with { ClusterExtra = "retry: { attempts: 2, on: [503], backoff: { base: 1ms, max: 5ms } }" });

        var (response, client) = await scenario.SendAsync(Wire.Get("/api/orders/1?x=1"));
        await client.DisposeAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("/v2/orders/1?x=1", response.BodyText);
        Assert.Equal(["/v2/orders/1?x=1", "/v2/orders/1?x=1"], scenario.Upstream.Requests.Select(r => r.Target));
    }
}
