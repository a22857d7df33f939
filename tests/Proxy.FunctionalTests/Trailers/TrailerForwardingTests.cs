using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Trailers;

/// <summary>HTTP/1.1 chunked trailer sections relayed both ways (RFC 9112 section 7.1.2), minus the fields no trailer may carry.</summary>
public sealed class TrailerForwardingTests
{
    [Fact]
    public async Task RequestTrailers_ChunkedToUpstream_ForwardedExactlyWithoutForbiddenFields()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
            + "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nContent-Length: 5\r\nHost: evil.test\r\nTE: trailers\r\nConnection: close\r\ngrpc-status:  0\r\n\r\n");
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("hello", forwarded.BodyText);
        // The kept lines go out as they came (name case and value whitespace included), the rest are gone.
        Assert.EndsWith("5\r\nhello\r\n0\r\nX-Checksum: abc\r\ngrpc-status:  0\r\n\r\n", scenario.Upstream.ReceivedText, StringComparison.Ordinal);
        ProxyAssert.UpstreamHadNoErrors(scenario.Upstream);

        // The connection is still in step: the next request works.
        await client.SendAsync(Wire.Get("/next"));
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
    }

    /// <summary>
    /// A field the proxy owns in the request head (set, replaced or removed there) cannot come back as a trailer: an
    /// upstream that merges trailers into headers would otherwise see the client's X-Forwarded-For, request id, trace
    /// context, or a field the route's policy removes or sets.
    /// </summary>
    [Fact]
    public async Task RequestTrailers_FieldsTheProxyOwnsInTheHead_NotForwarded()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await ForwardingTests.StartWithHeaderPolicyAsync(upstream);
        await using var client = await proxy.ConnectAsync();
        const string Trailers = "X-Checksum: abc\r\nX-Internal-User: admin\r\nX-ENV: dev\r\nX-Forwarded-For: 10.0.0.1\r\n"
            + "x-forwarded-proto: https\r\nX-Request-Id: forged\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
            + "Forwarded: for=10.0.0.1\r\nX-Other: 1\r\n";

        await client.SendAsync("POST /api/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5\r\nhello\r\n0\r\n" + Trailers + "\r\n");
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        await upstream.WaitForRequestAsync();
        string withPolicy = upstream.ReceivedText;
        await client.SendAsync("POST /open/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5\r\nhello\r\n0\r\n" + Trailers + "\r\n");
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        await upstream.WaitForRequestAsync(2);

        Assert.EndsWith("5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n", withPolicy, StringComparison.Ordinal);
        // Without the route's policy only the proxy's own fields go.
        Assert.EndsWith("5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Internal-User: admin\r\nX-ENV: dev\r\nX-Other: 1\r\n\r\n",
            upstream.ReceivedText, StringComparison.Ordinal);
    }

    /// <summary>
    /// A <c>deny</c> policy screens every header value; a request trailer is screened the same way, and one that trips a
    /// rule is dropped (the request is upstream by then, too late for a 403). Otherwise the payload refused in a header
    /// would reach an upstream that merges trailers into headers by moving it to a trailer.
    /// </summary>
    [Fact]
    public async Task RequestTrailers_ValueTrippingTheRoutesDenyPolicy_NotForwarded()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await TestProxy.StartAsync($$"""
            policies:
              waf: { deny: { sql_injection: true, xss: true, patterns: [wp-login] } }
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: api, match: { path: "/api/{**rest}" }, cluster: backend, policies: [waf] }
              - { id: open, match: { path: "/open/{**rest}" }, cluster: backend }
            clusters:
              backend:
                destinations: ["{{upstream.Address}}"]

            """);
        await using var client = await proxy.ConnectAsync();
        const string Trailers = "X-Checksum: abc\r\nX-Search: 1%20UNION%20SELECT password\r\nX-Note: <script>alert(1)</script>\r\n"
            + "X-Path: /wp-login.php\r\nX-Other: 1\r\n";

        await client.SendAsync("POST /api/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5\r\nhello\r\n0\r\n" + Trailers + "\r\n");
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        await upstream.WaitForRequestAsync();
        string withPolicy = upstream.ReceivedText;
        await client.SendAsync("POST /open/upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5\r\nhello\r\n0\r\n" + Trailers + "\r\n");
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        await upstream.WaitForRequestAsync(2);

        Assert.EndsWith("5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n", withPolicy, StringComparison.Ordinal);
        // A route without the policy relays them all.
        Assert.EndsWith("5\r\nhello\r\n0\r\n" + Trailers + "\r\n", upstream.ReceivedText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ResponseTrailers_ChunkedToClient_ExactBytesWithoutForbiddenFields()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n"
            + "5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\nx-sum: 1\r\n\r\n"));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("GET /t HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n");
        var result = await client.ReadToCloseAsync();

        Assert.Contains("transfer-encoding: chunked\r\n", result.Text, StringComparison.Ordinal);
        Assert.EndsWith("\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\nx-sum: 1\r\n\r\n", result.Text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ResponseTrailers_Http10Client_DroppedWithCloseDelimitedBody()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n"));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("GET /t HTTP/1.0\r\nHost: example.test\r\n\r\n");
        var result = await client.ReadToCloseAsync();

        Assert.EndsWith("\r\n\r\nhello", result.Text, StringComparison.Ordinal);
    }
}
