using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>The identity policies (api_key, identity forwarding) over real sockets.</summary>
public sealed class IdentityPolicyTests
{
    internal static string Sha(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    internal static async Task<(RecordingUpstream Upstream, TestProxy Proxy)> StartAsync(string policies, string routePolicies, string listenerExtra = "")
    {
        var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        try
        {
            string port = upstream.Port.ToString(CultureInfo.InvariantCulture);
            var proxy = await TestProxy.StartAsync($$"""
                policies:
                {{policies}}
                listeners:
                  - { name: public, address: 127.0.0.1:0{{listenerExtra}} }
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

    internal static async Task<HttpMessage> GetAsync(RawClient client, string target, params string[] headers)
    {
        await client.SendAsync(Wire.Get(target, "example.test", headers));
        return await client.ReadResponseAsync();
    }

    internal static JsonElement Problem(HttpMessage response, int status)
    {
        Assert.Equal(status, response.Status);
        Assert.Equal("application/problem+json", response.Header("content-type"));
        var problem = JsonDocument.Parse(response.Body).RootElement;
        Assert.Equal(status, problem.GetProperty("status").GetInt32());
        Assert.Equal("about:blank", problem.GetProperty("type").GetString());
        return problem;
    }

    private string ApiKeyPolicy => $$"""
          keys:
            api_key:
              header: X-API-Key
              keys:
                - { sha256: {{Sha("alice-secret")}}, consumer: alice, plan: free }
                - { sha256: {{Sha("bob-secret")}}, consumer: bob, plan: gold }
              forward_identity: { consumer: x-consumer, plan: x-plan }
        """;

    [Fact]
    public async Task ApiKey_KnownKey_ForwardsWithConsumerAndPlanHeaders()
    {
        var (upstream, proxy) = await StartAsync(ApiKeyPolicy, "keys");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/orders/1", "X-API-Key: bob-secret", "X-Consumer: admin", "x-plan: platinum", "X-Consumer: root");

        Assert.Equal(200, response.Status);
        var seen = Assert.Single(upstream.Requests);
        Assert.Equal(["bob"], seen.HeaderValues("x-consumer"));
        Assert.Equal(["gold"], seen.HeaderValues("x-plan"));
        // The key itself still goes upstream (the upstream may log which key was used); only identity copies are stripped.
        Assert.Equal("bob-secret", seen.Header("x-api-key"));
    }

    [Fact]
    public async Task ApiKey_Missing_Returns401AndUpstreamSeesNothing()
    {
        var (upstream, proxy) = await StartAsync(ApiKeyPolicy, "keys");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/orders/1");

        var problem = Problem(response, 401);
        Assert.Equal("ApiKey realm=\"keys\"", response.Header("www-authenticate"));
        Assert.Contains("x-api-key", problem.GetProperty("detail").GetString());
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task ApiKey_Unknown_Returns401WithoutEchoingKey()
    {
        var (upstream, proxy) = await StartAsync(ApiKeyPolicy, "keys");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/orders/1", "X-API-Key: mallory-guess");

        Problem(response, 401);
        Assert.Equal("ApiKey realm=\"keys\"", response.Header("www-authenticate"));
        Assert.DoesNotContain("mallory", response.BodyText);
        // The connection stays usable and a good key then passes.
        Assert.Equal(200, (await GetAsync(client, "/orders/1", "X-API-Key: alice-secret")).Status);
        Assert.Single(upstream.Requests);
    }

    [Fact]
    public async Task ApiKey_SentTwiceInAnotherSpelling_Returns401InvalidAndUpstreamSeesNothing()
    {
        var (upstream, proxy) = await StartAsync(ApiKeyPolicy, "keys");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        // CGI-style upstreams read x_api_key as X-API-Key: a second, unchecked key travelling with the checked one.
        var response = await GetAsync(client, "/orders/1", "x_api_key: mallory-key", "X-API-Key: alice-secret");
        Problem(response, 401);
        Assert.Equal("ApiKey realm=\"keys\"", response.Header("www-authenticate"));
        Assert.Contains("not accepted", response.BodyText);
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Theory]
    [InlineData("/orders/1?api%5Fkey=mallory&api_key=alice%20secret")]
    [InlineData("/orders/1?api_key&api_key=alice%20secret")]
    public async Task ApiKey_InQueryTwiceInAnotherSpelling_Returns401(string target)
    {
        var (upstream, proxy) = await StartAsync($$"""
              keys:
                api_key: { query: api_key, keys: [{ sha256: {{Sha("alice secret")}}, consumer: alice }] }
            """, "keys");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        Assert.Contains("not accepted", Problem(await GetAsync(client, target), 401).GetProperty("detail").GetString());
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task ApiKey_InQuery_Accepted()
    {
        var (upstream, proxy) = await StartAsync($$"""
              keys:
                api_key: { query: api_key, keys: [{ sha256: {{Sha("alice secret")}}, consumer: alice }] }
            """, "keys");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        Assert.Equal(200, (await GetAsync(client, "/orders/1?x=1&api_key=alice%20secret")).Status);
        Problem(await GetAsync(client, "/orders/1?api_key=alice"), 401);
        Assert.Single(upstream.Requests);
    }

    [Fact]
    public async Task IpFilter_TrustedProxy_UsesRightMostUntrustedForwardedFor()
    {
        var (upstream, proxy) = await StartAsync("""
              partners:
                ip_filter: { allow: [203.0.113.0/24], trusted_proxies: [127.0.0.0/8] }
            """, "partners");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        Assert.Equal(200, (await GetAsync(client, "/orders/1", "X-Forwarded-For: 198.51.100.1, 203.0.113.9, 127.0.0.5")).Status);
        // A forged allowed address on the left does not help: the right-most untrusted entry decides.
        var denied = await GetAsync(client, "/orders/1", "X-Forwarded-For: 203.0.113.9, 198.51.100.1");
        Problem(denied, 403);
        var garbage = await GetAsync(client, "/orders/1", "X-Forwarded-For: 203.0.113.9, not-an-ip");
        Problem(garbage, 403);
        Assert.Single(upstream.Requests);
    }

    [Theory]
    [InlineData("GET /orders/1?id=1%20UNION%20SELECT%20password HTTP/1.1", "sql_injection")]
    [InlineData("GET /orders/1?q=%3Cscript%3Ealert(1)%3C/script%3E HTTP/1.1", "xss")]
    [InlineData("GET /orders/..%2f..%2fetc%2fpasswd HTTP/1.1", "path_traversal")]
    [InlineData("DELETE /orders/1 HTTP/1.1", "methods")]
    [InlineData("GET /orders/wp-login.php HTTP/1.1", "patterns")]
    public async Task Deny_Signature_Returns403NamingRuleAndUpstreamSeesNothing(string requestLine, string rule)
    {
        var (upstream, proxy) = await StartAsync("""
              waf:
                deny: { path_traversal: true, sql_injection: true, xss: true, methods: [GET, POST], patterns: [wp-login] }
            """, "waf");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync($"{requestLine}\r\nHost: example.test\r\n\r\n");
        var response = await client.ReadResponseAsync();

        var problem = Problem(response, 403);
        Assert.Equal(rule, problem.GetProperty("rule").GetString());
        Assert.Equal(0, upstream.ConnectionCount);
        // An ordinary request on the same connection still passes.
        Assert.Equal(200, (await GetAsync(client, "/orders/1?expand=items")).Status);
    }
}
