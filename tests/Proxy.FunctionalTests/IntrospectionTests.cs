using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// The introspection policy over real sockets, against a test introspection endpoint (RFC 7662) that checks the
/// proxy's client authentication and form body, and counts its calls.
/// </summary>
public sealed class IntrospectionTests
{
    private static readonly string s_basic = "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes("gw:s3cret"));

    // token -> the endpoint's JSON answer; anything else is inactive.
    private readonly ConcurrentDictionary<string, string> _answers = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<HttpMessage> _calls = new();
    private TimeSpan _delay = TimeSpan.Zero;

    public IntrospectionTests()
    {
        long exp = DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 600;
        _answers["tok+en/1="] = $$"""{"active":true,"sub":"alice","client_id":"web","scope":"orders.read profile","exp":{{exp}}}""";
        _answers["reader-only"] = $$"""{"active":true,"sub":"bob","scope":"profile","exp":{{exp}}}""";
    }

    private RecordingUpstream StartEndpoint() => RecordingUpstream.Start(async (connection, ct) =>
    {
        while (await connection.ReadRequestAsync(ct) is { } request)
        {
            _calls.Enqueue(request);
            if (_delay > TimeSpan.Zero)
            {
                await Task.Delay(_delay, ct);
            }
            string response;
            if (request.Method != "POST" || request.Header("authorization") != s_basic)
            {
                // RFC 7662 section 2.3: the caller failed to authenticate.
                response = Wire.Response(401, "{\"error\":\"invalid_client\"}", ("content-type", "application/json"));
            }
            else
            {
                string token = FormValue(Encoding.ASCII.GetString(request.Body), "token") ?? "";
                string body = _answers.TryGetValue(token, out var answer) ? answer : "{\"active\":false}";
                response = Wire.Response(200, body, ("content-type", "application/json"));
            }
            await connection.WriteAsync(response, ct);
        }
    });

    private static string? FormValue(string form, string name)
    {
        foreach (string pair in form.Split('&'))
        {
            int eq = pair.IndexOf('=');
            if (eq > 0 && pair[..eq] == name)
            {
                return Uri.UnescapeDataString(pair[(eq + 1)..].Replace('+', ' '));
            }
        }
        return null;
    }

    private static string Policy(int port) => $$"""
          opaque:
            introspection:
              url: http://127.0.0.1:{{port.ToString(CultureInfo.InvariantCulture)}}/introspect
              client_id: gw
              client_secret: s3cret
              required_scopes: [orders.read]
              cache_ttl: 5m
              timeout: 2s
              forward_identity: { subject: x-auth-subject, client_id: x-auth-client }
        """;

    private static Task<HttpMessage> GetAsync(RawClient client, string token)
        => IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}");

    [Fact]
    public async Task Introspection_ActiveToken_ForwardsIdentityAndCachesAnswer()
    {
        await using var endpoint = StartEndpoint();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(endpoint.Port), "opaque");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        // A client-supplied identity header must not survive.
        await client.SendAsync(Wire.Get("/orders/1", "example.test", "Authorization: Bearer tok+en/1=", "X-Auth-Subject: mallory"));
        var first = await client.ReadResponseAsync();
        Assert.Equal(200, first.Status);
        var forwarded = await upstream.WaitForRequestAsync();
        Assert.Equal("alice", forwarded.Header("x-auth-subject"));
        Assert.Equal("web", forwarded.Header("x-auth-client"));
        Assert.Single(forwarded.Headers, h => h.Key.Equals("x-auth-subject", StringComparison.OrdinalIgnoreCase));

        // RFC 7662 section 2.1: a form POST with the token and hint, HTTP Basic client authentication.
        var call = Assert.Single(_calls);
        Assert.Equal("POST", call.Method);
        Assert.Equal("/introspect", call.Target);
        Assert.StartsWith("application/x-www-form-urlencoded", call.Header("content-type"));
        Assert.Equal("token=tok%2Ben%2F1%3D&token_type_hint=access_token", Encoding.ASCII.GetString(call.Body));

        // Cached: the same token again does not call the endpoint.
        Assert.Equal(200, (await GetAsync(client, "tok+en/1=")).Status);
        Assert.Equal(200, (await GetAsync(client, "tok+en/1=")).Status);
        Assert.Single(_calls);
        await upstream.WaitForRequestAsync(3);
    }

    [Fact]
    public async Task Introspection_InactiveToken_401AndCachedBriefly()
    {
        await using var endpoint = StartEndpoint();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(endpoint.Port), "opaque");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        for (int i = 0; i < 3; i++)
        {
            var response = await GetAsync(client, "revoked-token");
            IdentityPolicyTests.Problem(response, 401);
            Assert.Equal("Bearer realm=\"opaque\", error=\"invalid_token\", error_description=\"The token is not active\"", response.Header("www-authenticate"));
        }
        // A flood of one bad token costs one call.
        Assert.Single(_calls);
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Introspection_MissingScope_403InsufficientScope()
    {
        await using var endpoint = StartEndpoint();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(endpoint.Port), "opaque");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "reader-only");

        IdentityPolicyTests.Problem(response, 403);
        Assert.Contains("error=\"insufficient_scope\"", response.Header("www-authenticate"));
        Assert.Contains("scope=\"orders.read\"", response.Header("www-authenticate"));
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Introspection_NoToken_401WithoutCall()
    {
        await using var endpoint = StartEndpoint();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(endpoint.Port), "opaque");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await IdentityPolicyTests.GetAsync(client, "/orders/1");

        IdentityPolicyTests.Problem(response, 401);
        Assert.Equal("Bearer realm=\"opaque\"", response.Header("www-authenticate"));
        Assert.Empty(_calls);
    }

    [Fact]
    public async Task Introspection_ServerDown_503Unavailable()
    {
        // Not a port the kernel hands out for "port 0": the upstream started next could get it back and take the
        // introspection calls (a clean-clone run saw exactly that: the upstream counted one connection).
        int port = Ports.ClosedPort();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(port), "opaque");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        for (int i = 0; i < 2; i++)
        {
            var response = await GetAsync(client, "tok+en/1=");
            IdentityPolicyTests.Problem(response, 503);
            Assert.Equal("1", response.Header("retry-after"));
        }
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Introspection_ServerTooSlow_503AfterTimeout()
    {
        _delay = TimeSpan.FromSeconds(5);
        await using var endpoint = StartEndpoint();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(endpoint.Port).Replace("timeout: 2s", "timeout: 200ms"), "opaque");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var started = DateTime.UtcNow;
        var response = await GetAsync(client, "tok+en/1=");

        IdentityPolicyTests.Problem(response, 503);
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(4), "answered before the endpoint did");
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Introspection_ConcurrentMissesForOneToken_ShareOneCall()
    {
        _delay = TimeSpan.FromMilliseconds(300);
        await using var endpoint = StartEndpoint();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(endpoint.Port), "opaque");
        await using var _ = upstream;
        await using var __ = proxy;
        var clients = new RawClient[4];
        for (int i = 0; i < clients.Length; i++)
        {
            clients[i] = await proxy.ConnectAsync();
        }
        try
        {
            var responses = await Task.WhenAll(clients.Select(c => GetAsync(c, "tok+en/1=")));
            Assert.All(responses, r => Assert.Equal(200, r.Status));
            Assert.Single(_calls);
        }
        finally
        {
            foreach (var c in clients)
            {
                await c.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// A reload that leaves the introspection policy's endpoint, credentials, required scopes and cache settings as
    /// they were keeps its cache: a cached token is not sent to the server again (before, every reload emptied the
    /// cache, so each token in use cost a call right after it). Changing one of them (here <c>cache_ttl</c>) starts an
    /// empty cache; changing what only shapes the answer (<c>timeout</c>) does not.
    /// </summary>
    [Fact]
    public async Task Introspection_Reload_KeepsTheCacheWhileItsMeaningHolds()
    {
        await using var endpoint = StartEndpoint();
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string Config(string policy, string body) => $$"""
            policies:
            {{policy}}
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: orders, match: { path: "/orders/{**rest}" }, cluster: orders, policies: [opaque] }
              - { id: other, match: { path: "/other" }, respond: { status: 200, body: "{{body}}" } }
            clusters:
              orders: { destinations: ["http://127.0.0.1:{{upstream.Port.ToString(CultureInfo.InvariantCulture)}}"] }

            """;
        string policy = Policy(endpoint.Port);
        await using var proxy = await TestProxy.StartAsync(Config(policy, "one"));
        await using var client = await proxy.ConnectAsync();
        Assert.Equal(200, (await GetAsync(client, "tok+en/1=")).Status);
        Assert.Single(_calls);

        var result = await proxy.Server.ReloadAsync(Config(policy, "two"));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await GetAsync(client, "tok+en/1=")).Status);
        result = await proxy.Server.ReloadAsync(Config(policy.Replace("timeout: 2s", "timeout: 3s"), "two"));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await GetAsync(client, "tok+en/1=")).Status);
        Assert.Single(_calls);

        result = await proxy.Server.ReloadAsync(Config(policy.Replace("cache_ttl: 5m", "cache_ttl: 4m"), "two"));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await GetAsync(client, "tok+en/1=")).Status);
        Assert.Equal(2, _calls.Count);
    }
}
