using System.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Upstreams that refuse, reset, hang or talk nonsense: the client gets 502/504, never a hang or garbage.</summary>
public sealed class UpstreamFailureTests
{
    /// <summary>
    /// The first upstream connection answers one request ("first {target}"), then reads the next and closes without a
    /// response byte: a keep-alive connection that died under the request. Later connections answer as Ok.
    /// </summary>
    private static UpstreamHandler FirstConnectionDiesUnderSecondRequest()
    {
        var first = 1;
        return async (connection, ct) =>
        {
            if (Interlocked.Exchange(ref first, 0) == 1)
            {
                if (await connection.ReadRequestAsync(ct) is { } request)
                {
                    await connection.WriteAsync(Wire.Response(200, "first " + request.Target), ct);
                }
                await connection.ReadRequestAsync(ct);
                return;
            }
            await UpstreamBehaviors.Ok()(connection, ct);
        };
    }

    [Fact]
    public async Task Upstream_ConnectionRefused_Returns502()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(Wire.Get("/refused"));
        var response = await client.ReadResponseAsync();

        ProxyAssert.ErrorAnswer(response, 502);
    }

    [Fact]
    public async Task Upstream_ResetBeforeResponseHead_Returns502()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.ResetAfterRequest());
        var (response, client) = await scenario.SendAsync("POST /reset HTTP/1.1\r\nHost: example.test\r\nContent-Length: 2\r\n\r\nhi", "POST");
        await using var _ = client;

        ProxyAssert.ErrorAnswer(response, 502);
        Assert.Equal(1, scenario.Upstream.ConnectionCount);
    }

    [Fact]
    public async Task Upstream_ClosesBeforeResponseHead_Returns502()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.FixedThenClose(""));
        var (response, client) = await scenario.SendAsync("POST /fin HTTP/1.1\r\nHost: example.test\r\nContent-Length: 2\r\n\r\nhi", "POST");
        await using var _ = client;

        ProxyAssert.ErrorAnswer(response, 502);
    }

    [Fact]
    public async Task Upstream_ResetAfterResponseHead_ClientConnectionIsAborted()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.ResetAfter("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/partial"));
        var head = await client.ReadResponseHeadAsync();
        Assert.Equal(200, head.Status);
        var rest = await client.ReadToCloseAsync();

        // The head is already out: the only honest signal left is to cut the connection before the body completes.
        Assert.True(rest.Closed, "The proxy must close the client connection when the upstream body is cut.");
        Assert.True(rest.Bytes.Length < 100, "A truncated body must not be padded to its declared length.");
    }

    [Fact]
    public async Task Upstream_NeverAnswers_Returns504AfterRequestTimeout()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Hang(), c => c with { RequestTimeout = "1s" });
        await using var client = await scenario.ConnectAsync();
        var clock = Stopwatch.StartNew();

        await client.SendAsync(Wire.Get("/slow"));
        var response = await client.ReadResponseAsync(timeout: TimeSpan.FromSeconds(6));

        ProxyAssert.ErrorAnswer(response, 504);
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(900), TimeSpan.FromSeconds(4));
        // The proxy gives up on the upstream connection too.
        var connection = await scenario.Upstream.WaitForConnectionAsync();
        Assert.True(await Task.WhenAny(connection.PeerClosed, Task.Delay(TestDefaults.Timeout)) == connection.PeerClosed);
    }

    [Theory]
    [InlineData("not_http", "NOT HTTP AT ALL\r\n\r\n")]
    [InlineData("bad_status_code", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n")]
    [InlineData("status_code_too_long", "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")]
    [InlineData("conflicting_content_length", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")]
    [InlineData("content_length_not_digits", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")]
    [InlineData("field_without_colon", "HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n")]
    [InlineData("nul_in_field", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n")]
    public async Task Upstream_MalformedResponseHead_Returns502(string caseName, string rawResponse)
    {
        Assert.NotEmpty(caseName);
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.FixedThenClose(rawResponse));
        var (response, client) = await scenario.SendAsync(Wire.Get("/malformed"));
        await using var _ = client;

        ProxyAssert.ErrorAnswer(response, 502);
    }

    /// <summary>
    /// A chunked response whose framing is broken (a size that is not hex, one past 64 bits, data not ended by CRLF,
    /// a bad chunk after a good one), all in one write with its head: nothing of it was relayed yet, so the client gets
    /// the proxy's 502 rather than the head of an answer that cannot be delivered. It used to get an empty reply: the
    /// head waited unflushed in the output when the body's decoding failed, and the cut threw it away.
    /// </summary>
    [Theory]
    [InlineData("not_hex", "zz\r\nhello\r\n0\r\n\r\n")]
    [InlineData("overflow", "10000000000000000\r\nhello\r\n0\r\n\r\n")]
    [InlineData("missing_crlf", "5\r\nhelloX\r\n0\r\n\r\n")]
    [InlineData("bad_after_good", "5\r\nhello\r\n-1\r\n\r\n")]
    public async Task Upstream_MalformedChunkedBodyWithItsHead_Returns502(string caseName, string body)
    {
        Assert.NotEmpty(caseName);
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n" + body));
        var (response, client) = await scenario.SendAsync(Wire.Get("/malformed-body"));
        await using var _ = client;

        ProxyAssert.ErrorAnswer(response, 502);
        Assert.Contains("upstream_invalid_body", response.BodyText, StringComparison.Ordinal);
        // The client's connection is fine: only the upstream's is dropped.
        await client.SendAsync(Wire.Get("/again"));
        ProxyAssert.ErrorAnswer(await client.ReadResponseAsync(), 502);
        Assert.Equal(2, scenario.Upstream.ConnectionCount);
    }

    /// <summary>
    /// The same broken framing after the head went out (the upstream paused before the bad bytes, so the proxy had
    /// flushed the head at once, with the good chunk when it came along): a status can no longer be given, so the client
    /// connection is cut before the last chunk. The client sees a truncated response, never a clean end, and keeps what
    /// was relayed before the error, good chunks that arrived in the same read as the bad bytes included (those used to
    /// be dropped with the cut).
    /// </summary>
    [Theory]
    [InlineData("not_hex", "", "zz\r\nhello\r\n0\r\n\r\n", "")]
    [InlineData("missing_crlf", "", "5\r\nhelloX\r\n0\r\n\r\n", "5\r\nhello\r\n")] // the data goes out before its bad terminator is read
    [InlineData("bad_after_relayed_good", "5\r\nhello\r\n", "zz\r\n0\r\n\r\n", "5\r\nhello\r\n")]
    [InlineData("bad_with_good_in_one_read", "", "5\r\nhello\r\nzz\r\n0\r\n\r\n", "5\r\nhello\r\n")]
    public async Task Upstream_MalformedChunkedBodyAfterHeadSent_ClientSeesTruncatedResponse(string caseName, string withHead, string later, string relayed)
    {
        Assert.NotEmpty(caseName);
        using var headSeen = new SemaphoreSlim(0);
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is null)
            {
                return;
            }
            await connection.WriteAsync("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n" + withHead, ct);
            // The rest only once the client holds the head: what came with it was relayed before the bad bytes came.
            await headSeen.WaitAsync(ct);
            await connection.WriteAsync(later, ct);
            await Task.Delay(Timeout.Infinite, ct);
        });
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/malformed-later"));
        var head = await client.ReadResponseHeadAsync();
        Assert.Equal(200, head.Status);
        Assert.Equal("chunked", head.Header("transfer-encoding"));
        headSeen.Release();
        var rest = await client.ReadToCloseAsync();

        Assert.True(rest.Closed, "The proxy must close the client connection when the upstream body's framing breaks.");
        Assert.Equal(relayed, rest.Text);
        Assert.Equal(1, scenario.Upstream.ConnectionCount);
    }

    [Fact]
    public async Task PooledConnection_ClosedByUpstreamWhileIdle_GetSucceedsOnFreshConnection()
    {
        // The first upstream connection answers once (keep-alive, as far as the proxy can tell), then closes.
        var first = 1;
        UpstreamHandler handler = async (connection, ct) =>
        {
            if (Interlocked.Exchange(ref first, 0) == 1)
            {
                if (await connection.ReadRequestAsync(ct) is { } request)
                {
                    await connection.WriteAsync(Wire.Response(200, "first " + request.Target), ct);
                }
                return;
            }
            await UpstreamBehaviors.Ok()(connection, ct);
        };
        await using var scenario = await ProxyScenario.StartAsync(handler);
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/one"));
        Assert.Equal("first /one", (await client.ReadResponseAsync()).BodyText);
        await (await scenario.Upstream.WaitForConnectionAsync()).PeerClosed.WaitAsync(TestDefaults.Timeout);
        await Task.Delay(50);

        await client.SendAsync(Wire.Get("/two"));
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("GET /two", response.BodyText);
        Assert.Equal(2, scenario.Upstream.ConnectionCount);
    }

    [Fact]
    public async Task PooledConnection_ClosedAfterReadingNextRequest_GetIsRetriedOnce()
    {
        // The first upstream connection answers one request, then reads the next and closes without a response byte:
        // from the proxy's side, exactly a keep-alive connection that died under the request.
        UpstreamHandler handler = FirstConnectionDiesUnderSecondRequest();
        await using var scenario = await ProxyScenario.StartAsync(handler);
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/one"));
        Assert.Equal("first /one", (await client.ReadResponseAsync()).BodyText);
        await client.SendAsync(Wire.Get("/two"));
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("GET /two", response.BodyText);
        Assert.Equal(2, scenario.Upstream.ConnectionCount);
        Assert.Equal(2, scenario.Upstream.Requests.Count(r => r.Target == "/two"));
    }

    /// <summary>
    /// The same dead keep-alive connection under a POST whose cluster (or route) opted into retrying non-idempotent
    /// requests, with no retry configured for a reset: the upstream may have run the POST before closing, so it is not
    /// sent again (the transparent replay is for idempotent methods only; the opt-in governs configured retries).
    /// It used to go again on a new connection, body included: the upstream saw it twice.
    /// </summary>
    [Theory]
    [InlineData("cluster")]
    [InlineData("route")]
    public async Task PooledConnection_ClosedAfterReadingNextPost_PostNotReplayedDespiteNonIdempotentOptIn(string optIn)
    {
        UpstreamHandler handler = FirstConnectionDiesUnderSecondRequest();
        await using var scenario = await ProxyScenario.StartAsync(handler, c => c with
        {
            ClusterExtra = optIn == "cluster"
                ? "retry: { attempts: 0, on: [503], non_idempotent: true }"
                : "retry: { attempts: 0, on: [503] }",
            Routes = optIn == "cluster" ? c.Routes : """
                  - { id: all, match: { path: "/{**rest}" }, cluster: backend, retry_non_idempotent: true }
                """,
        });
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/one"));
        Assert.Equal("first /one", (await client.ReadResponseAsync()).BodyText);
        await client.SendAsync("POST /pay HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello");
        var response = await client.ReadResponseAsync("POST");

        ProxyAssert.ErrorAnswer(response, 502);
        Assert.Single(scenario.Upstream.Requests, r => r.Target == "/pay");
        Assert.Equal(1, scenario.Upstream.ConnectionCount);
    }

    /// <summary>
    /// Response queue poisoning: an upstream that sends bytes nobody asked for on a keep-alive connection (a body after
    /// a HEAD's head, in a second write; bytes past a declared length), a little after the exchange ended. The pool used
    /// to skip its check for connections idle under a second, so the next client's request went out on that connection
    /// and got the stray bytes as its response. A connection readable while idle is now discarded, as nginx does.
    /// </summary>
    [Theory]
    [InlineData("HEAD", 100)]
    [InlineData("GET", 100)]
    public async Task PooledConnection_StrayBytesWhileIdle_NextClientGetsItsOwnResponse(string method, int strayDelayMs)
    {
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                string body = "ok:" + request.Target;
                await connection.WriteAsync($"HTTP/1.1 200 OK\r\ncontent-length: {body.Length}\r\n\r\n" + (request.Method == "HEAD" ? "" : body), ct);
                if (request.Target == "/setup")
                {
                    // The stray bytes: a whole response, as a HEAD body sent anyway (or bytes past the length) would be.
                    if (strayDelayMs > 0)
                    {
                        await Task.Delay(strayDelayMs, ct);
                    }
                    await connection.WriteAsync("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL", ct);
                }
            }
        });

        await using (var first = await scenario.ConnectAsync())
        {
            await first.SendAsync($"{method} /setup HTTP/1.1\r\nHost: example.test\r\n\r\n");
            Assert.Equal(200, (await first.ReadResponseAsync(method)).Status);
        }
        await Task.Delay(strayDelayMs + 200);

        var (response, second) = await scenario.SendAsync(Wire.Get("/innocent"));
        await using var _ = second;

        Assert.Equal(200, response.Status);
        Assert.Equal("ok:/innocent", response.BodyText);
        Assert.Equal(2, scenario.Upstream.ConnectionCount);
    }

    /// <summary>
    /// An upstream that answers before reading an upload (413 with Connection: close) and closes: the client gets that
    /// answer, not the proxy's 502 (RFC 9112 section 9.5; nginx relays it too). The body is large enough not to fit in
    /// the socket buffers, so the proxy's write fails mid-body; it used to answer 502 upstream_request_write_failed.
    /// </summary>
    [Fact]
    public async Task Upload_UpstreamAnswers413EarlyAndCloses_ClientGetsThe413()
    {
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            // The request line and fields only: the body is left unread, as a server refusing an upload leaves it.
            while (await connection.Reader.ReadLineAsync(ct) is { Length: > 0 })
            {
            }
            await connection.WriteAsync("HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large", ct);
            connection.Close();
        }, c => c with { MaxBodyBytes = "64MiB" });
        await using var client = await scenario.ConnectAsync();
        const long size = 32L * 1024 * 1024;
        await client.SendAsync($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: {size}\r\n\r\n");
        // The body goes on while the answer is read; the proxy drops what it still gets, then closes.
        var upload = client.StartGeneratedUpload(size);

        var response = await client.ReadResponseAsync("POST");

        Assert.Equal(413, response.Status);
        Assert.Equal("too large", response.BodyText);
        Assert.True(response.ConnectionHas("close"), response.ToString());
        await upload;
    }

    /// <summary>
    /// An upstream that resets its connection mid-upload without answering: the proxy's body write fails, the early
    /// answer it then looks for never comes: 502 upstream_request_write_failed, counted once against the destination
    /// (a two-failure outlier rule leaves it in). It was counted twice (as a failed head read, then as a failed write):
    /// one broken upload ejected the destination.
    /// </summary>
    [Fact]
    public async Task Upload_UpstreamResetsMidBodyWithoutAnswer_CountsOneFailure()
    {
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            while (await connection.Reader.ReadLineAsync(ct) is { Length: > 0 })
            {
            }
            connection.Reset();
        }, c => c with
        {
            MaxBodyBytes = "64MiB",
            ClusterExtra = "outlier_detection: { consecutive_failures: 2, base_ejection: 30s, max_ejection_percent: 100 }",
        });
        await using var client = await scenario.ConnectAsync();
        const long size = 32L * 1024 * 1024;
        await client.SendAsync($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: {size}\r\n\r\n");
        var upload = client.StartGeneratedUpload(size);

        var response = await client.ReadResponseAsync("POST");
        await upload;

        ProxyAssert.ErrorAnswer(response, 502);
        Assert.Contains("upstream_request_write_failed", response.BodyText, StringComparison.Ordinal);
        var destination = scenario.Proxy.Server.Snapshot.Clusters["backend"].Destinations[0];
        Assert.True(destination.EjectedUntil == 0, "one failed try must not eject the destination under consecutive_failures: 2");
        Assert.Equal(1, destination.ConsecutiveFailures);
    }

    /// <summary>
    /// An upstream that answers an upload early (a complete 401, keep-alive, no close) and then neither reads the rest
    /// of the body nor closes: the proxy's writes stall with the socket buffers full. The answer is relayed within about
    /// a second (the heartbeat looks for it while the body is being sent), with <c>connection: close</c>; the rest of
    /// the body is not sent, the upstream connection is closed rather than pooled, and the client connection closes
    /// after the answer. It used to reach the client only when body_timeout ran out (30 s here), and then not at all:
    /// the stalled write aborted both connections.
    /// </summary>
    [Fact]
    public async Task Upload_UpstreamAnswersEarlyAndStopsReadingWithoutClosing_ClientGetsTheAnswerPromptly()
    {
        var answerRead = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var upstreamClosed = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            // The request line and fields only: the body is left unread, and the connection open.
            while (await connection.Reader.ReadLineAsync(ct) is { Length: > 0 })
            {
            }
            await connection.WriteAsync("HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\n\r\ndenied", ct);
            await answerRead.Task.WaitAsync(ct);
            // Only now does it read again: what the proxy still sent, then its close.
            upstreamClosed.TrySetResult(await connection.WaitForPeerCloseAsync(TestDefaults.Timeout));
        }, c => c with { MaxBodyBytes = "64MiB" });
        await using var client = await scenario.ConnectAsync();
        const long size = 32L * 1024 * 1024;
        await client.SendAsync($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: {size}\r\n\r\n");
        var upload = client.StartGeneratedUpload(size);

        var response = await client.ReadResponseAsync("POST");
        answerRead.TrySetResult();

        Assert.Equal(401, response.Status);
        Assert.Equal("denied", response.BodyText);
        Assert.True(response.ConnectionHas("close"), response.ToString());
        Assert.True((await client.ReadToCloseAsync()).Closed, "The client connection must close after the early answer.");
        Assert.True(await upstreamClosed.Task.WaitAsync(TestDefaults.Timeout), "The upstream connection must be closed, not pooled.");
        Assert.True(scenario.Upstream.Connections[0].ReceivedCount < size, "The proxy must stop sending the body.");
        await upload;
    }

    /// <summary>
    /// The flows the early-answer watch must leave alone: an upstream that reads an upload slowly (the proxy's writes
    /// stall for seconds, so the heartbeat sees a readable upstream while the body is being sent), having sent an
    /// interim 103 first, then answers 200 once it has the whole body. The client, with or without
    /// <c>Expect: 100-continue</c>, gets the 103 and the 200 on a kept-alive connection, and the next request reuses the
    /// upstream connection.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Upload_SlowUpstreamSendsInterimThenReadsWholeBody_AnswerRelayedAndConnectionsKept(bool expectContinue)
    {
        const long size = 12L * 1024 * 1024;
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            while (true)
            {
                string? line = await connection.Reader.ReadLineAsync(ct);
                if (line is null)
                {
                    return;
                }
                long length = 0;
                while (await connection.Reader.ReadLineAsync(ct) is { Length: > 0 } field)
                {
                    if (field.StartsWith("content-length:", StringComparison.OrdinalIgnoreCase))
                    {
                        length = long.Parse(field["content-length:".Length..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
                    }
                }
                if (length == 0)
                {
                    await connection.WriteAsync(Wire.Response(200, "next"), ct);
                    continue;
                }
                await connection.WriteAsync("HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n", ct);
                using var sink = new HashSink();
                while (sink.Count < length)
                {
                    await connection.Reader.ReadExactlyAsync(Math.Min(256 * 1024, length - sink.Count), sink, ct);
                    await Task.Delay(100, ct);
                }
                await connection.WriteAsync(Wire.Response(200, "got " + sink.Count), ct);
            }
        }, c => c with { MaxBodyBytes = "64MiB" });
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: {size}\r\n"
            + (expectContinue ? "Expect: 100-continue\r\n" : "") + "\r\n");
        if (expectContinue)
        {
            Assert.Equal(100, (await client.ReadResponseHeadAsync()).Status);
        }
        await client.SendGeneratedAsync(size, TimeSpan.FromSeconds(30));
        var response = await client.ReadResponseAsync("POST", timeout: TimeSpan.FromSeconds(30));

        Assert.Equal(200, response.Status);
        Assert.Equal("got " + size, response.BodyText);
        Assert.Equal(103, Assert.Single(response.Interim).Status);
        Assert.False(response.ConnectionHas("close"), response.ToString());
        await client.SendAsync(Wire.Get("/next"));
        Assert.Equal("next", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal(1, scenario.Upstream.ConnectionCount);
    }

    [Fact]
    public async Task Upstream_Fails_ProxyKeepsServingOtherRequests()
    {
        var calls = 0;
        UpstreamHandler handler = async (connection, ct) =>
        {
            if (Interlocked.Increment(ref calls) == 1)
            {
                await UpstreamBehaviors.FixedThenClose("GARBAGE\r\n\r\n")(connection, ct);
                return;
            }
            await UpstreamBehaviors.Ok()(connection, ct);
        };
        await using var scenario = await ProxyScenario.StartAsync(handler);

        var (bad, client1) = await scenario.SendAsync(Wire.Get("/bad"));
        await using var _ = client1;
        ProxyAssert.ErrorAnswer(bad, 502);
        var (good, client2) = await scenario.SendAsync(Wire.Get("/good"));
        await using var __ = client2;

        Assert.Equal("GET /good", good.BodyText);
    }
}
