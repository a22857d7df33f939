using System.Buffers.Text;
using System.IdentityModel.Tokens.Jwt;
using System.Security.Cryptography;
using Microsoft.IdentityModel.Tokens;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>The jwt policy's roles, claims and identity forwarding over real sockets, tokens minted by Microsoft.IdentityModel.</summary>
public sealed class JwtAuthorizationTests : IDisposable
{
    private const string Issuer = "https://idp.example.test";

    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-jwt-authz-").FullName;
    private readonly RSA _rsa = RSA.Create(2048);

    public JwtAuthorizationTests()
    {
        var rsa = _rsa.ExportParameters(false);
        File.WriteAllText(Path.Combine(_dir, "jwks.json"), $$"""
            { "keys": [ { "kty": "RSA", "kid": "rsa1", "n": "{{Base64Url.EncodeToString(rsa.Modulus)}}", "e": "{{Base64Url.EncodeToString(rsa.Exponent)}}" } ] }
            """);
    }

    public void Dispose()
    {
        _rsa.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private string Policy => $$"""
          admins:
            jwt:
              issuer: {{Issuer}}
              audiences: [orders-api]
              jwks_file: "{{Path.Combine(_dir, "jwks.json")}}"
              required_roles: [admin]
              required_claims: { tenant: acme }
              forward_identity: { subject: x-auth-subject, client_id: x-auth-client-id }
        """;

    private string Mint(Dictionary<string, object> claims)
    {
        claims.TryAdd("aud", "orders-api");
        var now = DateTime.UtcNow;
        return new JwtSecurityTokenHandler().CreateEncodedJwt(new SecurityTokenDescriptor
        {
            Issuer = Issuer,
            IssuedAt = now,
            NotBefore = now.AddMinutes(-1),
            Expires = now.AddMinutes(10),
            Claims = claims,
            SigningCredentials = new SigningCredentials(new RsaSecurityKey(_rsa) { KeyId = "rsa1" }, "RS256"),
        });
    }

    [Fact]
    public async Task Jwt_RoleAndClaimPresent_ForwardsIdentityAndStripsSpoofedCopies()
    {
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy, "admins");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        string token = Mint(new() { ["sub"] = "user-7", ["client_id"] = "orders-ui", ["roles"] = new[] { "admin" }, ["tenant"] = "acme" });

        var response = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}",
            "X-Auth-Subject: root", "x-auth-client-id: forged");

        Assert.Equal(200, response.Status);
        var seen = Assert.Single(upstream.Requests);
        Assert.Equal(["user-7"], seen.HeaderValues("x-auth-subject"));
        Assert.Equal(["orders-ui"], seen.HeaderValues("x-auth-client-id"));
    }

    [Fact]
    public async Task Jwt_RoleMissing_Returns403InsufficientScopeAndUpstreamSeesNothing()
    {
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy, "admins");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        string token = Mint(new() { ["sub"] = "user-7", ["roles"] = new[] { "viewer" }, ["tenant"] = "acme" });

        var response = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}");

        var problem = IdentityPolicyTests.Problem(response, 403);
        Assert.Equal("Bearer realm=\"admins\", error=\"insufficient_scope\", error_description=\"The token lacks a required role\"",
            response.Header("www-authenticate"));
        Assert.Contains("admin", problem.GetProperty("detail").GetString());
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Jwt_ClaimMismatch_Returns403AndUpstreamSeesNothing()
    {
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy, "admins");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        string token = Mint(new() { ["sub"] = "user-7", ["roles"] = new[] { "admin" }, ["tenant"] = "globex" });

        var response = await IdentityPolicyTests.GetAsync(client, "/orders/1", $"Authorization: Bearer {token}");

        IdentityPolicyTests.Problem(response, 403);
        Assert.Equal("Bearer realm=\"admins\", error=\"insufficient_scope\", error_description=\"The token lacks a required claim value\"",
            response.Header("www-authenticate"));
        Assert.DoesNotContain("acme", response.BodyText);
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Jwt_NoToken_Returns401AndSpoofedIdentityNeverForwarded()
    {
        var (upstream, proxy) = await IdentityPolicyTests.StartAsync(Policy, "admins");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var response = await IdentityPolicyTests.GetAsync(client, "/orders/1", "X-Auth-Subject: root");

        IdentityPolicyTests.Problem(response, 401);
        Assert.Equal("Bearer realm=\"admins\"", response.Header("www-authenticate"));
        Assert.Equal(0, upstream.ConnectionCount);
    }
}
