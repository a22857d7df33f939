using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Proxy.Core.Tests.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>The admin API over real sockets: every endpoint, metrics after known traffic, the token, and drain.</summary>
public sealed class AdminApiTests
{
    private const string Token = "t0ken-for.tests";

    private static string Yaml(int backendPort, int deadPort, string? token = null) => $$"""
        admin: { address: "127.0.0.1:0"{{(token is null ? "" : $", token: \"{token}\"")}} }
        listeners:
          - { name: public, address: "127.0.0.1:0" }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
          - { id: api, match: { path: "/api/{**rest}" }, cluster: backend }
          - { id: down, match: { path: "/down/{**rest}" }, rewrite: { path: "/gone/{rest}" }, cluster: dead }
        clusters:
          backend: { destinations: ["http://127.0.0.1:{{backendPort.ToString(CultureInfo.InvariantCulture)}}"] }
          dead: { destinations: ["http://127.0.0.1:{{deadPort.ToString(CultureInfo.InvariantCulture)}}"], connect_timeout: 2s }

        """;

    /// <summary>A port nothing listens on: connecting to it is refused.</summary>
    private static int ClosedPort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    private sealed class AdminScenario : IAsyncDisposable
    {
        public required RecordingUpstream Upstream { get; init; }
        public required TestProxy Proxy { get; init; }
        public IPEndPoint Admin => Proxy.Server.GetEndPoint("admin");

        public static async Task<AdminScenario> StartAsync(UpstreamHandler handler, string? token = null)
        {
            var upstream = RecordingUpstream.Start(handler);
            try
            {
                var proxy = await TestProxy.StartAsync(Yaml(upstream.Port, ClosedPort(), token));
                return new AdminScenario { Upstream = upstream, Proxy = proxy };
            }
            catch
            {
                await upstream.DisposeAsync();
                throw;
            }
        }

        /// <summary>One request on a fresh connection to the admin listener.</summary>
        public async Task<HttpMessage> AdminAsync(string path, string method = "GET", string? authorization = null)
        {
            await using var client = await RawClient.ConnectAsync(Admin);
            string auth = authorization is null ? "" : $"Authorization: {authorization}\r\n";
            await client.SendAsync($"{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n");
            return await client.ReadResponseAsync(method);
        }

        public async Task<HttpMessage> PublicAsync(string raw)
        {
            await using var client = await Proxy.ConnectAsync();
            await client.SendAsync(raw);
            return await client.ReadResponseAsync();
        }

        /// <summary>
        /// Scrapes until <paramref name="done"/> holds: a request is counted just after its response is flushed, so
        /// a scrape sent right after reading a response may arrive first.
        /// </summary>
        public async Task<PrometheusTextParser.Result> ScrapeUntilAsync(Func<PrometheusTextParser.Result, bool> done, string? authorization = null)
        {
            var deadline = DateTime.UtcNow + TestDefaults.Timeout;
            while (true)
            {
                var response = await AdminAsync("/metrics", authorization: authorization);
                Assert.Equal(200, response.Status);
                Assert.Equal("text/plain; version=0.0.4; charset=utf-8", response.Header("content-type"));
                // Every line must be valid exposition format, on every scrape.
                var parsed = PrometheusTextParser.Parse(response.BodyText);
                if (done(parsed) || DateTime.UtcNow > deadline)
                {
                    return parsed;
                }
                await Task.Delay(20);
            }
        }

        public async ValueTask DisposeAsync()
        {
            try
            {
                await Proxy.DisposeAsync();
            }
            finally
            {
                await Upstream.DisposeAsync();
            }
        }
    }

    private static double Requests(PrometheusTextParser.Result scrape, string route, string method, string statusClass)
        => scrape.Find("proxy_requests_total", ("route", route), ("method", method), ("status_class", statusClass)).Sum(s => s.Value);

    [Fact]
    public async Task Metrics_AfterKnownTraffic_ReportExactCounts()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok());
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(200, (await scenario.PublicAsync(Wire.Get("/hello"))).Status);
        }
        Assert.Equal(200, (await scenario.PublicAsync(Wire.Get("/api/a"))).Status);
        Assert.Equal(200, (await scenario.PublicAsync(Wire.Get("/api/b"))).Status);
        Assert.Equal(200, (await scenario.PublicAsync("POST /api/c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")).Status);
        Assert.Equal(502, (await scenario.PublicAsync(Wire.Get("/down/x"))).Status);
        Assert.Equal(404, (await scenario.PublicAsync("PURGE /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")).Status);

        var scrape = await scenario.ScrapeUntilAsync(s => s.Find("proxy_requests_total").Sum(x => x.Value) >= 8);

        Assert.Equal(3, scrape.Value("proxy_requests_total", ("route", "hello"), ("cluster", ""), ("method", "GET"), ("status_class", "2xx")));
        Assert.Equal(2, scrape.Value("proxy_requests_total", ("route", "api"), ("cluster", "backend"), ("method", "GET"), ("status_class", "2xx")));
        Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", "api"), ("cluster", "backend"), ("method", "POST"), ("status_class", "2xx")));
        Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", "down"), ("cluster", "dead"), ("method", "GET"), ("status_class", "5xx")));
        Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", ""), ("cluster", ""), ("method", "OTHER"), ("status_class", "4xx")));
        Assert.Equal(8, scrape.Find("proxy_requests_total").Sum(s => s.Value));

        Assert.Equal(3, scrape.Value("proxy_request_duration_seconds_count", ("route", "api"), ("cluster", "backend")));
        Assert.Equal(3, scrape.Value("proxy_request_duration_seconds_bucket", ("route", "api"), ("cluster", "backend"), ("le", "+Inf")));
        Assert.InRange(scrape.Value("proxy_request_duration_seconds_sum", ("route", "api"), ("cluster", "backend")), 0, 10);

        Assert.Equal(1, scrape.Value("proxy_local_replies_total", ("listener", "public"), ("status", "502"), ("details", "upstream_connect_failed")));
        Assert.Equal(1, scrape.Value("proxy_local_replies_total", ("listener", "public"), ("status", "404"), ("details", "no_route")));
        Assert.Equal(1, scrape.Value("proxy_upstream_connect_failures_total", ("cluster", "dead"), ("reason", "refused")));
        Assert.Equal(0, scrape.Value("proxy_upstream_connect_failures_total", ("cluster", "backend"), ("reason", "refused")));
        Assert.True(scrape.Value("proxy_upstream_connections_opened_total", ("cluster", "backend")) >= 1);
        Assert.Equal(8, scrape.Value("proxy_connections_accepted_total", ("listener", "public")));
        Assert.Equal(0, scrape.Value("proxy_upstream_requests_active", ("cluster", "backend")));
        // Admin requests are not proxy traffic.
        Assert.DoesNotContain(scrape.Find("proxy_requests_total"), s => s.Label("route") == "" && s.Label("method") == "GET");
    }

    [Fact]
    public async Task Healthz_Get_Returns200Ok()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok());

        var response = await scenario.AdminAsync("/healthz");

        Assert.Equal(200, response.Status);
        Assert.Equal("ok\n", response.BodyText);
        Assert.Equal("no-store", response.Header("cache-control"));
    }

    [Fact]
    public async Task Healthz_Head_HasNoBody()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok());

        var response = await scenario.AdminAsync("/healthz", "HEAD");

        Assert.Equal(200, response.Status);
        Assert.Equal("3", response.Header("content-length"));
        Assert.Empty(response.Body);
    }

    [Fact]
    public async Task Readyz_AfterStart_Returns200()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok());

        var response = await scenario.AdminAsync("/readyz");

        Assert.Equal(200, response.Status);
        Assert.True(scenario.Proxy.Server.IsReady);
    }

    [Fact]
    public async Task Config_Get_ReturnsVersionListenersRoutesClustersAndRedactsToken()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok(), Token);

        var response = await scenario.AdminAsync("/config", authorization: "Bearer " + Token);

        Assert.Equal(200, response.Status);
        Assert.Equal("application/json", response.Header("content-type"));
        Assert.DoesNotContain(Token, response.BodyText);
        using var json = JsonDocument.Parse(response.Body);
        var root = json.RootElement;
        Assert.Equal(scenario.Proxy.Server.ConfigVersion, root.GetProperty("version").GetString());
        Assert.Equal("functional-test.yaml", root.GetProperty("source").GetString());
        Assert.Equal("<redacted>", root.GetProperty("admin").GetProperty("token").GetString());
        Assert.Equal(scenario.Admin.ToString(), root.GetProperty("admin").GetProperty("bound").GetString());
        var listener = Assert.Single(root.GetProperty("listeners").EnumerateArray());
        Assert.Equal("public", listener.GetProperty("name").GetString());
        Assert.Equal(scenario.Proxy.Public.ToString(), listener.GetProperty("bound").GetString());
        Assert.Equal(["hello", "api", "down"], root.GetProperty("routes").EnumerateArray().Select(r => r.GetProperty("id").GetString()));
        Assert.Equal(["backend", "dead"], root.GetProperty("clusters").EnumerateArray().Select(c => c.GetProperty("name").GetString()));
        Assert.Equal("2s", root.GetProperty("clusters")[1].GetProperty("connect_timeout").GetString());
    }

    [Fact]
    public async Task Routes_Get_ListsCompiledRoutesInMatchOrder()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok());

        var response = await scenario.AdminAsync("/routes");

        Assert.Equal(200, response.Status);
        using var json = JsonDocument.Parse(response.Body);
        var routes = json.RootElement.EnumerateArray().ToArray();
        // An exact path is more specific than a catch-all; equal catch-alls keep file order.
        Assert.Equal(["hello", "api", "down"], routes.Select(r => r.GetProperty("id").GetString()));
        Assert.Equal("/api/{**rest}", routes[1].GetProperty("match").GetProperty("path").GetString());
        Assert.Equal("backend", routes[1].GetProperty("cluster").GetString());
        Assert.Equal(200, routes[0].GetProperty("respond").GetProperty("status").GetInt32());
        Assert.False(routes[0].TryGetProperty("cluster", out _));
        Assert.Equal("/gone/{rest}", routes[2].GetProperty("rewrite").GetProperty("path").GetString());
        Assert.False(routes[1].TryGetProperty("rewrite", out _));
    }

    [Fact]
    public async Task Clusters_AfterAForwardedRequest_ShowDestinationsAndPooledConnections()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok());
        Assert.Equal(200, (await scenario.PublicAsync(Wire.Get("/api/pool"))).Status);

        JsonElement backend = default;
        var deadline = DateTime.UtcNow + TestDefaults.Timeout;
        do
        {
            var response = await scenario.AdminAsync("/clusters");
            Assert.Equal(200, response.Status);
            backend = JsonDocument.Parse(response.Body).RootElement.EnumerateArray().Single(c => c.GetProperty("name").GetString() == "backend");
        }
        while (backend.GetProperty("connections_idle").GetInt32() != 1 && DateTime.UtcNow < deadline && await Delay());

        var destination = Assert.Single(backend.GetProperty("destinations").EnumerateArray());
        Assert.Equal(scenario.Upstream.Address, destination.GetProperty("address").GetString());
        Assert.Equal(1, destination.GetProperty("weight").GetInt32());
        Assert.Equal(0, destination.GetProperty("active_requests").GetInt32());
        Assert.Equal(1, destination.GetProperty("connections_open").GetInt32());
        Assert.Equal(1, destination.GetProperty("connections_idle").GetInt32());
        Assert.Equal("round_robin", backend.GetProperty("load_balancing").GetString());
    }

    private static async Task<bool> Delay()
    {
        await Task.Delay(20);
        return true;
    }

    [Theory]
    [InlineData("/nope", "GET", 404, null)]
    [InlineData("/hello", "GET", 404, null)]
    [InlineData("/metrics", "POST", 405, "GET, HEAD")]
    [InlineData("/healthz", "DELETE", 405, "GET, HEAD")]
    [InlineData("/drain", "GET", 405, "POST")]
    [InlineData("/reload", "GET", 405, "POST")]
    public async Task Admin_UnknownPathOrWrongMethod_ShortTextAnswer(string path, string method, int status, string? allow)
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok());

        var response = await scenario.AdminAsync(path, method);

        Assert.Equal(status, response.Status);
        Assert.Equal(allow, response.Header("allow"));
        Assert.StartsWith("text/plain", response.Header("content-type"));
        Assert.InRange(response.Body.Length, 1, 200);
        // The admin listener never routes: /hello is not the user's route here.
        Assert.NotEqual("hello\n", response.BodyText);
    }

    [Fact]
    public async Task Admin_TokenConfiguredNoAuthorization_Returns401WithChallenge()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok(), Token);

        var response = await scenario.AdminAsync("/healthz");

        Assert.Equal(401, response.Status);
        Assert.Equal("Bearer realm=\"proxy-admin\"", response.Header("www-authenticate"));
    }

    /// <summary>
    /// Credentials of another scheme are no Bearer credentials: the bare challenge, with no error code (RFC 6750
    /// section 3.1), as with no Authorization at all. Basic credentials used to get error="invalid_token".
    /// </summary>
    [Theory]
    [InlineData("Basic dXNlcjpwYXNz")]
    [InlineData("Bearerish " + Token)]
    public async Task Admin_OtherSchemeThanBearer_Returns401WithBareChallenge(string authorization)
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok(), Token);

        var response = await scenario.AdminAsync("/metrics", authorization: authorization);

        Assert.Equal(401, response.Status);
        Assert.Equal("Bearer realm=\"proxy-admin\"", response.Header("www-authenticate"));
    }

    [Theory]
    [InlineData("Bearer wrong")]
    [InlineData("Bearer " + Token + "x")]
    [InlineData("Bearer")]
    [InlineData("Bearer\t" + Token)]
    public async Task Admin_WrongToken_Returns401InvalidToken(string authorization)
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok(), Token);

        var response = await scenario.AdminAsync("/metrics", authorization: authorization);

        Assert.Equal(401, response.Status);
        Assert.Contains("error=\"invalid_token\"", response.Header("www-authenticate"));
    }

    [Theory]
    [InlineData("Bearer " + Token)]
    [InlineData("bearer " + Token)]
    [InlineData("BEARER  " + Token)]
    [InlineData("\tBearer " + Token + " \t")]
    public async Task Admin_RightToken_IsServed(string authorization)
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Ok(), Token);

        var response = await scenario.AdminAsync("/healthz", authorization: authorization);

        Assert.Equal(200, response.Status);
        var scrape = await scenario.ScrapeUntilAsync(_ => true, authorization);
        Assert.Equal(1, scrape.Value("proxy_info", ("config_version", scenario.Proxy.Server.ConfigVersion)));
    }

    [Fact]
    public async Task Drain_RequestInFlight_FinishesWhileNewConnectionsAreRefusedAndReadyzFails()
    {
        await using var scenario = await AdminScenario.StartAsync(UpstreamBehaviors.Delayed(TimeSpan.FromSeconds(3)));
        var publicEndPoint = scenario.Proxy.Public;
        await using var inFlight = await scenario.Proxy.ConnectAsync();
        await inFlight.SendAsync(Wire.Get("/api/slow"));
        await scenario.Upstream.WaitForRequestAsync();

        var drain = await scenario.AdminAsync("/drain", "POST");

        Assert.Equal(202, drain.Status);
        var readyz = await scenario.AdminAsync("/readyz");
        Assert.Equal(503, readyz.Status);
        Assert.Contains("draining", readyz.BodyText);
        Assert.True(scenario.Proxy.Server.IsDraining);

        // The in-flight request completes, then its connection closes instead of staying alive.
        var response = await inFlight.ReadResponseAsync();
        Assert.Equal(200, response.Status);
        Assert.Equal("GET /api/slow", response.BodyText);
        Assert.True(response.ConnectionHas("close"));
        Assert.True((await inFlight.ReadToCloseAsync(TimeSpan.FromSeconds(3))).Closed);

        // Nothing new is accepted on the public listener.
        try
        {
            await using var late = await RawClient.ConnectAsync(publicEndPoint, TimeSpan.FromSeconds(2));
            try
            {
                await late.SendAsync(Wire.Get("/api/late"));
            }
            catch (IOException)
            {
            }
            var result = await late.ReadToCloseAsync(TimeSpan.FromSeconds(3));
            Assert.True(result.Closed && result.Bytes.Length == 0, "A connection made after the drain was served: " + result.Text);
        }
        catch (SocketException ex)
        {
            Assert.Equal(SocketError.ConnectionRefused, ex.SocketErrorCode);
        }
        Assert.DoesNotContain(scenario.Upstream.Requests, r => r.Target == "/api/late");

        // The admin API keeps answering while the proxy drains.
        Assert.Equal(200, (await scenario.AdminAsync("/healthz")).Status);
        var scrape = await scenario.ScrapeUntilAsync(s => s.Find("proxy_requests_total", ("route", "api")).Any());
        Assert.Equal(1, Requests(scrape, "api", "GET", "2xx"));
    }
}
