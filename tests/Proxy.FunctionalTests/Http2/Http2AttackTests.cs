using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;
using Proxy.Http2.HPack;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// Frame-level negative tests over a raw socket: each RFC 9113 section 8 violation and each known HTTP/2 attack gets
/// the exact stream or connection error, and the proxy serves normal requests afterwards.
/// </summary>
public sealed class Http2AttackTests
{
    private static async Task<TestProxy> StartProxyAsync(string http2Limits) =>
        await TestProxy.StartAsync(Http2ServerTests.WithHttp2Limits(new ProxyConfig { BackendPort = Ports.ClosedPort() }, http2Limits));

    /// <summary>A new connection gets a normal answer over HTTP/2 and HTTP/1.1: the process is healthy.</summary>
    internal static async Task AssertHealthyAsync(TestProxy proxy)
    {
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/hello"));
        var response = await client.ReadResponseAsync(1);
        Assert.Equal(200, response.Status);
        Assert.Equal("hello\n", response.BodyText);
        using var http = Clients.CreateHttpClient();
        Assert.Equal("hello\n", await http.GetStringAsync(new Uri(proxy.PublicUri, "/hello")));
    }

    /// <summary>Sends, tolerating the server closing the connection while we write (it may GOAWAY mid-flood).</summary>
    private static async Task SendIgnoringCloseAsync(Func<Task> send)
    {
        try
        {
            await send();
        }
        catch (IOException)
        {
        }
    }

    private static (string, string)[] Post(string path) =>
        [(":method", "POST"), (":scheme", "http"), (":authority", "example.test"), (":path", path)];

    [Fact]
    public async Task MaxConcurrentStreams_OneTooMany_RefusedStreamAndOthersFinish()
    {
        await using var proxy = await StartProxyAsync("max_concurrent_streams: 2");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        // POSTs without END_STREAM stay open: the direct route waits for the body.
        await client.SendHeadersAsync(1, endStream: false, Post("/hello"));
        await client.SendHeadersAsync(3, endStream: false, Post("/hello"));
        await client.SendHeadersAsync(5, endStream: false, Post("/hello"));
        var refused = await client.WaitForRstAsync(5);
        await client.SendDataAsync(1, "x"u8, endStream: true);
        var first = await client.ReadResponseAsync(1);

        Assert.Equal(Http2ErrorCode.REFUSED_STREAM, refused.ErrorCode);
        Assert.Equal(200, first.Status);
        await AssertHealthyAsync(proxy);
    }

    [Fact]
    public async Task HeaderList_AboveLimit_GoAwayCompressionError()
    {
        await using var proxy = await StartProxyAsync("max_header_list_size: 4KiB");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await client.SendHeadersAsync(1, endStream: true, [.. Http2TestClient.Get("/hello"), ("x-big", new string('a', 6000))]);
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.COMPRESSION_ERROR, goAway.ErrorCode);
        Assert.True(await client.WaitForCloseAsync());
        await AssertHealthyAsync(proxy);
    }

    [Fact]
    public async Task HpackBomb_OneEntryReferencedManyTimes_GoAwayCompressionError()
    {
        await using var proxy = await StartProxyAsync("max_header_list_size: 32KiB");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        // One 4,000-octet dynamic entry, then 30 one-octet references to it: ~120 KB decoded from ~4 KB sent.
        var fields = new List<(string, string)>(Http2TestClient.Get("/hello"));
        for (int i = 0; i < 31; i++)
        {
            fields.Add(("x-bomb", new string('b', 4000)));
        }
        byte[] block = client.Encode(HPackIndexing.Auto, [.. fields]);
        Assert.True(block.Length < 4200, $"the bomb should be small on the wire, got {block.Length}");

        await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, 1, block);
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.COMPRESSION_ERROR, goAway.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    [Fact]
    public async Task ContinuationFlood_EndlessHeaderBlock_GoAwayEnhanceYourCalm()
    {
        await using var proxy = await StartProxyAsync("max_header_list_size: 32KiB");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.None, 1, client.Encode(Http2TestClient.Get("/hello")));
        await SendIgnoringCloseAsync(async () =>
        {
            for (int i = 0; i < 200; i++)
            {
                await client.SendFrameAsync(Http2FrameType.CONTINUATION, Http2Flags.None, 1, client.Encode(("x-a", "b")));
            }
        });
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.ENHANCE_YOUR_CALM, goAway.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    [Fact]
    public async Task RapidReset_ManyStreamsCancelled_GoAwayEnhanceYourCalm()
    {
        await using var proxy = await StartProxyAsync("rapid_reset: { max: 10, window: 10s }");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await SendIgnoringCloseAsync(async () =>
        {
            for (int id = 1; id < 80; id += 2)
            {
                await client.SendHeadersAsync(id, endStream: false, Post("/hello"));
                await client.SendRstAsync(id);
            }
        });
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.ENHANCE_YOUR_CALM, goAway.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    /// <summary>
    /// HEADERS and RST_STREAM of each stream in one write, so one read pass: the streams must never run (nothing goes
    /// upstream) and each gives its max_concurrent_streams slot back at once (RFC 9113 section 5.1.2). Before, the reset
    /// found no bridge to abort, the stream ran anyway and held its slot until the upstream answered: here the upstream
    /// got 10 requests nobody wanted and stream 41 was refused although the client had no open stream.
    /// </summary>
    [Fact]
    public async Task RapidReset_ResetInTheReadThatOpenedTheStream_NeverForwardedAndSlotFreedAtOnce()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Hang());
        await using var proxy = await TestProxy.StartAsync(Http2ServerTests.WithHttp2Limits(
            new ProxyConfig { BackendPort = upstream.Port }, "max_concurrent_streams: 10, rapid_reset: { max: 1000, window: 10s }"));
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        // Twice the cap of streams opened and reset, then one more, in a single write.
        var batch = new ArrayBufferWriter<byte>();
        for (int id = 1; id < 40; id += 2)
        {
            Http2FrameWriter.WriteHeaders(batch, id, client.Encode(Http2TestClient.Get("/slow")), endStream: true, 16_384);
            Http2FrameWriter.WriteRstStream(batch, id, Http2ErrorCode.CANCEL);
        }
        Http2FrameWriter.WriteHeaders(batch, 41, client.Encode(Http2TestClient.Get("/hello")), endStream: true, 16_384);
        await client.SendRawAsync(batch.WrittenSpan.ToArray());
        var next = await client.ReadResponseAsync(41);
        // A stream that runs reaches the upstream within milliseconds.
        await Task.Delay(300);

        Assert.Equal(200, next.Status);
        Assert.Equal(0, upstream.ConnectionCount);
        Assert.Empty(upstream.Requests);
        await AssertHealthyAsync(proxy);
    }

    /// <summary>
    /// "MadeYouReset" (CVE-2025-8671): frames that make the proxy reset a stream the client just opened (a stream error
    /// RST_STREAM from us) cost the client as little as its own RST_STREAM, so they count against the same rapid_reset
    /// budget. Before, only the client's RST_STREAM counted and one connection could drive thousands of upstream requests.
    /// </summary>
    [Theory]
    [InlineData("window-update-zero")]
    [InlineData("window-overflow")]
    [InlineData("priority-on-itself")]
    [InlineData("content-length-exceeded")]
    public async Task RapidReset_StreamErrorsTheClientProvokes_CountAndGoAwayEnhanceYourCalm(string kind)
    {
        await using var proxy = await StartProxyAsync("rapid_reset: { max: 10, window: 10s }");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await SendIgnoringCloseAsync(async () =>
        {
            for (int id = 1; id < 80; id += 2)
            {
                switch (kind)
                {
                    case "window-update-zero":
                        await client.SendHeadersAsync(id, endStream: false, Post("/hello"));
                        await client.SendFrameAsync(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, id, [0, 0, 0, 0]);
                        break;
                    case "window-overflow":
                        await client.SendHeadersAsync(id, endStream: false, Post("/hello"));
                        await client.SendWindowUpdateAsync(id, int.MaxValue);
                        break;
                    case "priority-on-itself":
                        await client.SendHeadersAsync(id, endStream: false, Post("/hello"));
                        await client.SendFrameAsync(Http2FrameType.PRIORITY, Http2Flags.None, id, [0, 0, 0, (byte)id, 16]);
                        break;
                    default:
                        await client.SendHeadersAsync(id, endStream: false, [.. Post("/hello"), ("content-length", "1")]);
                        await client.SendDataAsync(id, "xx"u8, endStream: true);
                        break;
                }
            }
        });
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.ENHANCE_YOUR_CALM, goAway.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    [Theory]
    [InlineData("settings")]
    [InlineData("ping")]
    [InlineData("empty-data")]
    [InlineData("priority")]
    [InlineData("refused-streams")]
    [InlineData("stream-errors")]
    public async Task ControlFrameFlood_AboveLimit_GoAwayEnhanceYourCalm(string kind)
    {
        // rapid_reset out of the way: the RST_STREAMs of "stream-errors" are stopped as frames the client makes us write.
        await using var proxy = await StartProxyAsync(
            "max_control_frames_per_second: 50, max_concurrent_streams: 1, rapid_reset: { max: 100000, window: 10s }");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        if (kind is "empty-data" or "refused-streams")
        {
            // Open until its body ends (the direct route waits for it): every later stream is one too many.
            await client.SendHeadersAsync(1, endStream: false, Post("/hello"));
        }
        else if (kind == "stream-errors")
        {
            await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/hello"));
            Assert.Equal(200, (await client.ReadResponseAsync(1)).Status);
        }

        await SendIgnoringCloseAsync(async () =>
        {
            for (int i = 0; i < 200; i++)
            {
                switch (kind)
                {
                    case "settings":
                        await client.SendFrameAsync(Http2FrameType.SETTINGS, Http2Flags.None, 0, []);
                        break;
                    case "ping":
                        await client.SendFrameAsync(Http2FrameType.PING, Http2Flags.None, 0, new byte[8]);
                        break;
                    case "empty-data":
                        await client.SendFrameAsync(Http2FrameType.DATA, Http2Flags.None, 1, []);
                        break;
                    case "refused-streams":
                        // Each refused with RST_STREAM REFUSED_STREAM.
                        await client.SendHeadersAsync(3 + 2 * i, endStream: true, Http2TestClient.Get("/hello"));
                        break;
                    case "stream-errors":
                        // A WINDOW_UPDATE of 0 on the closed stream: a stream error, an RST_STREAM each.
                        await client.SendFrameAsync(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, 1, [0, 0, 0, 0]);
                        break;
                    default:
                        await client.SendFrameAsync(Http2FrameType.PRIORITY, Http2Flags.None, 3, [0, 0, 0, 0, 16]);
                        break;
                }
            }
        });
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.ENHANCE_YOUR_CALM, goAway.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    [Fact]
    public async Task ZeroWindow_ClientNeverOpensIt_StreamResetAfterStallTimeout()
    {
        await using var proxy = await StartProxyAsync("send_stall_timeout: 1s");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public,
            new Http2Setting(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, 0));
        client.AutoWindowUpdate = false;

        await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/hello"));
        var headers = await client.WaitForAsync(f => f.Type == Http2FrameType.HEADERS && f.StreamId == 1);
        var reset = await client.WaitForRstAsync(1, TimeSpan.FromSeconds(8));

        Assert.False(headers.Has(Http2Flags.END_STREAM));
        Assert.Equal(Http2ErrorCode.CANCEL, reset.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    public static TheoryData<string> MalformedRequests => new()
    {
        "uppercase-name", "connection-header", "te-gzip", "transfer-encoding", "missing-path", "missing-scheme",
        "pseudo-after-regular", "response-pseudo", "duplicate-path", "empty-path", "value-with-newline", "value-leading-space",
        "absolute-form-path", "relative-path", "asterisk-path-get", "empty-authority",
    };

    private static (string, string)[] Malformed(string kind) => kind switch
    {
        "uppercase-name" => [.. Http2TestClient.Get("/hello"), ("X-Upper", "1")],
        "connection-header" => [.. Http2TestClient.Get("/hello"), ("connection", "keep-alive")],
        "te-gzip" => [.. Http2TestClient.Get("/hello"), ("te", "gzip")],
        "transfer-encoding" => [.. Http2TestClient.Get("/hello"), ("transfer-encoding", "chunked")],
        "missing-path" => [(":method", "GET"), (":scheme", "http"), (":authority", "example.test")],
        "missing-scheme" => [(":method", "GET"), (":path", "/hello"), (":authority", "example.test")],
        "pseudo-after-regular" => [(":method", "GET"), (":scheme", "http"), ("accept", "*/*"), (":path", "/hello")],
        "response-pseudo" => [.. Http2TestClient.Get("/hello"), (":status", "200")],
        "duplicate-path" => [.. Http2TestClient.Get("/hello"), (":path", "/other")],
        "empty-path" => [(":method", "GET"), (":scheme", "http"), (":authority", "example.test"), (":path", "")],
        "value-with-newline" => [.. Http2TestClient.Get("/hello"), ("x-a", "1\r\nx-injected: 2")],
        "value-leading-space" => [.. Http2TestClient.Get("/hello"), ("x-a", " 1")],
        // RFC 9113 section 8.3.1: :path is origin-form (or "*" for OPTIONS) outside CONNECT, and :authority names a host.
        "absolute-form-path" => [(":method", "GET"), (":scheme", "http"), (":authority", "example.test"), (":path", "http://example.test/hello")],
        "relative-path" => [(":method", "GET"), (":scheme", "http"), (":authority", "example.test"), (":path", "hello")],
        "asterisk-path-get" => [(":method", "GET"), (":scheme", "http"), (":authority", "example.test"), (":path", "*")],
        "empty-authority" => [(":method", "GET"), (":scheme", "http"), (":authority", ""), (":path", "/hello")],
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    [Theory]
    [MemberData(nameof(MalformedRequests))]
    public async Task MalformedRequest_StreamProtocolError_ConnectionGoesOn(string kind)
    {
        await using var proxy = await StartProxyAsync("max_concurrent_streams: 100");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await client.SendHeadersAsync(1, endStream: true, Malformed(kind));
        var reset = await client.WaitForRstAsync(1);
        await client.SendHeadersAsync(3, endStream: true, Http2TestClient.Get("/hello"));
        var next = await client.ReadResponseAsync(3);

        Assert.Equal(Http2ErrorCode.PROTOCOL_ERROR, reset.ErrorCode);
        Assert.Equal(200, next.Status);
    }

    [Theory]
    [InlineData(10, 5)]
    [InlineData(3, 5)]
    public async Task ContentLength_DisagreesWithData_StreamProtocolError(int declared, int sent)
    {
        await using var proxy = await StartProxyAsync("max_concurrent_streams: 100");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await client.SendHeadersAsync(1, endStream: false, [.. Post("/hello"), ("content-length", declared.ToString())]);
        await client.SendDataAsync(1, new byte[sent], endStream: true);
        var reset = await client.WaitForRstAsync(1);

        Assert.Equal(Http2ErrorCode.PROTOCOL_ERROR, reset.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    [Theory]
    [InlineData("even-stream-id")]
    [InlineData("interleaved-continuation")]
    [InlineData("data-on-idle-stream")]
    [InlineData("push-promise")]
    [InlineData("stream-id-goes-back")]
    public async Task ConnectionLevelViolation_GoAwayProtocolError(string kind)
    {
        await using var proxy = await StartProxyAsync("max_concurrent_streams: 100");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        byte[] get = client.Encode(Http2TestClient.Get("/hello"));

        switch (kind)
        {
            case "even-stream-id":
                await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, 2, get);
                break;
            case "interleaved-continuation":
                await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_STREAM, 1, get);
                await client.SendFrameAsync(Http2FrameType.PING, Http2Flags.None, 0, new byte[8]);
                break;
            case "data-on-idle-stream":
                await client.SendFrameAsync(Http2FrameType.DATA, Http2Flags.None, 7, [1, 2, 3]);
                break;
            case "push-promise":
                await client.SendFrameAsync(Http2FrameType.PUSH_PROMISE, Http2Flags.END_HEADERS, 1, [0, 0, 0, 2, .. get]);
                break;
            default:
                await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, 5, get);
                await client.ReadResponseAsync(5);
                await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, 3,
                    client.Encode(Http2TestClient.Get("/hello")));
                break;
        }
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.PROTOCOL_ERROR, goAway.ErrorCode);
        await AssertHealthyAsync(proxy);
    }

    /// <summary>RFC 9113 section 5.1, "closed": a frame after the client's END_STREAM is a connection error
    /// STREAM_CLOSED, even once the stream has left the proxy's table.</summary>
    [Theory]
    [InlineData("data")]
    [InlineData("headers")]
    public async Task FrameOnStreamBothSidesEnded_GoAwayStreamClosed(string frame)
    {
        await using var proxy = await StartProxyAsync("max_concurrent_streams: 100");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/hello"));
        Assert.Equal(200, (await client.ReadResponseAsync(1)).Status);

        if (frame == "data")
        {
            await client.SendDataAsync(1, [1, 2, 3], endStream: false);
        }
        else
        {
            await client.SendHeadersAsync(1, endStream: true, ("x-trailer", "late"));
        }
        var goAway = await client.WaitForGoAwayAsync();

        Assert.Equal(Http2ErrorCode.STREAM_CLOSED, goAway.ErrorCode);
        Assert.Equal(1, goAway.GoAwayLastStreamId);
        await AssertHealthyAsync(proxy);
    }

    /// <summary>RFC 9113 section 5.1, "closed": DATA after the client's own RST_STREAM is a stream error STREAM_CLOSED;
    /// the connection and its other streams go on.</summary>
    [Fact]
    public async Task DataAfterClientReset_RstStreamClosed_ConnectionGoesOn()
    {
        // An upstream that takes the connection (the kernel's backlog) and never answers: the stream is still waiting
        // on it when the client resets, so the reset is the client's alone.
        var silent = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        silent.Start();
        try
        {
            string yaml = Http2ServerTests.WithHttp2Limits(
                new ProxyConfig { BackendPort = ((IPEndPoint)silent.LocalEndpoint).Port }, "max_concurrent_streams: 100");
            await DataAfterClientResetAsync(yaml);
        }
        finally
        {
            silent.Stop();
        }
    }

    private static async Task DataAfterClientResetAsync(string yaml)
    {
        await using var proxy = await TestProxy.StartAsync(yaml);
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        await client.SendHeadersAsync(1, endStream: false, [.. Post("/upload"), ("content-length", "10")]);
        await client.SendRstAsync(1, Http2ErrorCode.CANCEL);

        await client.SendDataAsync(1, new byte[10], endStream: true);
        var reset = await client.WaitForAsync(f => f.Type is Http2FrameType.RST_STREAM or Http2FrameType.GOAWAY);
        await client.SendHeadersAsync(3, endStream: true, Http2TestClient.Get("/hello"));
        var next = await client.ReadResponseAsync(3);

        Assert.Equal(Http2FrameType.RST_STREAM, reset.Type);
        Assert.Equal(1, reset.StreamId);
        Assert.Equal(Http2ErrorCode.STREAM_CLOSED, reset.ErrorCode);
        Assert.Equal(200, next.Status);
    }

    /// <summary>Frames the client sent before it saw the proxy's RST_STREAM are ignored (section 5.1): here the rest of
    /// a body and its trailers after a 413 and RST_STREAM NO_ERROR. Before, the trailers closed the whole connection
    /// with GOAWAY STREAM_CLOSED, taking the client's other streams with it.</summary>
    [Fact]
    public async Task BodyAndTrailersAfterProxyReset_Ignored_ConnectionGoesOn()
    {
        string yaml = Http2ServerTests.WithHttp2Limits(
            new ProxyConfig { BackendPort = Ports.ClosedPort(), MaxBodyBytes = "1KiB" }, "max_concurrent_streams: 100");
        await using var proxy = await TestProxy.StartAsync(yaml);
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        await client.SendHeadersAsync(1, endStream: false, [.. Post("/hello"), ("content-length", "4096")]);
        var tooLarge = await client.ReadResponseAsync(1);
        await client.WaitForRstAsync(1);

        await client.SendDataAsync(1, new byte[4096], endStream: false);
        await client.SendHeadersAsync(1, endStream: true, ("x-checksum", "abc"));
        await client.SendHeadersAsync(3, endStream: true, Http2TestClient.Get("/hello"));
        var next = await client.ReadResponseAsync(3);

        Assert.Equal(413, tooLarge.Status);
        Assert.Equal(200, next.Status);
        Assert.Equal("hello\n", next.BodyText);
    }

    /// <summary>
    /// Resets the proxy sends for its own reasons (here an upstream that answers a head and then fails: INTERNAL_ERROR)
    /// are not the client's doing and do not count against rapid_reset: the connection stays up. The stream ends
    /// INTERNAL_ERROR, not REFUSED_STREAM: the upstream has processed the POST, and REFUSED_STREAM would tell the client
    /// to send it again (RFC 9113 section 8.7). The head is relayed as soon as it is read, so HEADERS usually went out
    /// before the failure; when they did not, the exchange had still reached the forwarder, and the code is the same.
    /// </summary>
    [Fact]
    public async Task UpstreamFailsAfterItsHead_Post_ResetInternalErrorNotRefusedAndNotCountedAsRapidReset()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.ResetAfter("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"));
        await using var proxy = await TestProxy.StartAsync(Http2ServerTests.WithHttp2Limits(
            new ProxyConfig { BackendPort = upstream.Port }, "rapid_reset: { max: 2, window: 10s }"));
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        var resets = new List<Http2ErrorCode>();
        for (int id = 1; id <= 7; id += 2)
        {
            await client.SendHeadersAsync(id, endStream: false, [.. Post("/orders"), ("content-length", "5")]);
            await client.SendDataAsync(id, "hello"u8, endStream: true);
            // The upstream's head may come first (it is relayed at once): decoded, to keep the HPACK table in step.
            var end = await client.WaitForAsync(f =>
            {
                if (f.Type == Http2FrameType.HEADERS)
                {
                    client.DecodeHeaders(f);
                }
                return f.Type == Http2FrameType.GOAWAY
                    || (f.StreamId == id && (f.Type == Http2FrameType.RST_STREAM || f.Has(Http2Flags.END_STREAM)));
            });
            resets.Add(end.Type == Http2FrameType.RST_STREAM ? end.ErrorCode : Http2ErrorCode.NO_ERROR);
        }
        await client.SendHeadersAsync(9, endStream: true, Http2TestClient.Get("/hello"));
        var next = await client.ReadResponseAsync(9);

        Assert.Equal(4, upstream.Requests.Length);
        Assert.All(resets, code => Assert.Equal(Http2ErrorCode.INTERNAL_ERROR, code));
        Assert.Equal(200, next.Status);
    }

    /// <summary>
    /// A body over max_body_bytes whose DATA comes in the same write as its HEADERS (as Go and gRPC clients send it),
    /// declared by content-length or not: 413 on the stream, as when the HEADERS come alone, and the connection goes
    /// on. Before, the read loop reset the stream (CANCEL) before its bridge could answer, and nothing was logged.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task BodyOverLimit_DataInSameWriteAsHeaders_Answers413(bool declared)
    {
        string yaml = Http2ServerTests.WithHttp2Limits(
            new ProxyConfig { BackendPort = Ports.ClosedPort(), MaxBodyBytes = "1KiB" }, "max_concurrent_streams: 100");
        await using var proxy = await TestProxy.StartAsync(yaml);
        // The echo listener reads every body (a respond route answers without reading one).
        await using var client = await Http2TestClient.ConnectAsync(proxy.Echo);
        // 2000 octets: HEADERS and DATA fit in one read of the proxy's (4 KiB blocks), so both are in one read pass.
        (string, string)[] fields = declared ? [.. Post("/hello"), ("content-length", "2000")] : Post("/hello");
        var write = new ArrayBufferWriter<byte>();
        Http2FrameWriter.WriteHeaders(write, 1, client.Encode(fields), endStream: false, 16_384);
        Http2FrameWriter.WriteData(write, 1, new byte[2000], endStream: true);
        await client.SendRawAsync(write.WrittenSpan.ToArray());

        var tooLarge = await client.ReadResponseAsync(1);
        await client.SendHeadersAsync(3, endStream: true, Http2TestClient.Get("/next"));
        var next = await client.ReadResponseAsync(3);

        Assert.Equal(413, tooLarge.Status);
        Assert.Equal(200, next.Status);
    }

    [Fact]
    public async Task BadPreface_ConnectionClosedWithoutAnswer()
    {
        await using var proxy = await StartProxyAsync("max_concurrent_streams: 100");
        await using var raw = await RawClient.ConnectAsync(proxy.Public);

        await raw.SendAsync("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "garbage-that-is-not-a-settings-frame");
        var closed = await raw.ReadToCloseAsync();

        Assert.True(closed.Closed || closed.Reset);
        await AssertHealthyAsync(proxy);
    }
}

/// <summary>
/// The unflushed-answer bound of <see cref="Http2AttackTests"/>, alone in the memory-sensitive collection: it measures
/// the process's managed heap, which tests running beside it would inflate (seen in CI: +108 MiB from a neighbour).
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class Http2AnswerBacklogTests
{
    /// <summary>
    /// A client that provokes answers (PING acknowledgements, RST_STREAM for stream errors) and never reads them: with
    /// the flood limits out of the way, the bound on unflushed answers must close the connection and keep the proxy's
    /// memory flat. Before, every answer went into the unbounded frame pipe: hundreds of MiB in seconds.
    /// </summary>
    [Theory]
    [InlineData("ping")]
    [InlineData("window-update-zero")]
    public async Task AnswersNeverRead_BacklogBounded_ConnectionClosed(string kind)
    {
        await using var proxy = await TestProxy.StartAsync(Http2ServerTests.WithHttp2Limits(new ProxyConfig { BackendPort = Ports.ClosedPort() },
            "max_control_frames_per_second: 1000000000, rapid_reset: { max: 1000000000, window: 1s }, send_stall_timeout: 60s"));
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 4096 };
        await socket.ConnectAsync(proxy.Public);
        var start = new ArrayBufferWriter<byte>();
        start.Write(Http2Preface.ClientPreface);
        Http2FrameWriter.WriteSettings(start, []);
        var encoder = new HPackEncoder();
        var block = new byte[256];
        encoder.TryBeginHeaderBlock(block, out int length);
        foreach (var (name, value) in Http2TestClient.Get("/hello"))
        {
            encoder.TryEncode(System.Text.Encoding.ASCII.GetBytes(name), System.Text.Encoding.ASCII.GetBytes(value),
                HPackIndexing.WithoutIndexing, block.AsSpan(length), out int written);
            length += written;
        }
        // Stream 1 is answered by the direct route and closes; its WINDOW_UPDATEs of 0 are stream errors all the same.
        Http2FrameWriter.WriteHeaders(start, 1, block.AsSpan(0, length), endStream: true, 16_384);
        await socket.SendAsync(start.WrittenMemory);
        var frame = new ArrayBufferWriter<byte>();
        if (kind == "ping")
        {
            Http2FrameWriter.WritePing(frame, 7, ack: false);
        }
        else
        {
            Http2FrameWriter.WriteFrameHeader(frame.GetSpan(Http2FrameHeader.Size), 4, Http2FrameType.WINDOW_UPDATE, Http2Flags.None, 1);
            frame.Advance(Http2FrameHeader.Size);
            frame.Write(new byte[4]);
        }
        byte[] batch = [.. Enumerable.Repeat(frame.WrittenMemory.ToArray(), 4096).SelectMany(f => f)];

        using var memory = MemoryWatch.Start();
        bool closed = false;
        socket.Blocking = false;
        var clock = Stopwatch.StartNew();
        int offset = 0;
        while (!closed && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            try
            {
                // Non-blocking, the rest of a partial send first: frames stay whole.
                offset += socket.Send(batch, offset, batch.Length - offset, SocketFlags.None);
                offset %= batch.Length;
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.WouldBlock)
            {
                await Task.Delay(5);
            }
            catch (SocketException)
            {
                closed = true;
            }
        }

        Assert.True(closed, $"still open after {clock.Elapsed.TotalSeconds:0.0} s of answers never read; {memory}");
        Assert.True(memory.ManagedGrowth < 64 * 1024 * 1024, memory.ToString());
        await Http2AttackTests.AssertHealthyAsync(proxy);
    }
}
