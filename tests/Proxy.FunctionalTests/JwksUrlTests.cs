using System.Buffers.Text;
using System.Globalization;
using System.IdentityModel.Tokens.Jwt;
using System.Security.Cryptography;
using Microsoft.IdentityModel.Tokens;
using Proxy.Core.Tests.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>jwt with jwks_url: keys served over HTTP by a test server, rotation picked up through an unknown kid.</summary>
public sealed class JwksUrlTests : IDisposable
{
    private const string Issuer = "https://idp.example.test";

    private readonly RSA _old = RSA.Create(2048);
    private readonly RSA _new = RSA.Create(2048);
    private volatile string _jwks;
    private int _jwksRequests;

    public JwksUrlTests() => _jwks = Jwks((_old, "k1"));

    public void Dispose()
    {
        _old.Dispose();
        _new.Dispose();
    }

    private static string Jwks(params (RSA Key, string Kid)[] keys)
        => "{\"keys\":[" + string.Join(",", keys.Select(k =>
        {
            var p = k.Key.ExportParameters(false);
            return $$"""{"kty":"RSA","kid":"{{k.Kid}}","n":"{{Base64Url.EncodeToString(p.Modulus)}}","e":"{{Base64Url.EncodeToString(p.Exponent)}}"}""";
        })) + "]}";

    private RecordingUpstream StartKeyServer() => RecordingUpstream.Start(UpstreamBehaviors.Respond((_, _) =>
    {
        Interlocked.Increment(ref _jwksRequests);
        string body = _jwks;
        return $"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n{body}";
    }));

    /// <summary>A token signed by <paramref name="key"/>; with a <paramref name="subject"/>, one no other call mints.</summary>
    private static string Mint(RSA key, string kid, string? subject = null)
    {
        var now = DateTime.UtcNow;
        return new JwtSecurityTokenHandler().CreateEncodedJwt(new SecurityTokenDescriptor
        {
            Claims = subject is null ? null : new Dictionary<string, object> { ["sub"] = subject },
            Issuer = Issuer,
            Audience = "orders-api",
            IssuedAt = now,
            NotBefore = now.AddMinutes(-1),
            Expires = now.AddMinutes(10),
            SigningCredentials = new SigningCredentials(new RsaSecurityKey(key) { KeyId = kid }, "RS256"),
        });
    }

    private static string Policy(int keyPort) => $$"""
          jwt-remote:
            jwt:
              issuer: {{Issuer}}
              audiences: [orders-api]
              jwks_url: http://127.0.0.1:{{keyPort.ToString(CultureInfo.InvariantCulture)}}/.well-known/jwks.json
              jwks_refresh: 1h
              jwks_min_refetch: 1s
        """;

    private static async Task<HttpMessage> GetUntilAsync(RawClient client, string token, int status)
    {
        // Fetches run in the background: poll briefly instead of sleeping a fixed time.
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            var response = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}");
            if (response.Status == status || DateTime.UtcNow > deadline)
            {
                return response;
            }
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task JwksUrl_KeyRotation_UnknownKidRefetchesAndAccepts()
    {
        await using var keys = StartKeyServer();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(keys.Port), "jwt-remote");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        Assert.Equal(200, (await GetUntilAsync(client, Mint(_old, "k1"), 200)).Status);

        // The issuer rotates: k2 appears in its set. The first k2 token is refused (kid unknown) and triggers a refetch.
        _jwks = Jwks((_new, "k2"), (_old, "k1"));
        string rotated = Mint(_new, "k2");
        Assert.Equal(200, (await GetUntilAsync(client, rotated, 200)).Status);
        // During the overlap both keys verify.
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {Mint(_old, "k1")}")).Status);
    }

    /// <summary>
    /// A key the issuer withdraws from its set (rotated out, or compromised) stops verifying tokens at the proxy's next
    /// successful fetch, tokens already cached included: a cached verdict names the set that verified it, and the
    /// fetched set is another one, so the token is checked again, as at first sight, and refused. Before, a cached k1
    /// token went on passing until its exp.
    /// </summary>
    [Fact]
    public async Task JwksUrl_KeyRemovedFromSet_CachedTokenRefusedOnceTheNewSetIsFetched()
    {
        await using var keys = StartKeyServer();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(keys.Port), "jwt-remote");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        string cached = Mint(_old, "k1");
        Assert.Equal(200, (await GetUntilAsync(client, cached, 200)).Status);
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {cached}")).Status);

        // The issuer withdraws k1. A k2 token names a kid the set lacks, which fetches the new set; it passes once
        // the set is in.
        _jwks = Jwks((_new, "k2"));
        Assert.Equal(200, (await GetUntilAsync(client, Mint(_new, "k2"), 200)).Status);

        var refused = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {cached}");
        IdentityPolicyTests.Problem(refused, 401);
        Assert.Equal("Bearer realm=\"jwt-remote\", error=\"invalid_token\", error_description=\"The token signature, algorithm or key is not accepted\"",
            refused.Header("www-authenticate"));
    }

    [Fact]
    public async Task JwksUrl_EdDsaKeyRotatedIn_AcceptsEd25519TokenAndRefusesTampered()
    {
        // RFC 8037: an OKP/Ed25519 key served over HTTP beside the RSA one, tokens signed with NSec at test time.
        using var ed = NSec.Cryptography.Key.Create(NSec.Cryptography.SignatureAlgorithm.Ed25519);
        string x = Base64Url.EncodeToString(ed.PublicKey.Export(NSec.Cryptography.KeyBlobFormat.RawPublicKey));
        await using var keys = StartKeyServer();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(keys.Port), "jwt-remote");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        Assert.Equal(200, (await GetUntilAsync(client, Mint(_old, "k1"), 200)).Status);

        _jwks = Jwks((_old, "k1"))[..^2] + $$""",{"kty":"OKP","crv":"Ed25519","kid":"ed1","x":"{{x}}"}]}""";
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string payload = $$"""{"iss":"{{Issuer}}","aud":"orders-api","sub":"ed-user","exp":{{now + 600}}}""";
        string input = $"{Base64Url.EncodeToString("""{"alg":"EdDSA","kid":"ed1"}"""u8)}.{Base64Url.EncodeToString(System.Text.Encoding.UTF8.GetBytes(payload))}";
        byte[] signature = NSec.Cryptography.SignatureAlgorithm.Ed25519.Sign(ed, System.Text.Encoding.ASCII.GetBytes(input));
        Assert.Equal(200, (await GetUntilAsync(client, $"{input}.{Base64Url.EncodeToString(signature)}", 200)).Status);

        signature[0] ^= 1;
        var refused = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {input}.{Base64Url.EncodeToString(signature)}");
        IdentityPolicyTests.Problem(refused, 401);
    }

    [Fact]
    public async Task JwksUrl_UnknownKidFlood_RefetchesAtMostOncePerInterval()
    {
        await using var keys = StartKeyServer();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(keys.Port).Replace("jwks_min_refetch: 1s", "jwks_min_refetch: 1h"), "jwt-remote");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        Assert.Equal(200, (await GetUntilAsync(client, Mint(_old, "k1"), 200)).Status);
        int before = Volatile.Read(ref _jwksRequests);

        for (int i = 0; i < 20; i++)
        {
            var refused = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {Mint(_new, $"made-up-{i}")}");
            IdentityPolicyTests.Problem(refused, 401);
        }
        await Task.Delay(300);

        // The first fetch started at load, less than an hour ago: no refetch at all.
        Assert.Equal(before, Volatile.Read(ref _jwksRequests));
    }

    [Fact]
    public async Task JwksUrl_KeyServerDown_LoadsAndAnswers401KeysUnavailable()
    {
        // A port nothing listens on (outside the range other tests' listeners get theirs from).
        int port = Ports.ClosedPort();
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy(port), "jwt-remote");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {Mint(_old, "k1")}");

        IdentityPolicyTests.Problem(response, 401);
        Assert.Equal("Bearer realm=\"jwt-remote\", error=\"invalid_token\", error_description=\"The token signing keys are not available\"",
            response.Header("www-authenticate"));
        Assert.Equal(0, upstream.ConnectionCount);
    }

    /// <summary>The identity tests' config with <see cref="Policy"/>, plus <paramref name="extraRoute"/> (a reload's change).</summary>
    private static string Config(string policies, int upstreamPort, string extraRoute = "") => $$"""
        admin: { address: "127.0.0.1:0" }
        policies:
        {{policies}}
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: orders, match: { path: "/orders/{**rest}" }, cluster: orders, policies: [jwt-remote] }
          {{extraRoute}}
        clusters:
          orders: { destinations: ["http://127.0.0.1:{{upstreamPort.ToString(CultureInfo.InvariantCulture)}}"] }

        """;

    /// <summary>
    /// A reload that leaves the jwt policy as it was keeps its key source: no fetch, and tokens verify at once with the
    /// keys already fetched. A reload whose jwt policy changed only its schedule (<c>jwks_refresh</c>) while the key
    /// server is down starts from the last good set. Before, every reload started the policy without keys and fetched:
    /// until that fetch landed (a key server down: until it came back) every token got 401 "signing keys are not
    /// available".
    /// </summary>
    [Fact]
    public async Task JwksUrl_Reload_KeepsTheKeysItHas_EvenWithTheKeyServerDown()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        var keys = StartKeyServer();
        string policy = Policy(keys.Port);
        await using var proxy = await TestProxy.StartAsync(Config(policy, upstream.Port));
        await using var client = await proxy.ConnectAsync();
        string token = Mint(_old, "k1");
        Assert.Equal(200, (await GetUntilAsync(client, token, 200)).Status);

        // Unchanged policy, key server up: no refetch.
        int fetches = Volatile.Read(ref _jwksRequests);
        var result = await proxy.Server.ReloadAsync(Config(policy, upstream.Port, """- { id: other, match: { path: "/other" }, respond: { status: 200, body: "one" } }"""));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}")).Status);
        await Task.Delay(300);
        Assert.Equal(fetches, Volatile.Read(ref _jwksRequests));

        // The key server goes away; reloads follow, the second one changing the policy's refresh period.
        await keys.DisposeAsync();
        result = await proxy.Server.ReloadAsync(Config(policy, upstream.Port, """- { id: other, match: { path: "/other" }, respond: { status: 200, body: "two" } }"""));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}")).Status);
        result = await proxy.Server.ReloadAsync(Config(policy.Replace("jwks_refresh: 1h", "jwks_refresh: 2h"), upstream.Port));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}")).Status);
        // Its first fetch has failed by now (connection refused): the last good set stays.
        await Task.Delay(300);
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}")).Status);
    }

    /// <summary>The policy's <c>proxy_jwt_signature_checks_total</c>, scraped from the admin listener's <c>/metrics</c>.</summary>
    private static async Task<double> SignatureChecksAsync(TestProxy proxy)
    {
        using var http = new HttpClient();
        string text = await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port.ToString(CultureInfo.InvariantCulture)}/metrics");
        return PrometheusTextParser.Parse(text).Value("proxy_jwt_signature_checks_total", ("policy", "jwt-remote"));
    }

    /// <summary>
    /// A reload that leaves what a cached verdict means unchanged keeps the policy's verified-token cache: a token
    /// verified before the reload passes after it without another signature check, which
    /// <c>proxy_jwt_signature_checks_total</c> shows by staying put. So does a reload that adds
    /// <c>forward_identity</c>, and the subject forwarded is the cached one. One that changes <c>clock_skew</c> (an
    /// entry's expiry includes it) starts an empty cache: the token is checked again, and the counter, which a reload
    /// keeping the policy carries on, goes up by one. Before, the count was not exported.
    /// </summary>
    [Fact]
    public async Task JwksUrl_Reload_KeepsVerifiedTokensWhileTheirMeaningHolds()
    {
        await using var keys = StartKeyServer();
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string policy = Policy(keys.Port);
        await using var proxy = await TestProxy.StartAsync(Config(policy, upstream.Port));
        await using var client = await proxy.ConnectAsync();
        string cached = Mint(_old, "k1", subject: "alice");
        Assert.Equal(200, (await GetUntilAsync(client, cached, 200)).Status);
        Assert.Equal(1, await SignatureChecksAsync(proxy));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {cached}")).Status);
        Assert.Equal(1, await SignatureChecksAsync(proxy));

        // An unrelated change, then identity forwarding added: the same source, the same verdicts, from the cache.
        var result = await proxy.Server.ReloadAsync(Config(policy, upstream.Port, """- { id: other, match: { path: "/other" }, respond: { status: 200, body: "one" } }"""));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {cached}")).Status);
        Assert.Equal(1, await SignatureChecksAsync(proxy));
        result = await proxy.Server.ReloadAsync(Config(policy + "\n      forward_identity: { subject: x-auth-subject }", upstream.Port));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {cached}")).Status);
        Assert.Equal("alice", upstream.Requests[^1].Header("x-auth-subject"));
        Assert.Equal(1, await SignatureChecksAsync(proxy));

        // A changed clock skew: an empty cache, so the token is checked again (and passes: k1 is still in the set).
        result = await proxy.Server.ReloadAsync(Config(policy + "\n      clock_skew: 31s", upstream.Port));
        Assert.True(result.Success && result.Changed, string.Join("\n", result.Errors));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {cached}")).Status);
        Assert.Equal(2, await SignatureChecksAsync(proxy));
        Assert.Equal(200, (await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {cached}")).Status);
        Assert.Equal(2, await SignatureChecksAsync(proxy));
    }

    [Fact]
    public async Task JwksUrl_BodyOverOneMiB_FetchFailsAndKeepsLastGoodSet()
    {
        await using var keys = StartKeyServer();
        var source = new Proxy.Pipeline.Filters.JwksSource("jwt-remote", new Proxy.Pipeline.Filters.JwksSourceOptions
        {
            Url = new Uri($"http://127.0.0.1:{keys.Port.ToString(CultureInfo.InvariantCulture)}/.well-known/jwks.json"),
        });
        Assert.True(await source.FetchAsync());
        Assert.Equal("k1"u8, Assert.Single(source.Keys).Kid!);

        // A usable set (k2 rotated in) padded with JSON whitespace past the 1 MiB cap (JwksSource.MaxResponseBytes, as
        // docs/policies.md says): refused whole, k1 stays.
        const int Cap = 1024 * 1024;
        string rotated = Jwks((_new, "k2"), (_old, "k1"));
        _jwks = rotated[..^1] + new string(' ', Cap) + "}";
        Assert.False(await source.FetchAsync());
        Assert.Equal("k1"u8, Assert.Single(source.Keys).Kid!);

        // At the cap exactly, the same set is read.
        _jwks = rotated[..^1] + new string(' ', Cap - rotated.Length) + "}";
        Assert.True(await source.FetchAsync());
        Assert.Equal(["k2", "k1"], source.Keys.Select(k => System.Text.Encoding.ASCII.GetString(k.Kid!)));
    }
}
