using System.IdentityModel.Tokens.Jwt;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.Tokens;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The jwt policy's authorization part: scopes (all/any), roles, required claims, identity and forwarding.</summary>
public class JwtAuthorizationTests
{
    private static readonly JwtTestKeys s_keys = JwtTestKeys.Shared;

    private static JwtFilter Filter(string[]? scopes = null, bool allScopes = true, string[]? roles = null, bool allRoles = true,
        string rolesClaim = "roles", KeyValuePair<string, string>[]? claims = null, IdentityForwardingOptions? forward = null)
        => new(new JwtOptions
        {
            PolicyName = "jwt-internal",
            Issuer = JwtTestKeys.Issuer,
            Audiences = [JwtTestKeys.Audience],
            RequiredScopes = scopes ?? [],
            AllScopes = allScopes,
            RequiredRoles = roles ?? [],
            AllRoles = allRoles,
            RolesClaim = rolesClaim,
            RequiredClaims = claims ?? [],
            ForwardIdentity = forward,
            Keys = Proxy.Pipeline.Filters.JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(s_keys.Jwks())),
        }, new JwtClock(JwtTestKeys.Now));

    internal static string Mint(Dictionary<string, object> claims)
    {
        claims.TryAdd("aud", JwtTestKeys.Audience);
        var descriptor = new SecurityTokenDescriptor
        {
            Issuer = JwtTestKeys.Issuer,
            IssuedAt = JwtTestKeys.Now.UtcDateTime.AddMinutes(-1),
            NotBefore = JwtTestKeys.Now.UtcDateTime.AddMinutes(-1),
            Expires = JwtTestKeys.Now.UtcDateTime.AddMinutes(10),
            Claims = claims,
            SigningCredentials = s_keys.Credentials("RS256"),
        };
        return new JwtSecurityTokenHandler { SetDefaultTimesOnTokenCreation = false }.CreateEncodedJwt(descriptor);
    }

    private static JwtResult Check(JwtFilter filter, Dictionary<string, object> claims) => filter.Validate(Encoding.ASCII.GetBytes(Mint(claims)));

    [Theory]
    [InlineData("a b", true, true)]
    [InlineData("a", true, false)]
    [InlineData("a", false, true)]
    [InlineData("b c", false, true)]
    [InlineData("c", false, false)]
    public void Validate_ScopesMode_AllOrAny(string scope, bool all, bool valid)
    {
        Assert.Equal(valid ? JwtResult.Valid : JwtResult.InsufficientScope,
            Check(Filter(scopes: ["a", "b"], allScopes: all), new() { ["scope"] = scope }));
    }

    [Fact]
    public void Validate_RolesArray_AllRequired()
    {
        var filter = Filter(roles: ["admin", "editor"]);
        Assert.Equal(JwtResult.Valid, Check(filter, new() { ["roles"] = new[] { "editor", "viewer", "admin" } }));
        Assert.Equal(JwtResult.InsufficientRole, Check(filter, new() { ["roles"] = new[] { "editor" } }));
        Assert.Equal(JwtResult.InsufficientRole, Check(filter, new() { ["sub"] = "x" }));
    }

    [Fact]
    public void Validate_RolesAnyFromCustomClaim_OneSuffices()
    {
        var filter = Filter(roles: ["admin", "editor"], allRoles: false, rolesClaim: "groups");
        Assert.Equal(JwtResult.Valid, Check(filter, new() { ["groups"] = "viewer editor" }));
        Assert.Equal(JwtResult.InsufficientRole, Check(filter, new() { ["groups"] = "viewer", ["roles"] = new[] { "admin" } }));
    }

    [Fact]
    public void Validate_RequiredClaims_StringArrayAndBoolean()
    {
        var filter = Filter(claims: [new("tenant", "acme"), new("email_verified", "true")]);
        Assert.Equal(JwtResult.Valid, Check(filter, new() { ["tenant"] = "acme", ["email_verified"] = true }));
        Assert.Equal(JwtResult.Valid, Check(filter, new() { ["tenant"] = new[] { "other", "acme" }, ["email_verified"] = true }));
        Assert.Equal(JwtResult.ClaimMismatch, Check(filter, new() { ["tenant"] = "acme", ["email_verified"] = false }));
        Assert.Equal(JwtResult.ClaimMismatch, Check(filter, new() { ["tenant"] = "acme2", ["email_verified"] = true }));
        Assert.Equal(JwtResult.ClaimMismatch, Check(filter, new() { ["email_verified"] = true }));
    }

    [Fact]
    public void OnRequestHeaders_RoleMissing_Responds403InsufficientScopeWithoutScopeParameter()
    {
        var filter = Filter(roles: ["admin"]);
        string token = Mint(new() { ["roles"] = new[] { "viewer" } });
        var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(403, context.ReplyStatus);
        Assert.Equal("jwt_role", context.ReplyDetails);
        Assert.Contains("www-authenticate: Bearer realm=\"jwt-internal\", error=\"insufficient_scope\", error_description=\"The token lacks a required role\"\r\n",
            Encoding.ASCII.GetString(context.ReplyHeaders));
        var body = JsonDocument.Parse(context.ReplyBody.ToArray()).RootElement;
        Assert.Equal(403, body.GetProperty("status").GetInt32());
        Assert.Contains("admin", body.GetProperty("detail").GetString());
    }

    [Fact]
    public void OnRequestHeaders_ClaimMismatch_Responds403WithoutExpectedValue()
    {
        var filter = Filter(claims: [new("tenant", "secret-tenant-id")]);
        string token = Mint(new() { ["tenant"] = "other" });
        var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(403, context.ReplyStatus);
        Assert.Equal("jwt_claim", context.ReplyDetails);
        Assert.DoesNotContain("secret-tenant-id", Encoding.UTF8.GetString(context.ReplyBody));
        Assert.Contains("tenant", Encoding.UTF8.GetString(context.ReplyBody));
    }

    [Fact]
    public void OnRequestHeaders_Valid_SetsSubjectAndClientIdFromCacheToo()
    {
        var filter = Filter(forward: new IdentityForwardingOptions { Subject = "x-auth-subject", ClientId = "x-auth-client-id" });
        string token = Mint(new() { ["sub"] = "user-42", ["azp"] = "web-app" });
        for (int i = 0; i < 2; i++)
        {
            var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\nX-Auth-Subject: admin\r\nAuthorization: Bearer {token}\r\n\r\n");
            Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
            Assert.Equal("user-42", Encoding.UTF8.GetString(context.Identity.Subject));
            Assert.Equal("web-app", Encoding.UTF8.GetString(context.Identity.ClientId));
            Assert.True(context.IsRemovedUpstream("x-auth-subject"u8));
            Assert.Equal("x-auth-subject: user-42\r\nx-auth-client-id: web-app\r\n", Encoding.ASCII.GetString(context.UpstreamAddedFields));
        }
        Assert.Equal(1, filter.VerificationCount);
    }

    [Fact]
    public void Validate_ClientIdPreferredOverAzp()
    {
        var filter = Filter();
        string token = Mint(new() { ["azp"] = "web-app", ["client_id"] = "svc" });
        var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.Equal("svc", Encoding.UTF8.GetString(context.Identity.ClientId));
    }

    private static string[] JwtErrors(params string[] lines)
    {
        string dir = Directory.CreateTempSubdirectory("proxy-jwtauthz-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "jwks.json"), s_keys.Jwks());
            string path = Path.Combine(dir, "proxy.yaml");
            File.WriteAllText(path, string.Join('\n',
            [
                "policies:", "  j:", "    jwt:", "      issuer: https://idp.example.test", "      audiences: [orders-api]", "      jwks_file: jwks.json",
                .. lines,
                "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }",
                "routes:", "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [j] }",
            ]) + "\n");
            return ConfigLoader.LoadFile(path).Errors.Select(e => $"{e.Line}:{e.Column}: {e.Message}").ToArray();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Validate_FullAuthorizationBlock_NoErrors()
    {
        Assert.Empty(JwtErrors(
            "      required_scopes: [orders.read, orders.admin]",
            "      scopes_mode: any",
            "      required_roles: [admin]",
            "      roles_mode: all",
            "      roles_claim: groups",
            "      required_claims: { tenant: acme, email_verified: \"true\" }",
            "      forward_identity: { subject: x-auth-subject, client_id: x-auth-client-id }"));
    }

    [Fact]
    public void Validate_BadAuthorizationSettings_ReportPositions()
    {
        var errors = JwtErrors(
            "      scopes_mode: some",
            "      required_roles: []",
            "      roles_claim: exp",
            "      required_claims: { iss: x }");
        Assert.Equal(4, errors.Length);
        Assert.StartsWith("7:20: invalid scopes_mode 'some'", errors[0]);
        Assert.StartsWith("8:7: jwt policy 'j' has an empty 'required_roles' list", errors[1]);
        Assert.StartsWith("9:20: invalid roles_claim 'exp'", errors[2]);
        Assert.StartsWith("10:26: 'iss' cannot be a required claim", errors[3]);
    }
}
