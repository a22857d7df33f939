using System.Text.Json;
using Proxy.FunctionalTests.Http2;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Model;

namespace Proxy.FunctionalTests;

/// <summary>What the proxy forwards to the upstream and back: fields, framing, connection management, local routes.</summary>
public sealed class ForwardingTests
{
    /// <summary>
    /// An upstream that sends its head and holds its body (a server-sent event stream, a long poll): the client gets
    /// the head at once, as from nginx or Envoy. The head used to wait in the proxy's output for the first body byte.
    /// </summary>
    [Theory]
    [InlineData("content-length: 5")]
    [InlineData("transfer-encoding: chunked")]
    public async Task ResponseHeadWithoutBody_ReachesHttp11ClientBeforeTheBody(string framing)
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool chunked = framing.StartsWith("transfer", StringComparison.Ordinal);
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is null)
            {
                return;
            }
            await connection.WriteAsync($"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{framing}\r\n\r\n", ct);
            await release.Task.WaitAsync(ct);
            await connection.WriteAsync(chunked ? "5\r\nhello\r\n0\r\n\r\n" : "hello", ct);
        });
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Wire.Get("/events"));

        var head = await client.ReadResponseHeadAsync();
        Assert.Equal(200, head.Status);
        Assert.Equal("text/event-stream", head.Header("content-type"));
        release.SetResult();
        var rest = new CollectSink();
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await client.Reader.ReadExactlyAsync(chunked ? 15 : 5, rest, cts.Token);
        Assert.Contains("hello", System.Text.Encoding.Latin1.GetString(rest.ToArray()));
    }

    [Fact]
    public async Task ResponseHeadWithoutBody_ReachesHttp2ClientBeforeTheBody()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is null)
            {
                return;
            }
            await connection.WriteAsync("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 5\r\n\r\n", ct);
            await release.Task.WaitAsync(ct);
            await connection.WriteAsync("hello", ct);
        });
        using var http = new HttpClient(new SocketsHttpHandler { UseProxy = false })
        {
            DefaultRequestVersion = System.Net.HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Timeout = TestDefaults.Timeout,
        };

        using var response = await http.GetAsync(new Uri(scenario.Proxy.PublicUri, "/events"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(System.Net.HttpStatusCode.OK, response.StatusCode);
        release.SetResult();
        Assert.Equal("hello", await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Get_ThroughProxy_ForwardsRequestLineAndReturnsUpstreamResponse()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(Wire.Get("/a/b?x=1&y=%20z", "example.test", "Accept: text/plain", "X-Custom: kept"));
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.Equal("GET /a/b?x=1&y=%20z", response.BodyText);
        Assert.Equal("text/plain", response.Header("content-type"));
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("GET /a/b?x=1&y=%20z HTTP/1.1", forwarded.StartLine);
        Assert.Equal("text/plain", forwarded.Header("accept"));
        Assert.Equal("kept", forwarded.Header("x-custom"));
        ProxyAssert.UpstreamHadNoErrors(scenario.Upstream);
    }

    [Theory]
    [InlineData("DELETE")]
    [InlineData("PUT")]
    [InlineData("PATCH")]
    [InlineData("OPTIONS")]
    public async Task Method_Any_IsForwardedUnchanged(string method)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync($"{method} /m HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n");
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.Equal(method, (await scenario.Upstream.WaitForRequestAsync()).Method);
    }

    [Fact]
    public async Task HopByHopFields_InRequest_AreStripped()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(Wire.Get("/hop", "example.test",
            "Connection: keep-alive, X-Named-By-Connection",
            "X-Named-By-Connection: secret",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Trailer: X-Checksum",
            "Upgrade: h2c",
            "Proxy-Connection: keep-alive",
            "X-End-To-End: yes"));
        await using var _ = client;

        Assert.Equal(200, response.Status);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.False(forwarded.HasHeader("x-named-by-connection"), forwarded.ToString());
        Assert.False(forwarded.HasHeader("keep-alive"), forwarded.ToString());
        Assert.False(forwarded.HasHeader("te"), forwarded.ToString());
        Assert.False(forwarded.HasHeader("trailer"), forwarded.ToString());
        Assert.False(forwarded.HasHeader("upgrade"), forwarded.ToString());
        Assert.False(forwarded.HasHeader("proxy-connection"), forwarded.ToString());
        Assert.False(forwarded.ConnectionHas("x-named-by-connection"), forwarded.ToString());
        Assert.Equal("yes", forwarded.Header("x-end-to-end"));
    }

    [Fact]
    public async Task HopByHopFields_InResponse_AreStripped()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(Wire.Response(200, "ok",
            ("Connection", "keep-alive, X-Upstream-Private"),
            ("X-Upstream-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Upstream-Public", "yes"))));
        var (response, client) = await scenario.SendAsync(Wire.Get("/"));
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.Equal("ok", response.BodyText);
        Assert.False(response.HasHeader("x-upstream-private"), response.ToString());
        Assert.False(response.HasHeader("keep-alive"), response.ToString());
        Assert.False(response.HasHeader("proxy-connection"), response.ToString());
        Assert.Equal("yes", response.Header("x-upstream-public"));
    }

    [Fact]
    public async Task ForwardedFields_NoIncoming_AddsClientAddressProtoAndHost()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (_, client) = await scenario.SendAsync(Wire.Get("/xff", "example.test"));
        await using var __ = client;

        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("127.0.0.1", Assert.Single(forwarded.HeaderValues("x-forwarded-for")));
        Assert.Equal("http", Assert.Single(forwarded.HeaderValues("x-forwarded-proto")));
        Assert.Equal("example.test", Assert.Single(forwarded.HeaderValues("x-forwarded-host")));
    }

    [Fact]
    public async Task ForwardedFor_Incoming_IsAppendedTo()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (_, client) = await scenario.SendAsync(Wire.Get("/xff", "example.test", "X-Forwarded-For: 1.2.3.4"));
        await using var __ = client;

        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("1.2.3.4, 127.0.0.1", string.Join(", ", forwarded.HeaderValues("x-forwarded-for")));
    }

    [Fact]
    public async Task Host_WithPort_IsForwardedUnchanged()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (_, client) = await scenario.SendAsync(Wire.Get("/host", "Example.Test:8080"));
        await using var __ = client;

        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("Example.Test:8080", Assert.Single(forwarded.HeaderValues("host")));
    }

    [Fact]
    public async Task RequestBody_ContentLength_IsForwardedWithContentLength()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync("POST /cl HTTP/1.1\r\nHost: example.test\r\nContent-Length: 11\r\n\r\nhello world");
        await using var _ = client;

        Assert.Equal(200, response.Status);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("11", forwarded.Header("content-length"));
        Assert.False(forwarded.HasHeader("transfer-encoding"));
        Assert.Equal("hello world", forwarded.BodyText);
    }

    [Fact]
    public async Task RequestBody_Chunked_IsForwardedChunkedWithTrailers()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("POST /chunked HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        await Task.Delay(20);
        await client.SendAsync("1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n");
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.True(forwarded.Chunked, forwarded.ToString());
        Assert.False(forwarded.HasHeader("content-length"));
        Assert.Equal("hello world", forwarded.BodyText);
        Assert.Contains(forwarded.Trailers, t => t.Key.Equals("x-trailer", StringComparison.OrdinalIgnoreCase) && t.Value == "t");
        ProxyAssert.UpstreamHadNoErrors(scenario.Upstream);
    }

    [Fact]
    public async Task ExpectContinue_ProxyAnswers100AndDoesNotForwardExpect()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("POST /expect HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        var interim = await client.ReadResponseHeadAsync();
        Assert.Equal("HTTP/1.1 100 Continue", interim.StartLine);
        await client.SendAsync("hello");
        var response = await client.ReadResponseAsync("POST");

        Assert.Equal(200, response.Status);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.False(forwarded.HasHeader("expect"), forwarded.ToString());
        Assert.Equal("hello", forwarded.BodyText);
    }

    [Fact]
    public async Task ResponseBody_ContentLength_IsForwardedWithContentLength()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(Wire.Response(200, "exactly this")));
        var (response, client) = await scenario.SendAsync(Wire.Get("/"));
        await using var _ = client;

        Assert.Equal("12", response.Header("content-length"));
        Assert.False(response.Chunked);
        Assert.Equal("exactly this", response.BodyText);
    }

    [Fact]
    public async Task ResponseBody_BytesPastContentLengthInSameWrite_NotRelayedAndConnectionNotReused()
    {
        // Head, body and more bytes in one write: the body is relayed straight from the buffer (BodyPump.TryCopyBuffered),
        // and the bytes after it must neither reach the client nor be read as the answer to the next request.
        await using var scenario = await ProxyScenario.StartAsync(
            UpstreamBehaviors.Fixed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 500 Injected\r\ncontent-length: 0\r\n\r\n"));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/one"));
        var first = await client.ReadResponseAsync();
        Assert.Equal(200, first.Status);
        Assert.Equal("5", first.Header("content-length"));
        Assert.Equal("hello", first.BodyText);

        await client.SendAsync(Wire.Get("/two"));
        var second = await client.ReadResponseAsync();
        Assert.Equal(200, second.Status);
        Assert.Equal("hello", second.BodyText);
        Assert.Equal(0, client.Reader.Buffered);
        Assert.Equal(2, scenario.Upstream.ConnectionCount);
    }

    [Fact]
    public async Task ResponseBody_Chunked_IsForwardedChunked()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Chunked("one,", "two,", "three"));
        var (response, client) = await scenario.SendAsync(Wire.Get("/"));
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.True(response.Chunked, response.ToString());
        Assert.Equal("one,two,three", response.BodyText);
        // The connection is still usable: the chunked body was terminated properly.
        await client.SendAsync(Wire.Get("/again"));
        Assert.Equal("one,two,three", (await client.ReadResponseAsync()).BodyText);
    }

    [Fact]
    public async Task ResponseBody_CloseDelimitedToHttp11Client_BecomesChunked()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CloseDelimited("the body ends when the upstream closes"));
        var (response, client) = await scenario.SendAsync(Wire.Get("/close-delimited"));
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.True(response.Chunked, response.ToString());
        Assert.Equal("the body ends when the upstream closes", response.BodyText);
    }

    [Fact]
    public async Task ResponseBody_CloseDelimitedToHttp10Client_IsCloseDelimited()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CloseDelimited("for an old client"));
        var (response, client) = await scenario.SendAsync("GET /old HTTP/1.0\r\nHost: example.test\r\n\r\n");
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.False(response.Chunked, response.ToString());
        Assert.Equal("for an old client", response.BodyText);
    }

    [Fact]
    public async Task InterimResponse_103FromUpstream_IsForwardedBeforeFinal()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + Wire.Response(200, "final")));
        var (response, client) = await scenario.SendAsync(Wire.Get("/"));
        await using var _ = client;

        var interim = Assert.Single(response.Interim);
        Assert.Equal(103, interim.Status);
        Assert.Equal("</style.css>; rel=preload", interim.Header("link"));
        Assert.Equal(200, response.Status);
        Assert.Equal("final", response.BodyText);
    }

    [Theory]
    [InlineData(204, "No Content")]
    [InlineData(304, "Not Modified")]
    public async Task Response_WithoutBodyStatus_HasNoBodyAndConnectionStaysUsable(int status, string reason)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed($"HTTP/1.1 {status} {reason}\r\nETag: \"x\"\r\n\r\n"));
        var (response, client) = await scenario.SendAsync(Wire.Get("/"));
        await using var _ = client;

        Assert.Equal(status, response.Status);
        Assert.False(response.HasHeader("transfer-encoding"), response.ToString());
        // Nothing may follow the head: a stray body byte would corrupt the next response on this connection.
        await client.SendAsync(Wire.Get("/next"));
        Assert.Equal(status, (await client.ReadResponseAsync()).Status);
        Assert.Equal(0, client.Reader.Buffered);
    }

    [Fact]
    public async Task Head_UpstreamDeclaresLength_NoBodyForwarded()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("HEAD /head HTTP/1.1\r\nHost: example.test\r\n\r\n");
        var response = await client.ReadResponseAsync("HEAD");
        Assert.Equal(200, response.Status);
        Assert.Equal("1000", response.Header("content-length"));

        await client.SendAsync("HEAD /head HTTP/1.1\r\nHost: example.test\r\n\r\n");
        Assert.Equal(200, (await client.ReadResponseAsync("HEAD")).Status);
        Assert.Equal("HEAD", (await scenario.Upstream.WaitForRequestAsync(2)).Method);
        Assert.Equal(0, client.Reader.Buffered);
    }

    [Fact]
    public async Task UpstreamKeepAlive_SequentialRequests_ReuseOneUpstreamConnection()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await scenario.ConnectAsync();

        for (var i = 0; i < 3; i++)
        {
            await client.SendAsync(Wire.Get($"/seq{i}"));
            Assert.Equal($"GET /seq{i}", (await client.ReadResponseAsync()).BodyText);
        }
        await using var second = await scenario.ConnectAsync();
        await second.SendAsync(Wire.Get("/other-client"));
        Assert.Equal(200, (await second.ReadResponseAsync()).Status);

        Assert.Equal(1, scenario.Upstream.ConnectionCount);
    }

    [Fact]
    public async Task Pipelining_ThreeRequestsInOneWrite_AnsweredInOrder()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/p1") + "POST /p2 HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc" + Wire.Get("/hello") + Wire.Get("/p3"));

        Assert.Equal("GET /p1", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal("POST /p2", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal("hello\n", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal("GET /p3", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal("abc", scenario.Upstream.Requests.Single(r => r.Target == "/p2").BodyText);
    }

    [Fact]
    public async Task Http10_WithKeepAlive_ConnectionStaysOpen()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("GET /one HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n");
        var first = await client.ReadResponseAsync();
        Assert.Equal(200, first.Status);
        Assert.False(first.CloseDelimited, "A kept-alive HTTP/1.0 response needs a Content-Length.");
        Assert.False(first.Chunked, "HTTP/1.0 clients do not understand chunked.");

        await client.SendAsync("GET /two HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n");
        Assert.Equal("GET /two", (await client.ReadResponseAsync()).BodyText);
    }

    [Fact]
    public async Task Http10_WithoutKeepAlive_ClosesAfterResponse()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync("GET /one HTTP/1.0\r\nHost: example.test\r\n\r\n");
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.Equal("GET /one", response.BodyText);
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task Http11_ConnectionClose_ClosesAfterResponse()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(Wire.Get("/bye", "example.test", "Connection: close"));
        await using var _ = client;

        Assert.Equal("GET /bye", response.BodyText);
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task DirectRoute_Hello_AnswersWithoutUpstream()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(Wire.Get("/hello"));
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.Equal("hello\n", response.BodyText);
        Assert.Equal("text/plain", response.Header("content-type"));
        Assert.Equal("6", response.Header("content-length"));
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
        // Keep-alive after a local answer.
        await client.SendAsync(Wire.Get("/hello"));
        Assert.Equal("hello\n", (await client.ReadResponseAsync()).BodyText);
    }

    [Fact]
    public async Task Routing_NoRouteMatches_Returns404()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), c => c with
        {
            Routes = """
                  - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
                  - { id: api, match: { path: "/api/{**rest}" }, cluster: backend }
                """,
        });
        var (response, client) = await scenario.SendAsync(Wire.Get("/nowhere"));
        await using var _ = client;

        ProxyAssert.ErrorAnswer(response, 404);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);

        var (routed, other) = await scenario.SendAsync(Wire.Get("/api/x"));
        await using var __ = other;
        Assert.Equal("GET /api/x", routed.BodyText);
    }

    /// <summary>
    /// "internal.example.test." is the same name as "internal.example.test": it must take that host's route (here one
    /// that answers 403), not skip it for the catch-all to the same upstream. The Host field is forwarded as sent.
    /// </summary>
    [Theory]
    [InlineData("internal.example.test", 403)]
    [InlineData("internal.example.test.", 403)]
    [InlineData("INTERNAL.example.test.:80", 403)]
    [InlineData("internal.example.test..", 200)]
    [InlineData("other.example.test.", 200)]
    public async Task Routing_HostWithTrailingDot_TakesTheHostsRoute(string host, int status)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), c => c with
        {
            Routes = """
                  - { id: internal, match: { hosts: [internal.example.test] }, respond: { status: 403, body: "forbidden\n" } }
                  - { id: all, match: { path: "/{**rest}" }, cluster: backend }
                """,
        });
        var (response, client) = await scenario.SendAsync(Wire.Get("/x", host));
        await using var _ = client;

        Assert.Equal(status, response.Status);
        if (status == 200)
        {
            Assert.Equal(host, (await scenario.Upstream.WaitForRequestAsync()).Header("host"));
        }
        else
        {
            ProxyAssert.UpstreamSawNothing(scenario.Upstream);
        }
    }

    /// <summary>
    /// An absolute-form target with the scheme's default port names the same origin as a Host without it (RFC 9110
    /// section 4.2.1): accepted and forwarded in origin-form, Host as sent. Another port still disagrees: 400.
    /// </summary>
    [Theory]
    [InlineData("GET http://example.test:80/abs?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n", 200)]
    [InlineData("GET http://example.test/abs?q=1 HTTP/1.1\r\nHost: example.test:80\r\n\r\n", 200)]
    [InlineData("GET http://example.test:8080/abs?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n", 400)]
    public async Task AbsoluteForm_DefaultPortAgainstHostWithout_IsOneOrigin(string request, int status)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(request);
        await using var _ = client;

        Assert.Equal(status, response.Status);
        if (status == 200)
        {
            Assert.Equal("/abs?q=1", (await scenario.Upstream.WaitForRequestAsync()).Target);
        }
    }

    /// <summary>RFC 9112 section 9.6: the 404 says "connection: close", so the connection closes after it and no further request is served.</summary>
    [Theory]
    [InlineData("GET /nowhere HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")]
    [InlineData("GET /nowhere HTTP/1.0\r\nHost: example.test\r\n\r\n")]
    public async Task Routing_NoRouteMatches_ClientAskedToClose_ClosesAfter404(string request)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), c => c with
        {
            Routes = """
                  - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
                """,
        });
        var (response, client) = await scenario.SendAsync(request);
        await using var _ = client;

        ProxyAssert.ErrorAnswer(response, 404);
        Assert.True(response.ConnectionHas("close"));
        await client.AssertClosedAsync();
    }

    /// <summary>
    /// Plants a fault no valid config can cause any more (the first overflowed weight sums, and a pick from a negative
    /// total threw): the route's split names no cluster, so choosing one throws. The request must still be answered.
    /// </summary>
    private static void BreakClusterChoice(TestProxy proxy)
    {
        var route = proxy.Server.Snapshot.Routes.InMatchOrder.Single(r => r.Id == "all");
        typeof(RouteModel).GetProperty(nameof(RouteModel.Split))!.SetValue(route, new WeightedClustersModel([], [1]));
    }

    [Fact]
    public async Task UnexpectedException_ChoosingTheCluster_Answers500AndCloses()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        BreakClusterChoice(scenario.Proxy);

        var (response, client) = await scenario.SendAsync(Wire.Get("/x"));
        await using var _ = client;

        ProxyAssert.ErrorAnswer(response, 500);
        Assert.Contains("internal_error", response.BodyText);
        Assert.True(response.ConnectionHas("close"));
        await client.AssertClosedAsync();
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task Http2_UnexpectedException_ChoosingTheCluster_Answers500()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        BreakClusterChoice(scenario.Proxy);
        await using var h2 = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await h2.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/x"));
        var response = await h2.ReadResponseAsync(1);

        Assert.Equal(500, response.Status);
        // The connection goes on: another stream on it is answered the same way.
        await h2.SendHeadersAsync(3, endStream: true, Http2TestClient.Get("/y"));
        Assert.Equal(500, (await h2.ReadResponseAsync(3)).Status);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task EchoListener_Get_DescribesRequestAsJson()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        await using var client = await RawClient.ConnectAsync(proxy.Echo);

        await client.SendAsync(Wire.Get("/x?y=1", "echo.test", "X-Probe: 42"));
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        Assert.StartsWith("application/json", response.Header("content-type"), StringComparison.Ordinal);
        using var json = JsonDocument.Parse(response.Body);
        Assert.Equal("GET", json.RootElement.GetProperty("method").GetString());
        Assert.Equal("/x?y=1", json.RootElement.GetProperty("target").GetString());
        Assert.Equal("HTTP/1.1", json.RootElement.GetProperty("version").GetString());
        Assert.Equal(0, json.RootElement.GetProperty("body_bytes").GetInt64());
        var headers = json.RootElement.GetProperty("headers").EnumerateArray()
            .Select(h => (h[0].GetString()!.ToLowerInvariant(), h[1].GetString())).ToList();
        Assert.Contains(("x-probe", "42"), headers);
        Assert.Contains(("host", "echo.test"), headers);
    }

    [Fact]
    public async Task EchoListener_PostChunked_CountsBodyBytes()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        await using var client = await RawClient.ConnectAsync(proxy.Echo);

        await client.SendAsync("POST /upload HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
        var response = await client.ReadResponseAsync();

        using var json = JsonDocument.Parse(response.Body);
        Assert.Equal("POST", json.RootElement.GetProperty("method").GetString());
        Assert.Equal(7, json.RootElement.GetProperty("body_bytes").GetInt64());
        // Keep-alive: the body was consumed, so the next request parses.
        await client.SendAsync(Wire.Get("/second", "echo.test"));
        using var second = JsonDocument.Parse((await client.ReadResponseAsync()).Body);
        Assert.Equal("/second", second.RootElement.GetProperty("target").GetString());
    }

    [Fact]
    public async Task Config_Invalid_FromYamlThrowsInvalidDataException()
    {
        var yaml = new ProxyConfig { BackendPort = 1 }.Render().Replace("cluster: backend", "cluster: no_such_cluster", StringComparison.Ordinal);

        var ex = await Assert.ThrowsAsync<InvalidDataException>(() => TestProxy.StartAsync(yaml));
        Assert.Contains("no_such_cluster", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task LargeHeaders_NearLimits_AreForwardedIntact()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var value = new string('v', 16 * 1024);
        var (response, client) = await scenario.SendAsync(Wire.Get("/big", "example.test", "X-Big: " + value));
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.Equal(value, (await scenario.Upstream.WaitForRequestAsync()).Header("x-big"));
    }

    /// <summary>
    /// A proxy whose /api/ routes carry a request_headers policy (set x-env, remove x-internal-user) and whose /open/
    /// routes carry none, both to <paramref name="upstream"/>.
    /// </summary>
    internal static async Task<TestProxy> StartWithHeaderPolicyAsync(RecordingUpstream upstream) => await TestProxy.StartAsync($$"""
        policies:
          up: { request_headers: { set: { x-env: prod }, remove: [x-internal-user] } }
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: api, match: { path: "/api/{**rest}" }, cluster: backend, policies: [up] }
          - { id: open, match: { path: "/open/{**rest}" }, cluster: backend }
        clusters:
          backend:
            destinations: ["{{upstream.Address}}"]

        """);

    /// <summary>
    /// CGI-style upstreams read "x_auth_subject" and "x-auth-subject" as one variable: a client's underscore spelling of
    /// a field the proxy owns (request id, X-Forwarded-*, a name the route's filters set or remove) is dropped like the
    /// dashed one. Other underscored fields go through.
    /// </summary>
    [Fact]
    public async Task UnderscoreSpellingsOfOwnedFields_NotForwarded()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartWithHeaderPolicyAsync(upstream);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(Wire.Get("/api/a", "example.test",
            "X_Forwarded_For: 6.6.6.6", "x_forwarded_proto: https", "X_Request_Id: forged", "x_internal_user: admin",
            "X_ENV: dev", "x_custom_thing: kept", "x-internal_user: admin2"));
        var response = await client.ReadResponseAsync();
        var forwarded = await upstream.WaitForRequestAsync();

        Assert.Equal(200, response.Status);
        string[] names = forwarded.Headers.Select(h => h.Key.ToLowerInvariant()).ToArray();
        Assert.DoesNotContain(names, n => n.Contains('_', StringComparison.Ordinal) && n != "x_custom_thing");
        Assert.Equal("kept", forwarded.Header("x_custom_thing"));
        Assert.Equal("prod", forwarded.Header("x-env"));
        Assert.Equal("127.0.0.1", forwarded.Header("x-forwarded-for"));
    }
}
