using System.Net;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;

namespace Proxy.FunctionalTests.Http2;

/// <summary>The HTTP/2 server with real clients (curl, HttpClient, h2load) over h2c prior knowledge on the cleartext port.</summary>
public sealed class Http2ServerTests
{
    internal static HttpClient CreateH2Client() =>
        new(new SocketsHttpHandler { UseProxy = false, AllowAutoRedirect = false, ConnectTimeout = TestDefaults.Timeout })
        {
            Timeout = TestDefaults.Timeout,
            DefaultRequestVersion = HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

    /// <summary>The default functional-test config with a <c>limits.http2</c> block.</summary>
    internal static string WithHttp2Limits(ProxyConfig config, string http2)
    {
        string yaml = config.Render();
        string marker = $"body_timeout: {config.BodyTimeout} }}";
        Assert.Contains(marker, yaml, StringComparison.Ordinal);
        return yaml.Replace(marker, $"body_timeout: {config.BodyTimeout}, http2: {{ {http2} }} }}", StringComparison.Ordinal);
    }

    [Fact]
    public async Task Curl_PriorKnowledge_DirectRoute_AnswersOverHttp2()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var result = await Curl.RunAsync(["--http2-prior-knowledge", "--include", $"{scenario.Proxy.PublicUri}hello"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.StartsWith("HTTP/2 200", result.StdoutText, StringComparison.Ordinal);
        Assert.Contains("content-length: 6", result.StdoutText, StringComparison.Ordinal);
        Assert.Contains("x-request-id: ", result.StdoutText, StringComparison.Ordinal);
        Assert.EndsWith("\r\n\r\nhello\n", result.StdoutText, StringComparison.Ordinal);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task Curl_PriorKnowledge_Upload1MiB_UpstreamReceivesItAsHttp11()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody());
        var body = new byte[1024 * 1024 + 7];
        new BodyGenerator(body.Length).Fill(body);

        var result = await Curl.RunAsync(["--http2-prior-knowledge", "--data-binary", "@-", "-H", "Content-Type: application/octet-stream",
            $"{scenario.Proxy.PublicUri}upload"], body);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal($"{body.Length} {BodyGenerator.ExpectedHash(body.Length)}", result.StdoutText);
        var request = scenario.Upstream.Requests.Single();
        Assert.Equal(body.Length.ToString(), request.Header("content-length"));
        Assert.Equal($"127.0.0.1:{scenario.Proxy.Public.Port}", request.Header("host"));
    }

    [Fact]
    public async Task Curl_PriorKnowledge_Download2MiB_ArrivesWhole()
    {
        const int length = 2 * 1024 * 1024 + 3;
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Download(length, chunked: true));

        var result = await Curl.RunAsync(["--http2-prior-knowledge", "--output", "-", $"{scenario.Proxy.PublicUri}big"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        var expected = new byte[length];
        new BodyGenerator(length).Fill(expected);
        Assert.Equal(expected, result.Stdout);
    }

    [Fact]
    public async Task HttpClient_H2c_UploadAndDownload1MiB_BothWays()
    {
        const int length = 1024 * 1024 + 11;
        await using var upload = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody());
        await using var download = await ProxyScenario.StartAsync(UpstreamBehaviors.Download(length));
        using var http = CreateH2Client();
        var body = new byte[length];
        new BodyGenerator(length).Fill(body);

        using var posted = await http.PostAsync(new Uri(upload.Proxy.PublicUri, "/up"), new ByteArrayContent(body));
        var received = await http.GetByteArrayAsync(new Uri(download.Proxy.PublicUri, "/down"));

        Assert.Equal(HttpVersion.Version20, posted.Version);
        Assert.Equal($"{length} {BodyGenerator.ExpectedHash(length)}", await posted.Content.ReadAsStringAsync());
        Assert.Equal(body, received);
    }

    [Fact]
    public async Task HttpClient_H2c_ChunkedUpload_ForwardedChunked()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody());
        using var http = CreateH2Client();
        var content = new StringContent(string.Concat(Enumerable.Repeat("streamed ", 10_000)));
        content.Headers.ContentLength = null;

        using var response = await http.PostAsync(new Uri(scenario.Proxy.PublicUri, "/stream"), content);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.StartsWith("90000 ", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.True(scenario.Upstream.Requests.Single().Chunked);
    }

    [Fact]
    public async Task HttpClient_H2c_ManyConcurrentStreams_AllAnsweredOnOneConnection()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Delayed(TimeSpan.FromMilliseconds(20)));
        using var http = CreateH2Client();

        var tasks = Enumerable.Range(0, 64).Select(i => http.GetStringAsync(new Uri(scenario.Proxy.PublicUri, $"/s{i}"))).ToArray();
        var bodies = await Task.WhenAll(tasks);

        for (int i = 0; i < bodies.Length; i++)
        {
            Assert.Equal($"GET /s{i}", bodies[i]);
        }
        Assert.Equal(64, scenario.Upstream.Requests.Length);
    }

    [Fact]
    public async Task HttpClient_H2c_EchoListenerAndLocalErrors_Work()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        using var http = CreateH2Client();

        using var echo = await http.PostAsync(new Uri(proxy.EchoUri, "/e?q=1"), new StringContent("12345"));
        using var refused = await http.GetAsync(new Uri(proxy.PublicUri, "/nowhere"));
        using var head = new HttpRequestMessage(HttpMethod.Head, new Uri(proxy.PublicUri, "/hello"))
        {
            Version = HttpVersion.Version20, // a message does not take the client's default version
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        using var headResponse = await http.SendAsync(head);

        Assert.Contains("\"body_bytes\":5", await echo.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.BadGateway, refused.StatusCode);
        Assert.Equal(HttpStatusCode.OK, headResponse.StatusCode);
        Assert.Equal(HttpVersion.Version20, headResponse.Version);
        Assert.Equal(6, headResponse.Content.Headers.ContentLength);
        Assert.Empty(await headResponse.Content.ReadAsByteArrayAsync());
    }

    /// <summary>
    /// The echo listener reports the protocol the request arrived in. It used to say HTTP/1.1 for an HTTP/2 stream,
    /// whose request runs the HTTP/1.1 loop as an equivalent HTTP/1.1 head.
    /// </summary>
    [Fact]
    public async Task EchoListener_H2cAndHttp11Clients_ReportTheirVersion()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        using var h2 = CreateH2Client();
        using var h1 = new HttpClient { Timeout = TestDefaults.Timeout };

        using var overH2 = await h2.GetAsync(new Uri(proxy.EchoUri, "/e"));
        using var overH1 = await h1.GetAsync(new Uri(proxy.EchoUri, "/e"));

        Assert.Equal(HttpVersion.Version20, overH2.Version);
        Assert.Contains("\"version\":\"HTTP/2\"", await overH2.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Contains("\"version\":\"HTTP/1.1\"", await overH1.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    /// <summary>
    /// A cluster with <c>protocol: h2c</c> really speaks HTTP/2 to its destination (samples/grpc): an echo listener behind
    /// it sees an HTTP/2 stream, while an HTTP/1.1 client talks to the front proxy.
    /// </summary>
    [Fact]
    public async Task H2cCluster_ToEchoListener_RequestArrivesOverHttp2()
    {
        await using var back = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        await using var front = await TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: echo }
            clusters:
              echo: { protocol: h2c, destinations: ["http://127.0.0.1:{{back.Echo.Port}}"] }

            """);
        using var h1 = new HttpClient { Timeout = TestDefaults.Timeout };

        using var response = await h1.GetAsync(new Uri(front.PublicUri, "/greet"));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(HttpVersion.Version11, response.Version);
        Assert.Contains("\"version\":\"HTTP/2\"", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Http11_OnSamePort_StillWorksBesideH2c()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        using var h1 = Clients.CreateHttpClient();
        using var h2 = CreateH2Client();

        using var one = await h1.GetAsync(new Uri(scenario.Proxy.PublicUri, "/a"));
        using var two = await h2.GetAsync(new Uri(scenario.Proxy.PublicUri, "/b"));

        Assert.Equal(HttpVersion.Version11, one.Version);
        Assert.Equal(HttpVersion.Version20, two.Version);
        Assert.Equal("GET /a", await one.Content.ReadAsStringAsync());
        Assert.Equal("GET /b", await two.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task H2load_BoundedRun_EveryRequestSucceeds()
    {
        const string h2load = "/usr/bin/h2load";
        Assert.True(File.Exists(h2load), "h2load is required: " + h2load);
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var result = await ProcessRunner.RunAsync(h2load, ["-n", "3000", "-c", "4", "-m", "10", $"{scenario.Proxy.PublicUri}hello"],
            timeout: TimeSpan.FromSeconds(30));

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains("3000 succeeded, 0 failed, 0 errored", result.StdoutText, StringComparison.Ordinal);
        Assert.Contains("status codes: 3000 2xx", result.StdoutText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Shutdown_StreamInFlight_GoAwayNoErrorThenResponseCompletes()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Delayed(TimeSpan.FromMilliseconds(500)));
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);
        await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/slow"));
        await scenario.Upstream.WaitForRequestAsync();

        var stop = scenario.Proxy.StopAsync(TimeSpan.FromSeconds(5));
        var goAway = await client.WaitForGoAwayAsync();
        var response = await client.ReadResponseAsync(1);
        await stop;

        Assert.Equal(Http2ErrorCode.NO_ERROR, goAway.ErrorCode);
        Assert.Equal(1, goAway.GoAwayLastStreamId);
        Assert.Equal(200, response.Status);
        Assert.Equal("GET /slow", response.BodyText);
        Assert.True(await client.WaitForCloseAsync());
    }
}
