using System.Buffers.Text;
using System.Globalization;
using System.IdentityModel.Tokens.Jwt;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.IdentityModel.Tokens;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>The <c>jwt</c> policy over real sockets, with tokens minted by Microsoft.IdentityModel.</summary>
public sealed class JwtPolicyTests : IDisposable
{
    private const string Issuer = "https://idp.example.test";

    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-jwt-func-").FullName;
    private readonly RSA _rsa = RSA.Create(2048);
    private readonly ECDsa _ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);

    public JwtPolicyTests()
    {
        var rsa = _rsa.ExportParameters(false);
        var ec = _ec.ExportParameters(false).Q;
        File.WriteAllText(Path.Combine(_dir, "jwks.json"), $$"""
            { "keys": [
              { "kty": "RSA", "kid": "rsa1", "n": "{{Base64Url.EncodeToString(rsa.Modulus)}}", "e": "{{Base64Url.EncodeToString(rsa.Exponent)}}" },
              { "kty": "EC", "kid": "ec1", "crv": "P-256", "x": "{{Base64Url.EncodeToString(ec.X)}}", "y": "{{Base64Url.EncodeToString(ec.Y)}}" }
            ] }
            """);
    }

    public void Dispose()
    {
        _rsa.Dispose();
        _ec.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private async Task<(RecordingUpstream Upstream, TestProxy Proxy)> StartAsync()
    {
        var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        try
        {
            string port = upstream.Port.ToString(CultureInfo.InvariantCulture);
            string jwks = Path.Combine(_dir, "jwks.json");
            var proxy = await TestProxy.StartAsync($$"""
                policies:
                  jwt-internal:
                    jwt:
                      issuer: {{Issuer}}
                      audiences: [orders-api]
                      jwks_file: "{{jwks}}"
                      required_scopes: [orders.read]
                      clock_skew: 30s
                listeners:
                  - { name: public, address: 127.0.0.1:0 }
                routes:
                  - { id: orders, match: { path: "/orders/{**rest}" }, cluster: orders, policies: [jwt-internal] }
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

    private string Mint(string scope, bool ec = false)
    {
        SecurityKey key = ec ? new ECDsaSecurityKey(_ec) { KeyId = "ec1" } : new RsaSecurityKey(_rsa) { KeyId = "rsa1" };
        var now = DateTime.UtcNow;
        return new JwtSecurityTokenHandler().CreateEncodedJwt(new SecurityTokenDescriptor
        {
            Issuer = Issuer,
            Audience = "orders-api",
            IssuedAt = now,
            NotBefore = now.AddMinutes(-1),
            Expires = now.AddMinutes(10),
            Claims = new Dictionary<string, object> { ["scope"] = scope },
            SigningCredentials = new SigningCredentials(key, ec ? "ES256" : "RS256"),
        });
    }

    private static async Task<HttpMessage> GetAsync(RawClient client, string target, params string[] headers)
    {
        await client.SendAsync(Wire.Get(target, "example.test", headers));
        return await client.ReadResponseAsync();
    }

    [Fact]
    public async Task Jwt_NoToken_Returns401ChallengeAndUpstreamSeesNothing()
    {
        var (upstream, proxy) = await StartAsync();
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/orders/1");

        Assert.Equal(401, response.Status);
        Assert.Equal("Bearer realm=\"jwt-internal\"", response.Header("www-authenticate"));
        Assert.Equal("application/problem+json", response.Header("content-type"));
        Assert.Equal(401, JsonDocument.Parse(response.Body).RootElement.GetProperty("status").GetInt32());
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Jwt_ValidTokens_Forwarded()
    {
        var (upstream, proxy) = await StartAsync();
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        string token = Mint("orders.read");

        Assert.Equal(200, (await GetAsync(client, "/orders/1", $"Authorization: Bearer {token}")).Status);
        // The same token again (from the cache), and an ES256 one.
        Assert.Equal(200, (await GetAsync(client, "/orders/2", $"Authorization: Bearer {token}")).Status);
        Assert.Equal(200, (await GetAsync(client, "/orders/3", $"Authorization: Bearer {Mint("orders.read", ec: true)}")).Status);
        Assert.Equal(3, upstream.Requests.Length);
    }

    [Fact]
    public async Task Jwt_MissingScope_Returns403AndUpstreamSeesNothing()
    {
        var (upstream, proxy) = await StartAsync();
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/orders/1", $"Authorization: Bearer {Mint("orders.write")}");

        Assert.Equal(403, response.Status);
        Assert.Contains("error=\"insufficient_scope\"", response.Header("www-authenticate"));
        Assert.Equal("application/problem+json", response.Header("content-type"));
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Jwt_TamperedToken_Returns401InvalidToken()
    {
        var (upstream, proxy) = await StartAsync();
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        string token = Mint("orders.read");
        string tampered = token[..^4] + (token[^4] == 'A' ? "BBBB" : "AAAA");

        var response = await GetAsync(client, "/orders/1", $"Authorization: Bearer {tampered}");

        Assert.Equal(401, response.Status);
        Assert.Contains("error=\"invalid_token\"", response.Header("www-authenticate"));
        Assert.Equal(0, upstream.ConnectionCount);
    }
}
