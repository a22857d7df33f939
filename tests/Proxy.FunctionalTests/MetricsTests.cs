using System.Globalization;
using System.Net;
using System.Text;
using Proxy.Core.Tests.Diagnostics;
using Proxy.FunctionalTests.Grpc;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// The upstream duration, body bytes, HTTP/2 streams and pool wait metrics, read from <c>/metrics</c> after real
/// requests over sockets: HTTP/1.1 and HTTP/2 (h2c prior knowledge) clients, an HTTP/1.1 and an h2c upstream.
/// </summary>
public sealed class MetricsTests
{
    private static string Yaml(string h1Upstream, int h2Port) => $$"""
        admin: { address: "127.0.0.1:0" }
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: h2echo, match: { path: "/echo" }, cluster: h2 }
          - { id: h2slow, match: { path: "/slow" }, cluster: h2 }
          - { id: h2slowfor, match: { path: "/slow/{ms}" }, cluster: h2 }
          - { id: h1, match: { path: "/{**rest}" }, cluster: h1 }
        clusters:
          h1: { destinations: ["{{h1Upstream}}"] }
          h2: { protocol: h2c, destinations: ["http://127.0.0.1:{{h2Port}}"], connect_timeout: 5s }

        """;

    private static HttpClient Http2Client() => new()
    {
        DefaultRequestVersion = HttpVersion.Version20,
        DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        Timeout = TimeSpan.FromSeconds(30),
    };

    private static async Task<PrometheusTextParser.Result> ScrapeAsync(TestProxy proxy)
    {
        using var http = new HttpClient();
        string text = await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/metrics");
        return PrometheusTextParser.Parse(text);
    }

    /// <summary>Scrapes until <paramref name="done"/> holds (gauges and counters settle just after the client has its answer).</summary>
    private static async Task<PrometheusTextParser.Result> ScrapeUntilAsync(TestProxy proxy, Func<PrometheusTextParser.Result, bool> done)
    {
        var deadline = DateTime.UtcNow + TestDefaults.Timeout;
        while (true)
        {
            var scrape = await ScrapeAsync(proxy);
            if (done(scrape) || DateTime.UtcNow > deadline)
            {
                return scrape;
            }
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task Metrics_Http1AndH2cUpstreams_ExactBytesDurationsAndPoolWaits()
    {
        await using var h1 = FaultyUpstream.Start("up");
        await using var h2 = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(Yaml(h1.Address, h2.Port));
        using var http11 = Clients.CreateHttpClient();
        using var http2 = Http2Client();

        // HTTP/1.1 client -> HTTP/1.1 upstream: three GETs (no request body).
        long h1ResponseBytes = 0;
        for (int i = 0; i < 3; i++)
        {
            using var response = await http11.GetAsync(new Uri(proxy.PublicUri, "/x"));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            h1ResponseBytes += (await response.Content.ReadAsByteArrayAsync()).Length;
        }
        // HTTP/1.1 client (13 bytes) and HTTP/2 client (5 bytes) -> h2c upstream, which echoes the body.
        using (var sized = await http11.PostAsync(new Uri(proxy.PublicUri, "/echo"), new StringContent("hello over h2")))
        {
            Assert.Equal("hello over h2", await sized.Content.ReadAsStringAsync());
        }
        using (var overH2 = await http2.PostAsync(new Uri(proxy.PublicUri, "/echo"), new ByteArrayContent(Encoding.ASCII.GetBytes("h2-in"))))
        {
            Assert.Equal(HttpVersion.Version20, overH2.Version);
            Assert.Equal("h2-in", await overH2.Content.ReadAsStringAsync());
        }

        var scrape = await ScrapeUntilAsync(proxy, s =>
            s.Value("proxy_requests_total", ("route", "h2echo"), ("method", "POST"), ("status_class", "2xx")) == 2
            && s.Value("proxy_http2_streams_active", ("listener", "public")) == 0
            && s.Value("proxy_upstream_http2_streams_active", ("cluster", "h2")) == 0);

        Assert.Equal(3 * 2, h1ResponseBytes); // the upstream's body is its name
        Assert.Equal(0, scrape.Value("proxy_request_body_bytes_total", ("route", "h1"), ("cluster", "h1")));
        Assert.Equal(h1ResponseBytes, scrape.Value("proxy_response_body_bytes_total", ("route", "h1"), ("cluster", "h1")));
        Assert.Equal(13 + 5, scrape.Value("proxy_request_body_bytes_total", ("route", "h2echo"), ("cluster", "h2")));
        Assert.Equal(13 + 5, scrape.Value("proxy_response_body_bytes_total", ("route", "h2echo"), ("cluster", "h2")));
        Assert.Equal(0, scrape.Value("proxy_response_body_bytes_total", ("route", "h2slow"), ("cluster", "h2")));

        // One observation per relayed answer, on both upstream paths.
        Assert.Equal(3, scrape.Value("proxy_upstream_duration_seconds_count", ("cluster", "h1")));
        Assert.Equal(2, scrape.Value("proxy_upstream_duration_seconds_count", ("cluster", "h2")));
        Assert.Equal(3, scrape.Value("proxy_upstream_duration_seconds_bucket", ("cluster", "h1"), ("le", "+Inf")));
        Assert.InRange(scrape.Value("proxy_upstream_duration_seconds_sum", ("cluster", "h1")), 1e-7, 30);

        // HTTP/1.1: every request that found no idle connection waited for a connect, and every connect here succeeded.
        double opened = scrape.Value("proxy_upstream_connections_opened_total", ("cluster", "h1"));
        Assert.InRange(opened, 1, 3);
        Assert.Equal(opened, scrape.Value("proxy_upstream_pool_waits_total", ("cluster", "h1")));
        Assert.Equal(opened, scrape.Value("proxy_upstream_pool_wait_seconds_count", ("cluster", "h1")));
        // HTTP/2: only the first stream waited (for the connection); the second found room on it.
        Assert.Equal(1, scrape.Value("proxy_upstream_connections_opened_total", ("cluster", "h2")));
        Assert.Equal(1, scrape.Value("proxy_upstream_pool_waits_total", ("cluster", "h2")));
        Assert.Equal(1, scrape.Value("proxy_upstream_pool_wait_seconds_count", ("cluster", "h2")));
    }

    /// <summary>
    /// Heads refused before routing (the HTTP/1.1 parser's 400 and 505, the head limits' 414 and 431, header_timeout's
    /// 408, a transfer coding's 501, and an HTTP/2 stream's head refused by the same limits) are requests like a 404
    /// no_route: counted in proxy_requests_total and the duration histogram under route="" and cluster="", with their
    /// details in proxy_local_replies_total (Envoy counts codec errors in downstream_rq_4xx; nginx in its access log
    /// and stub_status). The echo listener's refusals are not proxy traffic and are not counted.
    /// </summary>
    [Fact]
    public async Task Metrics_HeadsRefusedBeforeRouting_CountedAsUnroutedRequests()
    {
        string yaml = new ProxyConfig { BackendPort = Ports.ClosedPort(), MaxRequestLine = "512", MaxHeaders = 5, HeaderTimeout = "1s" }.Render()
            + "admin: { address: \"127.0.0.1:0\" }\n";
        await using var proxy = await TestProxy.StartAsync(yaml);

        async Task<int> SendAsync(IPEndPoint to, string request)
        {
            await using var client = await RawClient.ConnectAsync(to);
            await client.SendAsync(request);
            var answer = await client.ReadToCloseAsync(TimeSpan.FromSeconds(30));
            return int.Parse(answer.Text.Split(' ')[1], CultureInfo.InvariantCulture);
        }
        string longPath = "/" + new string('a', 600);
        Assert.Equal(400, await SendAsync(proxy.Public, "GET /ok HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"));
        Assert.Equal(414, await SendAsync(proxy.Public, "GET " + longPath + " HTTP/1.1\r\nHost: x\r\n\r\n"));
        Assert.Equal(431, await SendAsync(proxy.Public, "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n\r\n"));
        Assert.Equal(408, await SendAsync(proxy.Public, "GET /slow HTTP/1.1\r\nHost: x\r\n"));
        Assert.Equal(505, await SendAsync(proxy.Public, "GET / HTTP/2.0\r\nHost: x\r\n\r\n"));
        Assert.Equal(501, await SendAsync(proxy.Public, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"));
        Assert.Equal(400, await SendAsync(proxy.Echo, "GET /ok HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"));
        using (var http2 = Http2Client())
        using (var overH2 = await http2.GetAsync(new Uri(proxy.PublicUri, longPath)))
        {
            Assert.Equal(HttpVersion.Version20, overH2.Version);
            Assert.Equal(HttpStatusCode.RequestUriTooLong, overH2.StatusCode);
        }

        var scrape = await ScrapeUntilAsync(proxy, s => s.Find("proxy_requests_total").Sum(x => x.Value) >= 7);

        double Requests(string method, string statusClass)
            => scrape.Value("proxy_requests_total", ("route", ""), ("cluster", ""), ("method", method), ("status_class", statusClass));
        Assert.Equal(2, Requests("GET", "4xx"));   // 400 and 431 (max_headers): the request line was parsed
        Assert.Equal(3, Requests("OTHER", "4xx")); // 414 twice (HTTP/1.1, HTTP/2), 408: no method known
        Assert.Equal(1, Requests("OTHER", "5xx")); // 505
        Assert.Equal(1, Requests("POST", "5xx"));  // 501
        Assert.Equal(7, scrape.Find("proxy_requests_total").Sum(x => x.Value)); // not the echo listener's 400
        Assert.Equal(7, scrape.Value("proxy_request_duration_seconds_count", ("route", ""), ("cluster", "")));
        Assert.Equal(7, scrape.Value("proxy_request_duration_seconds_bucket", ("route", ""), ("cluster", ""), ("le", "0.0005")));

        double Replies(string status, string details)
            => scrape.Value("proxy_local_replies_total", ("listener", "public"), ("status", status), ("details", details));
        Assert.Equal(2, Replies("414", "request_line_too_long"));
        Assert.Equal(1, Replies("431", "too_many_headers"));
        Assert.Equal(1, Replies("408", "header_timeout"));
        Assert.Equal(1, Replies("505", "unsupported_version"));
        Assert.Equal(1, Replies("501", "unsupported_transfer_coding"));
        Assert.Equal(1, scrape.Find("proxy_local_replies_total", ("listener", "public"), ("status", "400")).Sum(x => x.Value));
    }

    [Fact]
    public async Task Metrics_SlowH2Exchange_StreamGaugesShowItThenZeroAndDurationCountsTheWait()
    {
        await using var h1 = FaultyUpstream.Start("up");
        await using var h2 = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(Yaml(h1.Address, h2.Port));
        using var http2 = Http2Client();

        // /slow/1500 answers after 1.5 s: its stream is open on the client connection and to the upstream meanwhile
        // (200 ms was too short a window for the scrapes on a loaded CI machine).
        Task<HttpResponseMessage> slow = http2.GetAsync(new Uri(proxy.PublicUri, "/slow/1500"));
        var during = await ScrapeUntilAsync(proxy, s =>
            s.Value("proxy_http2_streams_active", ("listener", "public")) == 1
            && s.Value("proxy_upstream_http2_streams_active", ("cluster", "h2")) == 1);
        Assert.Equal(1, during.Value("proxy_http2_streams_active", ("listener", "public")));
        Assert.Equal(1, during.Value("proxy_upstream_http2_streams_active", ("cluster", "h2")));
        // The HTTP/2 client connection is one open client connection of its listener (not zero, not one per stream).
        Assert.Equal(1, during.Value("proxy_connections_active", ("listener", "public")));
        using (var response = await slow)
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }

        var after = await ScrapeUntilAsync(proxy, s =>
            s.Value("proxy_http2_streams_active", ("listener", "public")) == 0
            && s.Value("proxy_upstream_http2_streams_active", ("cluster", "h2")) == 0
            && s.Value("proxy_upstream_duration_seconds_count", ("cluster", "h2")) == 1);
        Assert.Equal(0, after.Value("proxy_http2_streams_active", ("listener", "public")));
        Assert.Equal(0, after.Value("proxy_upstream_http2_streams_active", ("cluster", "h2")));
        Assert.Equal(1, after.Value("proxy_upstream_duration_seconds_count", ("cluster", "h2")));
        // The upstream held the head for 1.5 s: the observation is past the 0.1 s bucket.
        Assert.Equal(0, after.Value("proxy_upstream_duration_seconds_bucket", ("cluster", "h2"), ("le", "0.1")));
        Assert.InRange(after.Value("proxy_upstream_duration_seconds_sum", ("cluster", "h2")), 1.45, 30);
        Assert.Equal(0, after.Value("proxy_upstream_duration_seconds_count", ("cluster", "h1")));
    }
}
