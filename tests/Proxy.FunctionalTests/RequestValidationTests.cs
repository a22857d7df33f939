using System.Diagnostics;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// Malformed and oversized requests: each is answered with an error, the connection closes, and nothing (or, for a
/// rejection in the middle of a chunked body, nothing beyond a truncated request) reaches the upstream. Requests
/// carry a smuggled second request ("/smuggled") where a desync could make one appear.
/// </summary>
public sealed class RequestValidationTests
{
    private const string Smuggled = "GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n";

    /// <summary>Requests refused from their head alone: the upstream must see no connection at all.</summary>
    private static readonly Dictionary<string, string> s_badHeads = new()
    {
        ["te_and_cl"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + Smuggled,
        ["cl_and_te"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n" + Smuggled,
        ["two_different_cl"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ["cl_list_differing"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ["cl_plus_sign"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: +5\r\n\r\nhello",
        ["cl_negative"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: -1\r\n\r\n",
        ["cl_hex"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0x5\r\n\r\nhello",
        ["cl_letters"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: abc\r\n\r\n",
        ["cl_empty"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: \r\n\r\n",
        ["two_authorization"] = "GET / HTTP/1.1\r\nHost: example.test\r\nAuthorization: Bearer checked\r\nAuthorization: Bearer forged\r\n\r\n",
        ["obs_fold"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX-Folded: a\r\n b\r\n\r\n",
        ["obs_fold_tab"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX-Folded: a\r\n\tb\r\n\r\n",
        ["space_before_colon"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX-Space : b\r\n\r\n",
        ["space_before_colon_te"] = "POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + Smuggled,
        ["tab_before_colon"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX-Tab\t: b\r\n\r\n",
        ["space_in_name"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX Space: b\r\n\r\n",
        ["no_colon"] = "GET / HTTP/1.1\r\nHost: example.test\r\nNoColonHere\r\n\r\n",
        ["nul_in_value"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX-A: a\0b\r\n\r\n",
        ["nul_in_name"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX\0A: b\r\n\r\n",
        ["ctl_in_value"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX-A: a\u0001b\r\n\r\n",
        ["del_in_name"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX\u007FA: b\r\n\r\n",
        ["bare_cr_in_value"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX-A: a\rb\r\n\r\n",
        ["bare_cr_in_name"] = "GET / HTTP/1.1\r\nHost: example.test\r\nX\rA: b\r\n\r\n",
        ["bare_cr_line_end"] = "GET / HTTP/1.1\r\nHost: example.test\rX-A: b\r\n\r\n",
        ["missing_host"] = "GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
        ["two_hosts"] = "GET / HTTP/1.1\r\nHost: example.test\r\nHost: other.test\r\n\r\n",
        ["relative_target"] = "GET foo HTTP/1.1\r\nHost: example.test\r\n\r\n",
        ["dot_segment_target"] = "GET /a/../b HTTP/1.1\r\nHost: example.test\r\n\r\n",
        ["space_in_target"] = "GET /a b HTTP/1.1\r\nHost: example.test\r\n\r\n",
        ["garbage_request_line"] = "HELLO\r\nHost: example.test\r\n\r\n",
    };

    /// <summary>
    /// Requests refused inside a chunked body. The head (and some data) may already have been forwarded, so the
    /// upstream may see one truncated request whose connection the proxy then closes, but never a second request.
    /// </summary>
    private static readonly Dictionary<string, string> s_badChunkedBodies = new()
    {
        ["chunk_size_overflow"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n" + Smuggled,
        ["chunk_size_not_hex"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + Smuggled,
        ["chunk_size_negative"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n" + Smuggled,
        ["chunk_size_empty"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n" + Smuggled,
        ["chunk_data_without_crlf"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n" + Smuggled,
        ["second_chunk_size_not_hex"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nxyz\r\n0\r\n\r\n" + Smuggled,
        // One-byte chunks with 4000-byte extensions: framing far beyond the payload (chunk_framing_excess).
        ["chunk_extension_flood"] = "POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + string.Concat(Enumerable.Repeat("1;e=" + new string('a', 4000) + "\r\nz\r\n", 64)) + "0\r\n\r\n" + Smuggled,
    };

    public static TheoryData<string> BadHeads => new(s_badHeads.Keys);
    public static TheoryData<string> BadChunkedBodies => new(s_badChunkedBodies.Keys);

    [Theory]
    [MemberData(nameof(BadHeads))]
    public async Task MalformedHead_Any_Returns400AndForwardsNothing(string caseName)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(s_badHeads[caseName]);
        await using var _ = client;

        await ProxyAssert.RejectedAndClosedAsync(response, client, 400);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Theory]
    [MemberData(nameof(BadChunkedBodies))]
    public async Task MalformedChunkedBody_Any_Returns400AndSmugglesNothing(string caseName)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(s_badChunkedBodies[caseName]);
        await using var _ = client;

        await ProxyAssert.RejectedAndClosedAsync(response, client, 400);
        await AssertNoCompleteOrSmuggledRequestAsync(scenario.Upstream);
    }

    [Theory]
    [InlineData("gzip")]
    [InlineData("compress")]
    [InlineData("x-custom")]
    public async Task TransferEncoding_OtherThanChunked_Returns501AndForwardsNothing(string coding)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync(
            $"POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n" + Smuggled);
        await using var _ = client;

        await ProxyAssert.RejectedAndClosedAsync(response, client, 501);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Theory]
    [InlineData("HTTP/2.0")]
    [InlineData("HTTP/3.0")]
    public async Task RequestLine_UnsupportedVersion_Returns505(string version)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var (response, client) = await scenario.SendAsync($"GET / {version}\r\nHost: example.test\r\n\r\n");
        await using var _ = client;

        await ProxyAssert.RejectedAndClosedAsync(response, client, 505);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task RequestLine_OverMaxRequestLine_Returns414()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var target = "/" + new string('a', 9 * 1024);
        var (response, client) = await scenario.SendAsync($"GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n");
        await using var _ = client;

        await ProxyAssert.RejectedAndClosedAsync(response, client, 414);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task RequestLine_JustUnderMaxRequestLine_IsForwarded()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        // "GET " + target + " HTTP/1.1" stays under 8 KiB including CRLF.
        var target = "/" + new string('a', 8 * 1024 - 100);
        var (response, client) = await scenario.SendAsync($"GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n");
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.Equal(target, (await scenario.Upstream.WaitForRequestAsync()).Target);
    }

    [Fact]
    public async Task HeaderBlock_OverMaxHeaderBytes_Returns431()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var sb = new StringBuilder("GET / HTTP/1.1\r\nHost: example.test\r\n");
        for (var i = 0; i < 40; i++)
        {
            sb.Append($"X-Big-{i}: ").Append('v', 1000).Append("\r\n");
        }
        var (response, client) = await scenario.SendAsync(sb.Append("\r\n").ToString());
        await using var _ = client;

        await ProxyAssert.RejectedAndClosedAsync(response, client, 431);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task HeaderBlock_OverMaxHeaders_Returns431()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var sb = new StringBuilder("GET / HTTP/1.1\r\nHost: example.test\r\n");
        for (var i = 0; i < 101; i++)
        {
            sb.Append($"X-H{i}: v\r\n");
        }
        var (response, client) = await scenario.SendAsync(sb.Append("\r\n").ToString());
        await using var _ = client;

        await ProxyAssert.RejectedAndClosedAsync(response, client, 431);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task HeaderBlock_AtMaxHeaders_IsForwarded()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var sb = new StringBuilder("GET / HTTP/1.1\r\nHost: example.test\r\n");
        for (var i = 0; i < 90; i++)
        {
            sb.Append($"X-H{i}: v{i}\r\n");
        }
        var (response, client) = await scenario.SendAsync(sb.Append("\r\n").ToString());
        await using var _ = client;

        Assert.Equal(200, response.Status);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("v89", forwarded.Header("x-h89"));
    }

    [Fact]
    public async Task ContentLength_OverMaxBodyBytes_Returns413BeforeBodyIsSent()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody(), c => c with { MaxBodyBytes = "1KiB" });
        await using var client = await scenario.ConnectAsync();

        // Only the head: the proxy must answer without waiting for a body it will refuse anyway.
        await client.SendAsync("POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 20000000\r\n\r\n");
        var response = await client.ReadResponseAsync();

        await ProxyAssert.RejectedAndClosedAsync(response, client, 413);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task ContentLength_AtMaxBodyBytes_IsForwarded()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody(), c => c with { MaxBodyBytes = "1KiB" });
        var body = new string('b', 1024);
        var (response, client) = await scenario.SendAsync($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1024\r\n\r\n{body}");
        await using var _ = client;

        Assert.Equal(200, response.Status);
        Assert.StartsWith("1024 ", response.BodyText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ChunkedBody_CrossingMaxBodyBytes_Returns413AndSmugglesNothing()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody(), c => c with { MaxBodyBytes = "1KiB" });
        await using var client = await scenario.ConnectAsync();
        var chunk = new string('c', 600);

        await client.SendAsync("POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n");
        await client.SendAsync($"258\r\n{chunk}\r\n");
        await client.SendAsync($"258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n" + Smuggled);
        var response = await client.ReadResponseAsync();

        await ProxyAssert.RejectedAndClosedAsync(response, client, 413);
        await AssertNoCompleteOrSmuggledRequestAsync(scenario.Upstream);
    }

    [Fact]
    public async Task Head_NotCompleteWithinHeaderTimeout_Returns408AndCloses()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), c => c with { HeaderTimeout = "1s" });
        await using var client = await scenario.ConnectAsync();
        var clock = Stopwatch.StartNew();

        await client.SendAsync("GET / HTTP/1.1\r\nHost: example.test\r\n");
        var response = await client.ReadResponseAsync(timeout: TimeSpan.FromSeconds(5));

        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(900), TimeSpan.FromSeconds(4));
        await ProxyAssert.RejectedAndClosedAsync(response, client, 408);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task Head_DrippedSlowerThanHeaderTimeout_Returns408DespiteSteadyBytes()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), c => c with { HeaderTimeout = "1s" });
        await using var client = await scenario.ConnectAsync();
        using var dripping = new CancellationTokenSource(TimeSpan.FromSeconds(6));
        var clock = Stopwatch.StartNew();

        // Slowloris: one header byte every 100 ms keeps every single read short but the head never completes.
        await client.SendAsync("GET / HTTP/1.1\r\nHost: example.test\r\n");
        var drip = Task.Run(async () =>
        {
            try
            {
                while (!dripping.IsCancellationRequested)
                {
                    await client.SendAsync("X-Drip: 1\r\n"u8.ToArray().AsMemory(0, 1), TimeSpan.FromSeconds(1));
                    await Task.Delay(100, dripping.Token);
                }
            }
            catch (Exception)
            {
                // The proxy closed the connection: the point of the test.
            }
        });
        var response = await client.ReadResponseAsync(timeout: TimeSpan.FromSeconds(5));
        await dripping.CancelAsync();
        await drip;

        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"408 took {clock.Elapsed}");
        ProxyAssert.ErrorAnswer(response, 408);
        Assert.True((await client.ReadToCloseAsync()).Closed);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task BadRequest_AfterValidKeepAliveRequest_FirstIsAnsweredThenConnectionRejected()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/first") + "GET /second HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab");
        var first = await client.ReadResponseAsync();
        var second = await client.ReadResponseAsync();

        Assert.Equal(200, first.Status);
        Assert.Equal("GET /first", first.BodyText);
        await ProxyAssert.RejectedAndClosedAsync(second, client, 400);
        Assert.Equal("/first", Assert.Single(scenario.Upstream.Requests).Target);
    }

    /// <summary>
    /// After a rejection inside a body: the upstream never received a complete request nor the smuggled one, and any
    /// upstream connection the proxy opened for the truncated request gets closed.
    /// </summary>
    private static async Task AssertNoCompleteOrSmuggledRequestAsync(RecordingUpstream upstream)
    {
        foreach (var connection in upstream.Connections)
        {
            var closed = await Task.WhenAny(connection.PeerClosed, Task.Delay(TestDefaults.Timeout)) == connection.PeerClosed;
            Assert.True(closed, "The proxy kept the upstream connection of a truncated request open.");
        }
        Assert.Empty(upstream.Requests);
        Assert.DoesNotContain("/smuggled", upstream.ReceivedText, StringComparison.Ordinal);
    }
}
