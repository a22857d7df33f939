using Proxy.FunctionalTests.Grpc;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// 1xx interim responses (RFC 9110 section 15.2) across protocols: an HTTP/2 upstream's interim HEADERS (RFC 9113
/// section 8.1) relayed to HTTP/1.1 clients as interim heads, and any upstream's interim heads relayed to HTTP/2
/// clients as HEADERS frames without END_STREAM before the final response.
/// </summary>
public sealed class InterimResponseTests
{
    private static Task<TestProxy> StartH2cProxyAsync(int port) => ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{port}"), "h2c");

    /// <summary>curl's view of an HTTP/2 exchange: every head it received, in order, then the body.</summary>
    private static async Task<string> CurlH2Async(TestProxy proxy, string path)
    {
        var result = await Curl.RunAsync(["--http2-prior-knowledge", "--include", $"{proxy.PublicUri}{path.TrimStart('/')}"]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return result.StdoutText;
    }

    [Fact]
    public async Task H2cUpstream103_Http11Client_Gets103ThenFinalWithoutHopByHopFields()
    {
        await using var upstream = new RawH2Upstream(_ => RawH2Behavior.EarlyHints);
        await using var proxy = await StartH2cProxyAsync(upstream.Port);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(Wire.Get("/page"));
        var response = await client.ReadResponseAsync();

        var interim = Assert.Single(response.Interim);
        Assert.Equal("HTTP/1.1 103 Early Hints", interim.StartLine);
        Assert.Equal("</style.css>; rel=preload", interim.Header("link"));
        Assert.False(interim.HasHeader("keep-alive"), interim.ToString());
        Assert.Equal(200, response.Status);
        Assert.Equal("ok1", response.BodyText);

        // The connection stays usable, and the next exchange sees its own interim head (no leftover from the first).
        await client.SendAsync(Wire.Get("/again"));
        var next = await client.ReadResponseAsync();
        Assert.Single(next.Interim);
        Assert.Equal("ok1", next.BodyText);
    }

    [Fact]
    public async Task H2cUpstream103_Http10Client_GetsOnlyFinal()
    {
        await using var upstream = new RawH2Upstream(_ => RawH2Behavior.EarlyHints);
        await using var proxy = await StartH2cProxyAsync(upstream.Port);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync("GET /old HTTP/1.0\r\nHost: example.test\r\n\r\n");
        var response = await client.ReadResponseAsync();

        Assert.Empty(response.Interim);
        Assert.Equal(200, response.Status);
        Assert.Equal("ok1", response.BodyText);
    }

    [Fact]
    public async Task H2cUpstream101_IsMalformed_Answers502()
    {
        await using var upstream = new RawH2Upstream(_ => RawH2Behavior.SwitchingProtocols);
        await using var proxy = await StartH2cProxyAsync(upstream.Port);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(Wire.Get("/upgrade-me"));
        var response = await client.ReadResponseAsync();

        Assert.Empty(response.Interim);
        ProxyAssert.ErrorAnswer(response, 502);
    }

    /// <summary>
    /// RFC 9113 section 8.2.1: a field an HTTP/2 upstream sends with CR, LF or NUL in its value, an uppercase name or
    /// a value with leading whitespace makes the response malformed. Relayed, "a\r\nset-cookie: injected=1" became a
    /// second header line of the client's HTTP/1.1 response (response splitting).
    /// </summary>
    [Theory]
    [InlineData("crlf")]
    [InlineData("uppercase")]
    [InlineData("leading-space")]
    public async Task H2cUpstreamMalformedField_Answers502AndRelaysNothingOfIt(string kind)
    {
        RawH2Behavior behavior = kind switch
        {
            "crlf" => RawH2Behavior.CrLfInValue,
            "uppercase" => RawH2Behavior.UppercaseName,
            _ => RawH2Behavior.LeadingSpaceValue,
        };
        await using var upstream = new RawH2Upstream(_ => behavior);
        await using var proxy = await StartH2cProxyAsync(upstream.Port);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(Wire.Get("/split"));
        var response = await client.ReadResponseAsync();

        ProxyAssert.ErrorAnswer(response, 502);
        Assert.Null(response.Header("set-cookie"));
        Assert.Null(response.Header("x-upper"));
        Assert.Null(response.Header("x-note"));
    }

    [Fact]
    public async Task H2cUpstreamMalformedTrailer_ClientConnectionCutWithoutTheField()
    {
        await using var upstream = new RawH2Upstream(_ => RawH2Behavior.CrLfInTrailer);
        await using var proxy = await StartH2cProxyAsync(upstream.Port);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(Wire.Get("/split"));
        var result = await client.ReadToCloseAsync();

        Assert.StartsWith("HTTP/1.1 200", result.Text, StringComparison.Ordinal);
        Assert.DoesNotContain("injected", result.Text, StringComparison.Ordinal);
        Assert.DoesNotContain("\r\n0\r\n", result.Text, StringComparison.Ordinal); // no clean end of the chunked body
    }

    [Fact]
    public async Task H2cUpstream103_Http2Client_GetsInterimHeadersThenFinal()
    {
        await using var upstream = new RawH2Upstream(_ => RawH2Behavior.EarlyHints);
        await using var proxy = await StartH2cProxyAsync(upstream.Port);

        string output = await CurlH2Async(proxy, "/page");

        int interim = output.IndexOf("HTTP/2 103", StringComparison.Ordinal);
        int final = output.IndexOf("HTTP/2 200", StringComparison.Ordinal);
        Assert.True(interim >= 0 && final > interim, output);
        Assert.Contains("link: </style.css>; rel=preload", output[interim..final], StringComparison.Ordinal);
        Assert.DoesNotContain("keep-alive", output, StringComparison.OrdinalIgnoreCase);
        Assert.EndsWith("ok1", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Http11Upstream103_Http2Client_GetsInterimHeadersThenFinal()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(
            "HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\n" + Wire.Response(200, "final")));

        string output = await CurlH2Async(scenario.Proxy, "/page");

        int interim = output.IndexOf("HTTP/2 103", StringComparison.Ordinal);
        int final = output.IndexOf("HTTP/2 200", StringComparison.Ordinal);
        Assert.True(interim >= 0 && final > interim, output);
        Assert.Contains("link: </app.js>; rel=preload", output[interim..final], StringComparison.OrdinalIgnoreCase);
        Assert.EndsWith("final", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ExpectContinue_H2cUpstream_ProxyAnswers100ItselfThenRelaysFinal()
    {
        // The proxy answers 100 Continue itself (Expect is hop-by-hop and not sent upstream), as for HTTP/1.1 upstreams.
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartH2cProxyAsync(upstream.Port);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync("POST /echo HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        var continued = await client.ReadResponseHeadAsync();
        Assert.Equal("HTTP/1.1 100 Continue", continued.StartLine);
        await client.SendAsync("hello");
        var response = await client.ReadResponseAsync("POST");

        Assert.Empty(response.Interim); // no second 100 relayed from the upstream
        Assert.Equal(200, response.Status);
        Assert.Equal("hello", response.BodyText);
    }
}
