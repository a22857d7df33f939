using System.Net;
using System.Text;
using System.Text.Json;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Real clients through the proxy: HttpClient (SocketsHttpHandler) and curl.</summary>
public sealed class ClientInteropTests
{
    [Fact]
    public async Task HttpClient_Get_ReturnsUpstreamBody()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        using var http = Clients.CreateHttpClient();

        using var response = await http.GetAsync(new Uri(scenario.Proxy.PublicUri, "/items?id=7"));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("GET /items?id=7", await response.Content.ReadAsStringAsync());
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
    }

    [Fact]
    public async Task HttpClient_SequentialRequests_ReuseConnections()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        using var http = Clients.CreateHttpClient();

        for (var i = 0; i < 10; i++)
        {
            Assert.Equal($"GET /r{i}", await http.GetStringAsync(new Uri(scenario.Proxy.PublicUri, $"/r{i}")));
        }

        Assert.Equal(1, scenario.Upstream.ConnectionCount);
        Assert.Equal(1, scenario.Proxy.Server.OpenConnections);
    }

    [Fact]
    public async Task HttpClient_PostBody_UpstreamReceivesItAll()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody());
        using var http = Clients.CreateHttpClient();
        var body = new byte[1024 * 1024 + 5];
        new BodyGenerator(body.Length).Fill(body);

        using var response = await http.PostAsync(new Uri(scenario.Proxy.PublicUri, "/upload"), new ByteArrayContent(body));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal($"{body.Length} {BodyGenerator.ExpectedHash(body.Length)}", await response.Content.ReadAsStringAsync());
        Assert.Equal(body.Length.ToString(), scenario.Upstream.Requests.Single().Header("content-length"));
    }

    [Fact]
    public async Task HttpClient_ChunkedUpload_ForwardedChunked()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody());
        using var http = Clients.CreateHttpClient();
        const string text = "streamed without a length";
        var content = new StringContent(text);
        content.Headers.ContentLength = null;
        using var request = new HttpRequestMessage(HttpMethod.Put, new Uri(scenario.Proxy.PublicUri, "/stream")) { Content = content };
        request.Headers.TransferEncodingChunked = true;

        using var response = await http.SendAsync(request);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.StartsWith($"{text.Length} ", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.True(scenario.Upstream.Requests.Single().Chunked);
    }

    [Fact]
    public async Task HttpClient_DirectRouteAndEchoListener_Answer()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        using var http = Clients.CreateHttpClient();

        Assert.Equal("hello\n", await http.GetStringAsync(new Uri(scenario.Proxy.PublicUri, "/hello")));
        using var echo = await http.PostAsync(new Uri(scenario.Proxy.EchoUri, "/e?q=1"), new StringContent("12345"));
        using var json = JsonDocument.Parse(await echo.Content.ReadAsStringAsync());

        Assert.Equal("POST", json.RootElement.GetProperty("method").GetString());
        Assert.Equal("/e?q=1", json.RootElement.GetProperty("target").GetString());
        Assert.Equal(5, json.RootElement.GetProperty("body_bytes").GetInt64());
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }

    [Fact]
    public async Task HttpClient_ConcurrentRequests_AllSucceed()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        using var http = Clients.CreateHttpClient();

        var tasks = Enumerable.Range(0, 50).Select(i => http.GetStringAsync(new Uri(scenario.Proxy.PublicUri, $"/c{i}"))).ToArray();
        var bodies = await Task.WhenAll(tasks).WaitAsync(TestDefaults.Timeout);

        for (var i = 0; i < bodies.Length; i++)
        {
            Assert.Equal($"GET /c{i}", bodies[i]);
        }
    }

    [Fact]
    public async Task HttpClient_UpstreamDown_Gets502()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        using var http = Clients.CreateHttpClient();

        using var response = await http.GetAsync(new Uri(proxy.PublicUri, "/down"));

        Assert.Equal(HttpStatusCode.BadGateway, response.StatusCode);
        Assert.StartsWith("502 ", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Curl_Get_ReturnsUpstreamBody()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var result = await Curl.RunAsync([$"{scenario.Proxy.PublicUri}curl/get?x=1"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("GET /curl/get?x=1", result.StdoutText);
        var forwarded = scenario.Upstream.Requests.Single();
        Assert.Equal($"127.0.0.1:{scenario.Proxy.Public.Port}", forwarded.Header("host"));
        Assert.StartsWith("curl/", forwarded.Header("user-agent"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Curl_PostBinaryBody_UpstreamReceivesIt()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody());
        var body = new byte[300_000];
        new BodyGenerator(body.Length).Fill(body);

        var result = await Curl.RunAsync(["--data-binary", "@-", "-H", "Content-Type: application/octet-stream", $"{scenario.Proxy.PublicUri}post"], body);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal($"{body.Length} {BodyGenerator.ExpectedHash(body.Length)}", result.StdoutText);
    }

    [Fact]
    public async Task Curl_ChunkedUpload_ForwardedChunked()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody());
        var body = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("chunk of text ", 5000)));

        var result = await Curl.RunAsync(["-H", "Transfer-Encoding: chunked", "--data-binary", "@-", $"{scenario.Proxy.PublicUri}chunked"], body);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.StartsWith($"{body.Length} ", result.StdoutText, StringComparison.Ordinal);
        Assert.True(scenario.Upstream.Requests.Single().Chunked);
    }

    [Fact]
    public async Task Curl_EchoListener_ReturnsJson()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });

        var result = await Curl.RunAsync(["-X", "PUT", "--data-binary", "abc", $"{proxy.EchoUri}quickstart?v=1"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.Stdout);
        Assert.Equal("PUT", json.RootElement.GetProperty("method").GetString());
        Assert.Equal("/quickstart?v=1", json.RootElement.GetProperty("target").GetString());
        Assert.Equal(3, json.RootElement.GetProperty("body_bytes").GetInt64());
    }

    [Fact]
    public async Task Curl_HeadAndHttp10_Work()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var head = await Curl.RunAsync(["--head", $"{scenario.Proxy.PublicUri}head"]);
        var http10 = await Curl.RunAsync(["--http1.0", $"{scenario.Proxy.PublicUri}old"]);

        Assert.True(head.ExitCode == 0, head.ToString());
        Assert.StartsWith("HTTP/1.1 200", head.StdoutText, StringComparison.Ordinal);
        Assert.True(http10.ExitCode == 0, http10.ToString());
        Assert.Equal("GET /old", http10.StdoutText);
    }

    [Fact]
    public async Task Curl_DirectRoute_ReturnsHelloWithStatus()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());

        var result = await Curl.RunAsync(["--include", $"{scenario.Proxy.PublicUri}hello"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.StartsWith("HTTP/1.1 200", result.StdoutText, StringComparison.Ordinal);
        Assert.EndsWith("\r\n\r\nhello\n", result.StdoutText, StringComparison.Ordinal);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
    }
}
