using System.Net;
using Proxy.FunctionalTests.Http2;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;

namespace Proxy.FunctionalTests.Trailers;

/// <summary>Trailers across the HTTP/2 server bridge: client trailer HEADERS to the upstream's chunked trailer section and back.</summary>
public sealed class Http2TrailerTests
{
    private const string GrpcResponse =
        "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
        + "5\r\nhello\r\n0\r\nGrpc-Status: 0\r\ngrpc-message: done\r\ncontent-length: 1\r\nx-sum: 1\r\n\r\n";

    [Fact]
    public async Task HttpClient_H2c_ChunkedUpstreamTrailers_ArriveAsTrailingHeaders()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(GrpcResponse));
        using var http = Http2ServerTests.CreateH2Client();

        using var response = await http.GetAsync(new Uri(scenario.Proxy.PublicUri, "/pkg.Svc/Call"));
        string body = await response.Content.ReadAsStringAsync();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("hello", body);
        Assert.Equal("0", Assert.Single(response.TrailingHeaders.GetValues("grpc-status")));
        Assert.Equal("done", Assert.Single(response.TrailingHeaders.GetValues("grpc-message")));
        Assert.Equal("1", Assert.Single(response.TrailingHeaders.GetValues("x-sum")));
        Assert.False(response.TrailingHeaders.Contains("content-length"));
    }

    /// <summary>
    /// An HTTP/2 client's "te: trailers" reaches an h2c upstream (gRPC servers look for it), and the upstream's trailers
    /// come back even when its response also has a content-length. The bridge used to drop the client's "te", so
    /// neither happened: grpc-status was lost.
    /// </summary>
    [Fact]
    public async Task HttpClient_H2c_TeTrailersToH2cUpstream_ForwardedAndTrailersKeptWithContentLength()
    {
        await using var upstream = await Proxy.FunctionalTests.Grpc.H2Upstream.StartAsync();
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c", "connect_timeout: 5s");
        using var http = Http2ServerTests.CreateH2Client();

        // A message built here does not take the client's default version: HTTP/2 is asked for on each.
        using var info = new HttpRequestMessage(HttpMethod.Get, new Uri(proxy.PublicUri, "/info"))
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        info.Headers.TE.ParseAdd("trailers");
        using var infoResponse = await http.SendAsync(info);
        Assert.Equal(HttpVersion.Version20, infoResponse.Version);
        Assert.EndsWith("|trailers", await infoResponse.Content.ReadAsStringAsync());

        using var call = new HttpRequestMessage(HttpMethod.Get, new Uri(proxy.PublicUri, "/trailers-with-length"))
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        call.Headers.TE.ParseAdd("trailers");
        using var response = await http.SendAsync(call);
        Assert.Equal("body-before-trailers", await response.Content.ReadAsStringAsync());
        Assert.Equal("0", Assert.Single(response.TrailingHeaders.GetValues("grpc-status")));
    }

    [Fact]
    public async Task Frames_ResponseTrailers_TrailingHeadersFrameWithEndStream()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(GrpcResponse));
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/pkg.Svc/Call"));
        var frames = new List<Http2Frame>();
        while (true)
        {
            var frame = await client.WaitForAsync(f => f.StreamId == 1);
            frames.Add(frame);
            if (frame.Has(Http2Flags.END_STREAM))
            {
                break;
            }
        }

        // HEADERS, DATA "hello", then the trailers as HEADERS carrying END_STREAM (RFC 9113 section 8.1).
        Assert.Equal(Http2FrameType.HEADERS, frames[0].Type);
        Assert.Equal(Http2FrameType.HEADERS, frames[^1].Type);
        Assert.True(frames[^1].Has(Http2Flags.END_HEADERS));
        Assert.Contains(frames, f => f.Type == Http2FrameType.DATA && f.Payload.Length == 5);
    }

    [Fact]
    public async Task Frames_RequestTrailers_ReachUpstreamAsChunkedTrailerSection()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: false,
            [.. Http2TestClient.Get("/pkg.Svc/Upload", method: "POST"), ("content-type", "application/grpc"), ("te", "trailers")]);
        await client.SendDataAsync(1, "hello"u8, endStream: false);
        await client.SendHeadersAsync(1, endStream: true, ("x-checksum", "abc"), ("host", "evil.test"), ("x-request-id", "forged"),
            ("grpc-status", "0"));
        var response = await client.ReadResponseAsync(1);

        Assert.Equal(200, response.Status);
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.True(forwarded.Chunked);
        Assert.Equal("hello", forwarded.BodyText);
        Assert.EndsWith("5\r\nhello\r\n0\r\nx-checksum: abc\r\ngrpc-status: 0\r\n\r\n", scenario.Upstream.ReceivedText, StringComparison.Ordinal);
        ProxyAssert.UpstreamHadNoErrors(scenario.Upstream);
    }

    [Theory]
    [InlineData(":path", "/x")]
    [InlineData("X-Upper", "v")]
    [InlineData("x-bad", "a\nb")]
    public async Task Frames_MalformedRequestTrailers_StreamProtocolError(string name, string value)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: false, [.. Http2TestClient.Get("/upload", method: "POST")]);
        await client.SendDataAsync(1, "hello"u8, endStream: false);
        await client.SendHeadersAsync(1, endStream: true, ("x-ok", "1"), (name, value));

        var rst = await client.WaitForRstAsync(1);
        Assert.Equal(Http2ErrorCode.PROTOCOL_ERROR, rst.ErrorCode);
        // A stream error only: the connection still serves new streams.
        await client.SendHeadersAsync(3, endStream: true, Http2TestClient.Get("/hello"));
        Assert.Equal(200, (await client.ReadResponseAsync(3)).Status);
    }

    [Fact]
    public async Task Frames_GrpcLocalFailure_SingleTrailersOnlyHeadersFrame()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await client.SendHeadersAsync(1, endStream: true,
            [.. Http2TestClient.Get("/pkg.Svc/Call", method: "POST"), ("content-type", "application/grpc"), ("te", "trailers")]);
        var first = await client.WaitForAsync(f => f.StreamId == 1);
        Assert.Equal(Http2FrameType.HEADERS, first.Type);
        Assert.True(first.Has(Http2Flags.END_STREAM));
    }

    [Fact]
    public async Task HttpClient_H2c_GrpcLocalFailure_Status200WithGrpcStatus14()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        using var http = Http2ServerTests.CreateH2Client();
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(proxy.PublicUri, "/pkg.Svc/Call"))
        {
            Content = new ByteArrayContent([0, 0, 0, 0, 0]),
            Version = HttpVersion.Version20, // a message does not take the client's default version
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        request.Content.Headers.ContentType = new("application/grpc");
        request.Content.Headers.ContentLength = null;

        using var response = await http.SendAsync(request);
        await response.Content.ReadAsByteArrayAsync();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(HttpVersion.Version20, response.Version);
        // Trailers-only: the status is in the only header block.
        Assert.Equal("14", Assert.Single(response.Headers.GetValues("grpc-status")));
        Assert.Equal("application/grpc", response.Content.Headers.ContentType?.MediaType);
    }
}
