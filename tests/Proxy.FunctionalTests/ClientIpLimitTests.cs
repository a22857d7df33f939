using System.Net.Sockets;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary><c>limits.max_connections_per_ip</c> and <c>limits.max_requests_per_ip</c> with real sockets (all from 127.0.0.1).</summary>
public sealed class ClientIpLimitTests
{
    private static string Yaml(string upstream, string limits) => $$"""
        limits: { {{limits}} }
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: all, match: { path: "/{**rest}" }, cluster: backend }
        clusters:
          backend: { destinations: ["{{upstream}}"] }

        """;

    [Fact]
    public async Task MaxConnectionsPerIp_OverCap_NewConnectionClosedUnanswered_ThenAdmittedWhenOneCloses()
    {
        await using var upstream = FaultyUpstream.Start("up");
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, "max_connections_per_ip: 2"));
        var first = await proxy.ConnectAsync();
        await using var second = await proxy.ConnectAsync();
        foreach (var c in new[] { first, second })
        {
            await c.SendAsync(Wire.Get("/x"));
            Assert.Equal(200, (await c.ReadResponseAsync()).Status);
        }

        await using (var third = await proxy.ConnectAsync())
        {
            await third.SendAsync(Wire.Get("/x"));
            var result = await third.ReadToCloseAsync(TimeSpan.FromSeconds(5));
            Assert.True(result.Closed, "The connection past the cap must be closed.");
            Assert.Empty(result.Bytes);
        }

        // The two admitted connections still work; once one closes, a new one is admitted.
        await second.SendAsync(Wire.Get("/x"));
        Assert.Equal(200, (await second.ReadResponseAsync()).Status);
        await first.DisposeAsync();
        var deadline = DateTime.UtcNow + TestDefaults.Timeout;
        while (true)
        {
            await using var fourth = await proxy.ConnectAsync();
            await fourth.SendAsync(Wire.Get("/x"));
            try
            {
                var response = await fourth.ReadResponseAsync(timeout: TimeSpan.FromSeconds(2));
                Assert.Equal(200, response.Status);
                break;
            }
            catch (Exception) when (DateTime.UtcNow < deadline)
            {
                // The close of the first connection may not have been processed yet.
                await Task.Delay(50);
            }
        }
    }

    [Fact]
    public async Task MaxConnectionsPerIp_ManyRefusals_AddressAdmittedAgainAfterClose()
    {
        await using var upstream = FaultyUpstream.Start("up");
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, "max_connections_per_ip: 1"));
        await using (var held = await proxy.ConnectAsync())
        {
            await held.SendAsync(Wire.Get("/x"));
            Assert.Equal(200, (await held.ReadResponseAsync()).Status);
            for (int i = 0; i < 20; i++)
            {
                await using var refused = await proxy.ConnectAsync();
                Assert.True((await refused.ReadToCloseAsync(TimeSpan.FromSeconds(5))).Closed);
            }
        }
        // Refusals took nothing: once the held connection is gone, the address is at zero and is admitted again.
        var deadline = DateTime.UtcNow + TestDefaults.Timeout;
        while (true)
        {
            await using var next = await proxy.ConnectAsync();
            await next.SendAsync(Wire.Get("/x"));
            try
            {
                Assert.Equal(200, (await next.ReadResponseAsync(timeout: TimeSpan.FromSeconds(2))).Status);
                break;
            }
            catch (Exception) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }
        }
    }

    [Fact]
    public async Task MaxRequestsPerIp_OverCap_Returns503Overloaded()
    {
        await using var upstream = FaultyUpstream.Start("up");
        upstream.Delay = TimeSpan.FromMilliseconds(1500);
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, "max_requests_per_ip: 2"));
        await using var a = await proxy.ConnectAsync();
        await using var b = await proxy.ConnectAsync();
        await using var c = await proxy.ConnectAsync();

        await a.SendAsync(Wire.Get("/x"));
        await b.SendAsync(Wire.Get("/x"));
        await upstream.Recording.WaitForRequestAsync(2);
        await c.SendAsync(Wire.Get("/x"));
        var refused = await c.ReadResponseAsync();

        ProxyAssert.ErrorAnswer(refused, 503);
        Assert.Equal("true", refused.Header("x-proxy-overloaded"));
        Assert.Contains("client_ip_request_limit", refused.BodyText, StringComparison.Ordinal);
        Assert.Equal(200, (await a.ReadResponseAsync()).Status);
        Assert.Equal(200, (await b.ReadResponseAsync()).Status);

        // Below the cap again: a request sent the instant a and b have read their answers is served (the slots are
        // given back before the answers' last flush, so no retry is needed).
        upstream.Delay = TimeSpan.Zero;
        await using var d = await proxy.ConnectAsync();
        await d.SendAsync(Wire.Get("/x"));
        Assert.Equal(200, (await d.ReadResponseAsync()).Status);
    }

    [Fact]
    public async Task MaxRequestsPerIp_CapOne_SequentialRequestsAlternatingConnections_NeverRefused()
    {
        // Each request is sent the moment the previous answer has been read, on the other connection: if the slot
        // were given back only after the answer's last flush, some would find it still held and get 503 (as seen in
        // the suite before). (On one HTTP/1.1 connection the requests are serialised by the connection itself.)
        await using var upstream = FaultyUpstream.Start("up");
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, "max_requests_per_ip: 1"));
        await using var a = await proxy.ConnectAsync();
        await using var b = await proxy.ConnectAsync();
        int refused = 0;
        for (int i = 0; i < 200 && refused == 0; i++)
        {
            RawClient client = i % 2 == 0 ? a : b;
            await client.SendAsync(Wire.Get("/x"));
            var response = await client.ReadResponseAsync();
            refused += response.Status == 503 ? 1 : 0; // a 503 closes its connection: stop there
        }
        Assert.Equal(0, refused);
    }

    [Fact]
    public async Task MaxRequestsPerIp_CapOne_SequentialRequestsOnOneHttp2Connection_NeverRefused()
    {
        // HTTP/2: each request is its own stream, so the next one can start while the previous one's handler ends.
        await using var upstream = FaultyUpstream.Start("up");
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, "max_requests_per_ip: 1"));
        using var http2 = new HttpClient
        {
            DefaultRequestVersion = System.Net.HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        int refused = 0;
        for (int i = 0; i < 200; i++)
        {
            using var response = await http2.GetAsync(new Uri(proxy.PublicUri, "/x"));
            string body = await response.Content.ReadAsStringAsync();
            refused += (int)response.StatusCode == 503 ? 1 : 0;
            Assert.Equal(refused == 0 ? "up" : body, body);
        }
        Assert.Equal(0, refused);
    }

    [Theory]
    [InlineData("connection")]
    [InlineData("request")]
    public async Task ClientIpCaps_Refusals_CountedByKindInMetrics(string kind)
    {
        await using var upstream = FaultyUpstream.Start("up");
        upstream.Delay = TimeSpan.FromMilliseconds(1500);
        string limits = kind == "connection" ? "max_connections_per_ip: 1" : "max_requests_per_ip: 1";
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, limits) + "admin: { address: \"127.0.0.1:0\" }\n");
        using var http = new HttpClient();
        string metricsUri = $"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/metrics";
        string before = await http.GetStringAsync(metricsUri);
        Assert.Contains("proxy_client_ip_refused_total{kind=\"connection\"} 0", before, StringComparison.Ordinal);
        Assert.Contains("proxy_client_ip_refused_total{kind=\"request\"} 0", before, StringComparison.Ordinal);

        // One request in flight (the upstream has it): its connection and its request are both counted.
        await using var held = await proxy.ConnectAsync();
        await held.SendAsync(Wire.Get("/x"));
        await upstream.Recording.WaitForRequestAsync(1);
        for (int i = 0; i < 2; i++)
        {
            await using var other = await proxy.ConnectAsync();
            await other.SendAsync(Wire.Get("/x"));
            if (kind == "connection")
            {
                Assert.True((await other.ReadToCloseAsync(TimeSpan.FromSeconds(5))).Closed);
            }
            else
            {
                ProxyAssert.ErrorAnswer(await other.ReadResponseAsync(), 503);
            }
        }
        Assert.Equal(200, (await held.ReadResponseAsync()).Status);

        string after = await http.GetStringAsync(metricsUri);
        Assert.Contains($"proxy_client_ip_refused_total{{kind=\"{kind}\"}} 2", after, StringComparison.Ordinal);
        Assert.Contains($"proxy_client_ip_refused_total{{kind=\"{(kind == "connection" ? "request" : "connection")}\"}} 0", after,
            StringComparison.Ordinal);
    }
}
