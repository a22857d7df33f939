using System.Buffers.Text;
using System.Diagnostics;
using System.Globalization;
using System.IdentityModel.Tokens.Jwt;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.Tokens;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Tracing (traceparent out, OTLP export), the JSON access log (rotation on SIGUSR1) and GET /insights, over real sockets.</summary>
public sealed class ObservabilityTests : IDisposable
{
    private const string ClientTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
    private const string ClientParent = "00f067aa0ba902b7";
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-observability-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static async Task<List<JsonElement>> WaitForLinesAsync(string path, int count)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            string[] lines = File.Exists(path) ? File.ReadAllLines(path) : [];
            if (lines.Length >= count || DateTime.UtcNow > deadline)
            {
                Assert.True(lines.Length >= count, $"{lines.Length} access log line(s) in {path}, expected {count}");
                return lines.Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
            }
            await Task.Delay(20);
        }
    }

    private static async Task<HttpMessage> GetAsync(IPEndPoint endPoint, string target, params string[] headers)
    {
        await using var client = await RawClient.ConnectAsync(endPoint);
        await client.SendAsync(Wire.Get(target, "example.test", headers));
        return await client.ReadResponseAsync();
    }

    [Fact]
    public async Task AccessLog_ProxiedRequests_LinesParseAndCarryRequestIdAndTraceId()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string log = Path.Combine(_directory, "access.log");
        string yaml = new ProxyConfig { BackendPort = upstream.Port }.Render() + $$"""
            admin: { address: "127.0.0.1:0" }
            tracing: { sampling: 0 }
            access_log: { path: "{{log}}" }
            """;
        await using var proxy = await TestProxy.StartAsync(yaml);

        var first = await GetAsync(proxy.Public, "/api/orders?id=1", $"traceparent: 00-{ClientTrace}-{ClientParent}-01");
        var second = await GetAsync(proxy.Public, "/hello");
        Assert.Equal(200, first.Status);

        var lines = await WaitForLinesAsync(log, 2);
        var proxied = lines.Single(l => l.GetProperty("route").GetString() == "all");
        Assert.Equal(first.Header("x-request-id"), proxied.GetProperty("request_id").GetString());
        Assert.Equal("backend", proxied.GetProperty("cluster").GetString());
        Assert.Equal(upstream.Address, proxied.GetProperty("destination").GetString());
        Assert.Equal("/api/orders", proxied.GetProperty("path").GetString());
        Assert.Equal("GET", proxied.GetProperty("method").GetString());
        Assert.Equal(200, proxied.GetProperty("status").GetInt32());
        Assert.Equal("127.0.0.1", proxied.GetProperty("client").GetString());
        Assert.True(proxied.GetProperty("upstream_ms").GetDouble() >= 0);
        Assert.True(proxied.GetProperty("duration_ms").GetDouble() >= proxied.GetProperty("upstream_ms").GetDouble());
        Assert.Equal("GET /api/orders?id=1".Length, proxied.GetProperty("bytes_out").GetInt64()); // the Ok upstream echoes "METHOD target"
        Assert.True(proxied.GetProperty("bytes_in").GetInt64() > 40);
        Assert.Equal(ClientTrace, proxied.GetProperty("trace_id").GetString());
        Assert.True(DateTime.UtcNow - proxied.GetProperty("time").GetDateTime().ToUniversalTime() < TimeSpan.FromMinutes(1));

        // The upstream saw the same trace, with the span id the access log names as the upstream call's.
        var forwarded = (await upstream.WaitForRequestAsync()).Header("traceparent")!.Split('-');
        Assert.Equal(ClientTrace, forwarded[1]);
        Assert.Equal(proxied.GetProperty("span_id").GetString(), forwarded[2]);

        var direct = lines.Single(l => l.GetProperty("route").GetString() == "hello");
        Assert.Equal(second.Header("x-request-id"), direct.GetProperty("request_id").GetString());
        Assert.Equal(JsonValueKind.Null, direct.GetProperty("upstream_ms").ValueKind);
        Assert.Matches("^[0-9a-f]{32}$", direct.GetProperty("trace_id").GetString()!);

        using var http = new HttpClient();
        string metrics = await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/metrics");
        Assert.Contains("proxy_access_log_dropped_total 0", metrics);
        Assert.Matches(@"proxy_access_log_lines_total [2-9]", metrics);
    }

    /// <summary>
    /// A request whose connect was refused names the destination it tried, as the upstream_error line does; only a
    /// request no upstream was tried for has a null destination. It used to be set only as a request head was
    /// written, so a connect failure logged null.
    /// </summary>
    [Fact]
    public async Task AccessLog_ConnectRefused_LineNamesTheDestinationTried()
    {
        int closed = Ports.ClosedPort();
        string log = Path.Combine(_directory, "access.log");
        string yaml = new ProxyConfig { BackendPort = closed }.Render() + $$"""
            access_log: { path: "{{log}}" }
            """;
        await using var proxy = await TestProxy.StartAsync(yaml);

        var response = await GetAsync(proxy.Public, "/refused");
        ProxyAssert.ErrorAnswer(response, 502);

        var line = Assert.Single(await WaitForLinesAsync(log, 1));
        Assert.Equal(502, line.GetProperty("status").GetInt32());
        Assert.Equal($"http://127.0.0.1:{closed}", line.GetProperty("destination").GetString());
        Assert.Equal(JsonValueKind.Null, line.GetProperty("upstream_ms").ValueKind);
    }

    /// <summary>
    /// Heads the HTTP/1.1 parser, a head limit or header_timeout refuses get their access-log line like every other
    /// request (413 and 405 refused at the same stage had one; these had none): status, the reject's details code as
    /// policy, method and path when the request line was parsed, no route. A refused second head on a kept-alive
    /// connection shows nothing of the first request.
    /// </summary>
    [Fact]
    public async Task AccessLog_HeadsRefusedBeforeRouting_OneLineEach()
    {
        string log = Path.Combine(_directory, "access.log");
        string yaml = new ProxyConfig { BackendPort = Ports.ClosedPort(), MaxRequestLine = "512", MaxHeaderBytes = "1KiB", HeaderTimeout = "1s" }.Render() + $$"""
            access_log: { path: "{{log}}" }
            """;
        await using var proxy = await TestProxy.StartAsync(yaml);

        async Task<int> SendAsync(string request)
        {
            await using var client = await RawClient.ConnectAsync(proxy.Public);
            await client.SendAsync(request);
            var answer = await client.ReadToCloseAsync(TimeSpan.FromSeconds(30));
            return int.Parse(answer.Text.Split(' ')[1], CultureInfo.InvariantCulture);
        }
        Assert.Equal(400, await SendAsync("GET /ok HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"));
        Assert.Equal(414, await SendAsync("GET /" + new string('a', 600) + " HTTP/1.1\r\nHost: x\r\n\r\n"));
        Assert.Equal(408, await SendAsync("GET /slow HTTP/1.1\r\nHost: x\r\n"));
        await using (var kept = await RawClient.ConnectAsync(proxy.Public))
        {
            await kept.SendAsync(Wire.Get("/hello"));
            Assert.Equal(200, (await kept.ReadResponseAsync()).Status);
            await kept.SendAsync("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + new string('a', 2000) + "\r\n\r\n");
            var refused = await kept.ReadToCloseAsync(TimeSpan.FromSeconds(30));
            Assert.StartsWith("HTTP/1.1 431 ", refused.Text);
        }

        var lines = await WaitForLinesAsync(log, 5);
        JsonElement Line(int status) => lines.Single(l => l.GetProperty("status").GetInt32() == status);
        var badHeader = Line(400);
        Assert.False(string.IsNullOrEmpty(badHeader.GetProperty("policy").GetString()));
        Assert.Equal("GET", badHeader.GetProperty("method").GetString());
        Assert.Equal("/ok", badHeader.GetProperty("path").GetString());
        Assert.Equal(JsonValueKind.Null, badHeader.GetProperty("route").ValueKind);
        Assert.Equal("request_line_too_long", Line(414).GetProperty("policy").GetString());
        Assert.Equal("header_timeout", Line(408).GetProperty("policy").GetString());
        var tooLarge = Line(431);
        var served = Line(200);
        Assert.Equal("headers_too_large", tooLarge.GetProperty("policy").GetString());
        Assert.Equal(JsonValueKind.Null, tooLarge.GetProperty("method").ValueKind);
        Assert.Equal("", tooLarge.GetProperty("path").GetString());
        Assert.NotEqual(served.GetProperty("request_id").GetString(), tooLarge.GetProperty("request_id").GetString());
        Assert.Equal("public", tooLarge.GetProperty("listener").GetString());
    }

    [Fact]
    public async Task AccessLog_PolicyRoutes_LinesCarryConsumerAndPolicyOutcome()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        using var rsa = RSA.Create(2048);
        var key = rsa.ExportParameters(false);
        string jwks = Path.Combine(_directory, "jwks.json");
        File.WriteAllText(jwks, $$"""
            { "keys": [{ "kty": "RSA", "kid": "k1", "n": "{{Base64Url.EncodeToString(key.Modulus)}}", "e": "{{Base64Url.EncodeToString(key.Exponent)}}" }] }
            """);
        string log = Path.Combine(_directory, "access.log");
        await using var proxy = await TestProxy.StartAsync($$"""
            policies:
              keys:
                api_key:
                  header: x-api-key
                  keys: [{ sha256: {{IdentityPolicyTests.Sha("alice")}}, consumer: alice, plan: free }]
              one-per-consumer:
                rate_limit: { key: consumer, rate: 1/h, burst: 1 }
              token:
                jwt: { issuer: https://idp.example.test, audiences: [reports], jwks_file: "{{jwks}}" }
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: orders, match: { path: "/orders/{**rest}" }, cluster: backend, policies: [keys, one-per-consumer] }
              - { id: reports, match: { path: "/reports/{**rest}" }, cluster: backend, policies: [token] }
              - { id: open, match: { path: "/open/{**rest}" }, cluster: backend }
            clusters:
              backend: { destinations: ["http://127.0.0.1:{{upstream.Port.ToString(CultureInfo.InvariantCulture)}}"] }
            access_log: { path: "{{log}}" }
            """);
        var now = DateTime.UtcNow;
        string token = new JwtSecurityTokenHandler().CreateEncodedJwt(new SecurityTokenDescriptor
        {
            Issuer = "https://idp.example.test",
            Audience = "reports",
            IssuedAt = now,
            NotBefore = now.AddMinutes(-1),
            Expires = now.AddMinutes(10),
            Claims = new Dictionary<string, object> { ["sub"] = "svc-reports" },
            SigningCredentials = new SigningCredentials(new RsaSecurityKey(rsa) { KeyId = "k1" }, "RS256"),
        });

        // One connection: the pooled filter context still holds alice when the unprotected route runs.
        await using var client = await proxy.ConnectAsync();
        var allowed = await IdentityPolicyTests.GetAsync(client, "/orders/1", "x-api-key: alice");
        var limited = await IdentityPolicyTests.GetAsync(client, "/orders/2", "x-api-key: alice");
        var anonymous = await IdentityPolicyTests.GetAsync(client, "/open/1", "x-api-key: alice"); // no policy ran: nobody verified it
        var noKey = await IdentityPolicyTests.GetAsync(client, "/orders/3");
        var subject = await IdentityPolicyTests.GetAsync(client, "/reports/1", $"authorization: Bearer {token}");
        Assert.Equal(new[] { 200, 429, 200, 401, 200 }, new[] { allowed.Status, limited.Status, anonymous.Status, noKey.Status, subject.Status });

        var lines = await WaitForLinesAsync(log, 5);
        JsonElement Line(HttpMessage response) => lines.Single(l => l.GetProperty("request_id").GetString() == response.Header("x-request-id"));
        (string?, string?) ConsumerAndPolicy(HttpMessage response)
            => (Line(response).GetProperty("consumer").GetString(), Line(response).GetProperty("policy").GetString());

        Assert.Equal<(string?, string?)>(("alice", null), ConsumerAndPolicy(allowed));
        Assert.Equal<(string?, string?)>(("alice", "rate_limited"), ConsumerAndPolicy(limited));
        Assert.Equal(JsonValueKind.Null, Line(anonymous).GetProperty("consumer").ValueKind);
        Assert.Equal(JsonValueKind.Null, Line(anonymous).GetProperty("policy").ValueKind);
        Assert.Equal<(string?, string?)>((null, "api_key_missing"), ConsumerAndPolicy(noKey));
        Assert.Equal<(string?, string?)>(("svc-reports", null), ConsumerAndPolicy(subject)); // no consumer: the JWT subject
    }

    [Fact]
    public async Task Insights_AfterTraffic_ListsRoutesClientsAndStatuses()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string yaml = new ProxyConfig { BackendPort = upstream.Port }.Render() + """
            admin: { address: "127.0.0.1:0" }
            """;
        await using var proxy = await TestProxy.StartAsync(yaml);
        for (int i = 0; i < 3; i++)
        {
            await GetAsync(proxy.Public, "/api/x");
        }
        await GetAsync(proxy.Public, "/hello");

        using var http = new HttpClient();
        using var insights = JsonDocument.Parse(await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/insights"));
        var root = insights.RootElement;
        var top = root.GetProperty("top_routes_by_requests").EnumerateArray().ToList();
        Assert.Equal("all", top[0].GetProperty("route").GetString());
        Assert.Equal(3, top[0].GetProperty("requests").GetInt64());
        Assert.Equal("hello", top[1].GetProperty("route").GetString());
        var client = Assert.Single(root.GetProperty("top_clients").EnumerateArray());
        Assert.Equal("127.0.0.1", client.GetProperty("client").GetString());
        Assert.Equal(4, client.GetProperty("requests").GetInt64());
        var status = Assert.Single(root.GetProperty("top_status").EnumerateArray());
        Assert.Equal((200, 4), (status.GetProperty("status").GetInt32(), status.GetProperty("requests").GetInt64()));
        Assert.Empty(root.GetProperty("anomalies").EnumerateArray());
    }

    /// <summary>
    /// Heads refused before routing (here a malformed field's 400 and a request line's 414, a scanner's kind of
    /// traffic) count in the insights' status codes and clients, as they already did in its route view (the unrouted
    /// route, through the metrics): top_status had only the answers of requests that reached the end of a request.
    /// </summary>
    [Fact]
    public async Task Insights_HeadsRefusedBeforeRouting_CountInStatusesAndClients()
    {
        string yaml = new ProxyConfig { BackendPort = Ports.ClosedPort(), MaxRequestLine = "512" }.Render() + """
            admin: { address: "127.0.0.1:0" }
            """;
        await using var proxy = await TestProxy.StartAsync(yaml);
        async Task<string> SendAsync(string request)
        {
            await using var client = await RawClient.ConnectAsync(proxy.Public);
            await client.SendAsync(request);
            return (await client.ReadToCloseAsync(TimeSpan.FromSeconds(30))).Text;
        }
        Assert.StartsWith("HTTP/1.1 400 ", await SendAsync("GET /ok HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"));
        Assert.StartsWith("HTTP/1.1 400 ", await SendAsync("GET /ok HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"));
        Assert.StartsWith("HTTP/1.1 414 ", await SendAsync("GET /" + new string('a', 600) + " HTTP/1.1\r\nHost: x\r\n\r\n"));
        Assert.Equal(200, (await GetAsync(proxy.Public, "/hello")).Status);

        using var http = new HttpClient();
        using var insights = JsonDocument.Parse(await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/insights"));
        var root = insights.RootElement;
        var statuses = root.GetProperty("top_status").EnumerateArray()
            .ToDictionary(s => s.GetProperty("status").GetInt32(), s => s.GetProperty("requests").GetInt64());
        Assert.Equal(new Dictionary<int, long> { [400] = 2, [414] = 1, [200] = 1 }, statuses);
        var client = Assert.Single(root.GetProperty("top_clients").EnumerateArray());
        Assert.Equal(4, client.GetProperty("requests").GetInt64());
        var unrouted = root.GetProperty("top_routes_by_requests").EnumerateArray().Single(r => r.GetProperty("route").GetString() == "");
        Assert.Equal(3, unrouted.GetProperty("requests").GetInt64());
    }

    private static Task<ProcessResult> RunProxyAsync(params string[] arguments)
    {
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        return ProcessRunner.RunAsync(dotnet, [ProxyBinary.DllPath(), .. arguments], timeout: TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task Lint_ValidConfigWithFindings_PrintsThemAndExits0()
    {
        string path = Path.Combine(_directory, "lint.yaml");
        await File.WriteAllTextAsync(path, """
            listeners:
              - { name: public, address: "0.0.0.0:8080" }
            routes:
              - { id: everything, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend: { destinations: ["http://127.0.0.1:1"], connect_timeout: 1s, request_timeout: 5s }
            """);
        var result = await RunProxyAsync("lint", "--config", path);
        Assert.True(result.ExitCode == 0, result.ToString());
        var lines = result.StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        Assert.All(lines, l => Assert.StartsWith(path + ":4:5: ", l, StringComparison.Ordinal));
        Assert.Contains(lines, l => l.Contains("public_catch_all: route 'everything'", StringComparison.Ordinal));

        await File.WriteAllTextAsync(path, "listeners: []\n");
        Assert.Equal(2, (await RunProxyAsync("lint", "--config", path)).ExitCode);
    }

    /// <summary>The real binary: OTLP export of the spans, and access log rotation by rename + SIGUSR1.</summary>
    [Fact]
    public async Task Run_OtlpAndSigusr1_SpansExportedAndLogReopened()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var collector = RecordingUpstream.Start(UpstreamBehaviors.Ok()); // answers OTLP/HTTP POSTs with 200
        int port = Ports.ClosedPort();
        string log = Path.Combine(_directory, "run-access.log");
        string config = Path.Combine(_directory, "run.yaml");
        await File.WriteAllTextAsync(config, $$"""
            server: { watch_config: false }
            listeners:
              - { name: public, address: "127.0.0.1:{{port}}" }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend: { destinations: ["{{upstream.Address}}"] }
            tracing: { sampling: 0, otlp: { endpoint: "{{collector.Address}}", protocol: http/protobuf } }
            access_log: { path: "{{log}}", fields: [time, route, status, request_id, trace_id] }
            """);
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var start = new ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { ProxyBinary.DllPath(), "run", "--config", config })
        {
            start.ArgumentList.Add(a);
        }
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            var endPoint = new IPEndPoint(IPAddress.Loopback, port);
            if (!await ProxyBinary.WaitUntilListeningAsync(port, process))
            {
                Assert.Fail($"proxy did not start:\n{await stdout}\n{await stderr}");
            }
            var response = await GetAsync(endPoint, "/traced", $"traceparent: 00-{ClientTrace}-{ClientParent}-01");
            Assert.Equal(200, response.Status);
            var upstreamParent = (await upstream.WaitForRequestAsync()).Header("traceparent")!.Split('-');
            Assert.Equal(ClientTrace, upstreamParent[1]);
            Assert.NotEqual(ClientParent, upstreamParent[2]);
            var firstLine = Assert.Single(await WaitForLinesAsync(log, 1));
            Assert.Equal(response.Header("x-request-id"), firstLine.GetProperty("request_id").GetString());

            // logrotate's way: rename, then signal; the next line goes to a new file at the configured path.
            File.Move(log, log + ".1");
            Assert.Equal(0, ProxyBinary.Kill(process.Id, 10)); // SIGUSR1
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (!File.Exists(log) && DateTime.UtcNow < deadline && !process.HasExited)
            {
                await Task.Delay(20);
            }
            Assert.True(File.Exists(log), $"SIGUSR1 did not reopen the access log:\n{(process.HasExited ? await stderr : "")}");
            var second = await GetAsync(endPoint, "/after-rotation");
            var secondLine = Assert.Single(await WaitForLinesAsync(log, 1));
            Assert.Equal(second.Header("x-request-id"), secondLine.GetProperty("request_id").GetString());
            Assert.Single(File.ReadAllLines(log + ".1"));

            // SIGTERM flushes the batched spans: the collector receives them with the client's trace id.
            Assert.Equal(0, ProxyBinary.Kill(process.Id, 15));
            using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20)))
            {
                await process.WaitForExitAsync(cts.Token);
            }
            byte[] traceId = Convert.FromHexString(ClientTrace);
            var exports = collector.Requests.Where(r => r.Method == "POST" && r.Target == "/v1/traces").ToList();
            Assert.True(exports.Count > 0, $"no OTLP export; collector saw: {string.Join(", ", collector.Requests.Select(r => r.StartLine))}\n{await stdout}\n{await stderr}");
            byte[] all = exports.SelectMany(r => r.Body).ToArray();
            Assert.True(all.AsSpan().IndexOf(traceId) >= 0, "the exported spans do not carry the client's trace id");
            Assert.True(all.AsSpan().IndexOf(Encoding.ASCII.GetBytes("GET all")) >= 0, "no server span named 'GET all'");
            Assert.True(all.AsSpan().IndexOf(Convert.FromHexString(upstreamParent[2])) >= 0, "no client span with the forwarded span id");
            Assert.Equal("application/x-protobuf", exports[0].Header("content-type"));
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
        }
    }
}
