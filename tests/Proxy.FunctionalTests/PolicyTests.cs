using System.Globalization;
using System.Text.Json;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Policies (rate_limit, ip_filter) over real sockets: what the client gets and what reaches the upstream.</summary>
public sealed class PolicyTests
{
    /// <summary>A proxy with <paramref name="policies"/>, the public listener's defaults and the route's list, in front of a recording upstream.</summary>
    private static async Task<(RecordingUpstream Upstream, TestProxy Proxy)> StartAsync(string policies, string listenerPolicies, string routePolicies)
    {
        var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        try
        {
            string port = upstream.Port.ToString(CultureInfo.InvariantCulture);
            var proxy = await TestProxy.StartAsync($$"""
                policies:
                {{policies}}
                listeners:
                  - { name: public, address: 127.0.0.1:0, policies: [{{listenerPolicies}}] }
                routes:
                  - { id: orders, match: { path: "/orders/{**rest}" }, cluster: orders, policies: [{{routePolicies}}] }
                clusters:
                  orders: { destinations: ["http://127.0.0.1:{{port}}"] }

                """);
            return (upstream, proxy);
        }
        catch
        {
            await upstream.DisposeAsync();
            throw;
        }
    }

    private static async Task<HttpMessage> GetAsync(RawClient client, string target, params string[] headers)
    {
        await client.SendAsync(Wire.Get(target, "example.test", headers));
        return await client.ReadResponseAsync();
    }

    [Fact]
    public async Task RateLimit_BurstExhausted_Returns429WithDraftHeadersAndProblemBody()
    {
        var (upstream, proxy) = await StartAsync("""
              per-client:
                rate_limit: { key: header:x-api-key, rate: 1/h, burst: 3 }
            """, "", "per-client");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(200, (await GetAsync(client, "/orders/1", "X-API-Key: k1")).Status);
        }
        var limited = await GetAsync(client, "/orders/1", "X-API-Key: k1");

        Assert.Equal(429, limited.Status);
        Assert.Equal("3600", limited.Header("retry-after"));
        Assert.Equal("\"per-client\";q=1;w=3600", limited.Header("ratelimit-policy"));
        Assert.Equal("\"per-client\";r=0;t=10800", limited.Header("ratelimit"));
        Assert.Equal("application/problem+json", limited.Header("content-type"));
        var problem = JsonDocument.Parse(limited.Body).RootElement;
        Assert.Equal(429, problem.GetProperty("status").GetInt32());
        Assert.Equal("about:blank", problem.GetProperty("type").GetString());
        Assert.Equal("Too Many Requests", problem.GetProperty("title").GetString());
        Assert.Contains("'per-client'", problem.GetProperty("detail").GetString());
        Assert.DoesNotContain("k1", limited.BodyText);
        Assert.Equal(3, upstream.Requests.Length);

        // The connection stays usable after a local answer.
        Assert.Equal(429, (await GetAsync(client, "/orders/2", "X-API-Key: k1")).Status);
        Assert.Equal(3, upstream.Requests.Length);
    }

    [Fact]
    public async Task ApiKeyThenRateLimit_ConsumerAndPlanFromTheKey_EachConsumerGetsItsPlansBudget()
    {
        // "alice" and "bob" hashed (SHA-256): alice is on the free plan (burst 2), bob on pro (burst 5).
        var (upstream, proxy) = await StartAsync("""
              keys:
                api_key:
                  header: x-api-key
                  keys:
                    - { sha256: 2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90, consumer: alice, plan: free }
                    - { sha256: 81b637d8fcd2c6da6359e6963113a1170de795e4b725b84d1e0b4cfd9ec58ce9, consumer: bob, plan: pro }
                  forward_identity: { consumer: x-consumer, plan: x-plan }
              per-plan:
                rate_limit:
                  key: consumer
                  plans:
                    free: { rate: 1/h, burst: 2 }
                    pro: { rate: 1/h, burst: 5 }
            """, "", "keys, per-plan");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var statuses = new List<int>();
        for (int i = 0; i < 3; i++)
        {
            statuses.Add((await GetAsync(client, "/orders/1", "X-API-Key: alice")).Status);
        }
        for (int i = 0; i < 6; i++)
        {
            statuses.Add((await GetAsync(client, "/orders/1", "X-API-Key: bob", "X-Consumer: mallory")).Status);
        }
        var unknown = await GetAsync(client, "/orders/1", "X-API-Key: eve");

        Assert.Equal([200, 200, 429, 200, 200, 200, 200, 200, 429], statuses);
        Assert.Equal(401, unknown.Status);
        Assert.Equal(7, upstream.Requests.Length);
        Assert.Equal("alice", upstream.Requests[0].Header("x-consumer"));
        Assert.Equal("free", upstream.Requests[0].Header("x-plan"));
        Assert.Equal("bob", upstream.Requests[6].Header("x-consumer")); // the client's own copy was dropped
        Assert.Single(upstream.Requests[6].Headers, h => h.Key.Equals("x-consumer", StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public async Task RateLimit_DifferentKeys_HaveSeparateBudgets()
    {
        var (upstream, proxy) = await StartAsync("""
              per-client:
                rate_limit: { key: header:x-api-key, rate: 1/h, burst: 1 }
            """, "", "per-client");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        Assert.Equal(200, (await GetAsync(client, "/orders/a", "X-API-Key: k1")).Status);
        Assert.Equal(429, (await GetAsync(client, "/orders/a", "X-API-Key: k1")).Status);
        Assert.Equal(200, (await GetAsync(client, "/orders/a", "X-API-Key: k2")).Status);
        // No key: the shared anonymous bucket, separate from both.
        Assert.Equal(200, (await GetAsync(client, "/orders/a")).Status);
        Assert.Equal(429, (await GetAsync(client, "/orders/a")).Status);
        Assert.Equal(3, upstream.Requests.Length);
    }

    [Fact]
    public async Task IpFilter_LoopbackAllowed_Forwards()
    {
        var (upstream, proxy) = await StartAsync("""
              office-only:
                ip_filter: { allow: [127.0.0.0/8, "::1/128"] }
            """, "", "office-only");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        Assert.Equal(200, (await GetAsync(client, "/orders/1")).Status);
        Assert.Single(upstream.Requests);
    }

    [Fact]
    public async Task IpFilter_LoopbackDenied_Returns403AndUpstreamSeesNothing()
    {
        var (upstream, proxy) = await StartAsync("""
              office-only:
                ip_filter: { allow: [127.0.0.0/8], deny: [127.0.0.1/32] }
            """, "", "office-only");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var denied = await GetAsync(client, "/orders/1");

        Assert.Equal(403, denied.Status);
        Assert.Equal("application/problem+json", denied.Header("content-type"));
        Assert.Equal(403, JsonDocument.Parse(denied.Body).RootElement.GetProperty("status").GetInt32());
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Policies_ListenerDefaults_RunBeforeRoutePolicies()
    {
        // Listener default: a rate limit with one request of budget. Route policy: an ip_filter refusing us.
        // Listener first: request 1 is charged then refused (403), request 2 is over budget (429). Route first
        // would refuse both before the limiter ever counted them.
        var (upstream, proxy) = await StartAsync("""
              budget:
                rate_limit: { key: client_ip, rate: 1/h, burst: 1 }
              nobody:
                ip_filter: { deny: [127.0.0.0/8] }
            """, "budget", "nobody");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        Assert.Equal(403, (await GetAsync(client, "/orders/1")).Status);
        Assert.Equal(429, (await GetAsync(client, "/orders/1")).Status);
        Assert.Equal(0, upstream.ConnectionCount);
    }
}

/// <summary>Policies on the data plane allocate nothing per request once warm (runs alone, like the other allocation tests).</summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class PolicyAllocationTests
{
    [Fact]
    public async Task AllowedRequests_ThroughRateLimitAndIpFilter_AllocateUnder100BytesEach()
    {
        await using var proxy = await TestProxy.StartAsync("""
            policies:
              per-client: { rate_limit: { key: header:x-api-key, rate: 1000000/s, burst: 1000000 } }
              local: { ip_filter: { allow: [127.0.0.0/8], deny: [10.0.0.0/8] } }
            listeners:
              - { name: public, address: 127.0.0.1:0, policies: [local] }
            routes:
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" }, policies: [per-client] }

            """);
        using var client = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork,
            System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 5000 };
        client.Connect(proxy.Public);
        byte[] request = System.Text.Encoding.ASCII.GetBytes(
            "GET /hello HTTP/1.1\r\nHost: example.test\r\nX-API-Key: 7f3c9a0e-5b1d\r\nAccept: */*\r\n\r\n");
        byte[] receive = new byte[4096];
        int length = RoundTrip(client, request, receive, 0);
        Assert.StartsWith("HTTP/1.1 200", System.Text.Encoding.ASCII.GetString(receive, 0, length));
        for (int i = 0; i < 3000; i++)
        {
            RoundTrip(client, request, receive, length);
        }

        long perRequest = SteadyStateAllocationTests.LowestPerRequest(
            () => RoundTrip(client, request, receive, length), windows: 5, requestsPerWindow: 1000);
        Assert.True(perRequest < 100, $"{perRequest} bytes allocated per request through the policies in steady state (lowest of five windows)");
    }

    /// <summary>Sends one request and reads one response; the first call learns its length (the head ends the body: "hello\n").</summary>
    private static int RoundTrip(System.Net.Sockets.Socket client, byte[] request, byte[] receive, int expected)
    {
        client.Send(request);
        int total = 0;
        while (true)
        {
            int n = client.Receive(receive.AsSpan(total));
            Assert.True(n > 0, "the proxy closed the connection");
            total += n;
            if (expected > 0 ? total >= expected : receive.AsSpan(0, total).EndsWith("hello\n"u8))
            {
                return total;
            }
        }
    }
}
