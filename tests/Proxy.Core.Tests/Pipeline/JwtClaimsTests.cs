using System.Security.Cryptography;
using System.Text;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>
/// How the jwt policy reads claims it is configured to check: duplicate names (RFC 7519 section 4: only the lexically
/// last copy counts), required_claims as dotted paths, and a required claim that is also the token's client id.
/// Payloads are written by hand (HS256-signed, <see cref="JwtRolesPathTests.Token"/>): a JWT library would not write
/// a name twice.
/// </summary>
public class JwtClaimsTests
{
    private static readonly JwtTestKeys s_keys = JwtTestKeys.Shared;

    private static JwtFilter Filter(string[]? scopes = null, string[]? roles = null, string rolesClaim = "roles",
        KeyValuePair<string, string>[]? claims = null, IdentityForwardingOptions? forward = null) => new(new JwtOptions
        {
            PolicyName = "j",
            Issuer = JwtTestKeys.Issuer,
            Audiences = [JwtTestKeys.Audience],
            RequiredScopes = scopes ?? [],
            RequiredRoles = roles ?? [],
            RolesClaim = rolesClaim,
            RequiredClaims = claims ?? [],
            ForwardIdentity = forward,
            Keys = JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(s_keys.Jwks())),
        }, new JwtClock(JwtTestKeys.Now));

    private static JwtResult Check(JwtFilter filter, string claims) => filter.Validate(Encoding.ASCII.GetBytes(JwtRolesPathTests.Token(claims)));

    [Theory]
    // The registered claims come first in the payload ("aud":"orders-api"); a later copy replaces them.
    [InlineData("\"aud\":[\"other-api\"]", "WrongAudience")]
    [InlineData("\"aud\":[\"other-api\"],\"aud\":[\"orders-api\"]", "Valid")]
    [InlineData("\"scope\":\"read\",\"scope\":\"none\"", "InsufficientScope")]
    [InlineData("\"scope\":\"none\",\"scope\":\"read\"", "Valid")]
    [InlineData("\"scp\":[\"read\"],\"scp\":[\"none\"]", "InsufficientScope")]
    [InlineData("\"scp\":\"read\",\"scp\":7", "InsufficientScope")]
    // Not duplicates: "scope" and "scp" are two issuers' spellings, read as two claims (each last-wins on its own).
    [InlineData("\"scope\":\"none\",\"scp\":[\"read\"]", "Valid")]
    [InlineData("\"roles\":[\"admin\"],\"roles\":[\"user\"]", "InsufficientRole")]
    [InlineData("\"roles\":[\"user\"],\"roles\":\"admin\"", "Valid")]
    [InlineData("\"tenant\":\"acme\",\"tenant\":\"evil\"", "ClaimMismatch")]
    [InlineData("\"tenant\":[\"acme\"],\"tenant\":null", "ClaimMismatch")]
    [InlineData("\"tenant\":\"evil\",\"tenant\":\"acme\"", "Valid")]
    public void Validate_DuplicateClaimNames_OnlyLastCopyCounts(string claims, string expected)
    {
        var filter = Filter(
            scopes: claims.Contains("\"scope\"") || claims.Contains("\"scp\"") ? ["read"] : null,
            roles: claims.Contains("\"roles\"") ? ["admin"] : null,
            claims: claims.Contains("\"tenant\"") ? [new("tenant", "acme")] : null);
        Assert.Equal(Enum.Parse<JwtResult>(expected), Check(filter, claims));
    }

    [Theory]
    [InlineData("\"org\":{\"tenant\":\"acme\"}", "Valid")]
    [InlineData("\"org\":{\"tenant\":[\"other\",\"acme\"]}", "Valid")]
    [InlineData("\"org\":{\"x\":{\"tenant\":\"evil\"},\"tenant\":\"acme\"}", "Valid")]
    // A top-level claim whose name holds the dot is not the path (as for roles_claim).
    [InlineData("\"org.tenant\":\"acme\"", "ClaimMismatch")]
    [InlineData("\"org\":\"acme\"", "ClaimMismatch")]
    [InlineData("\"org\":{\"tenant\":{\"acme\":true}}", "ClaimMismatch")]
    [InlineData("\"tenant\":\"acme\"", "ClaimMismatch")]
    // The last copy of each level, as a JSON parser keeping the last member would build the object.
    [InlineData("\"org\":{\"tenant\":\"acme\"},\"org\":{\"name\":\"x\"}", "ClaimMismatch")]
    [InlineData("\"org\":{\"tenant\":\"acme\",\"tenant\":\"evil\"}", "ClaimMismatch")]
    public void Validate_RequiredClaimDottedName_IsPathIntoNestedObjects(string claims, string expected)
    {
        Assert.Equal(Enum.Parse<JwtResult>(expected), Check(Filter(claims: [new("org.tenant", "acme")]), claims));
    }

    [Fact]
    public void Validate_RequiredClaims_EachMatchedAgainstItsOwnValue()
    {
        // Two claims, one present: the tenant array holding the group's expected value does not satisfy the group.
        var filter = Filter(claims: [new("tenant", "acme"), new("group", "admin")]);
        Assert.Equal(JwtResult.ClaimMismatch, Check(filter, "\"tenant\":[\"acme\",\"admin\"]"));
        Assert.Equal(JwtResult.Valid, Check(filter, "\"group\":\"admin\",\"tenant\":\"acme\""));
    }

    [Theory]
    [InlineData("client_id")]
    [InlineData("azp")]
    public void OnRequestHeaders_RequiredClaimIsClientId_StillSetsAndForwardsClientId(string name)
    {
        var filter = Filter(claims: [new(name, "web")], forward: new IdentityForwardingOptions { ClientId = "x-client-id" });
        string token = JwtRolesPathTests.Token($"\"{name}\":\"web\"");
        var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.Equal("web", Encoding.UTF8.GetString(context.Identity.ClientId));
        Assert.Equal("x-client-id: web\r\n", Encoding.ASCII.GetString(context.UpstreamAddedFields));
        Assert.Equal(JwtResult.ClaimMismatch, Check(filter, $"\"{name}\":\"other\""));
    }

    [Fact]
    public void Verify_RequiredClaimPaths_AllocatesNothing()
    {
        var filter = Filter(claims: [new("org.tenant", "acme"), new("org.tier", "gold")], roles: ["admin"], rolesClaim: "org.roles");
        // Full verification (no cache) of a token without sub/client_id, whose copies are the only allocations.
        long exp = JwtTestKeys.Now.AddMinutes(10).ToUnixTimeSeconds();
        string payload = $$$"""{"iss":"{{{JwtTestKeys.Issuer}}}","aud":"{{{JwtTestKeys.Audience}}}","exp":{{{exp}}},"org":{"roles":["x"],"tenant":"x"},"org":{"roles":["admin"],"tenant":["acme"],"tier":"gold"}}""";
        string input = $"{JwtTestKeys.B64("""{"alg":"HS256","kid":"hmac1"}"""u8)}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}";
        byte[] token = Encoding.ASCII.GetBytes($"{input}.{JwtTestKeys.B64(HMACSHA256.HashData(s_keys.Secret, Encoding.ASCII.GetBytes(input)))}");
        long now = JwtTestKeys.Now.ToUnixTimeSeconds();
        Assert.Equal(JwtResult.Valid, filter.Verify(token, now, out _));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.Verify(token, now, out _), iterations: 1000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over 1000 verifications (best of three rounds)");
    }

    private static string[] Errors(string requiredClaims)
    {
        string dir = Directory.CreateTempSubdirectory("proxy-claims-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "jwks.json"), s_keys.Jwks());
            string path = Path.Combine(dir, "proxy.yaml");
            File.WriteAllText(path, string.Join('\n',
                "policies:", "  j:", "    jwt:", "      issuer: i", "      audiences: [a]", "      jwks_file: jwks.json",
                $"      required_claims: {{ {requiredClaims}: x }}",
                "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }",
                "routes:", "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [j] }") + "\n");
            return ConfigLoader.LoadFile(path).Errors.Select(e => $"{e.Line}:{e.Column}: {e.Message}").ToArray();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Theory]
    [InlineData("\"org..tenant\"", "expected a claim name or a dotted path")]
    [InlineData("\"org.\"", "expected a claim name or a dotted path")]
    [InlineData("a.b.c.d.e.f.g.h.i", "at most 8")]
    [InlineData("aud.x", "cannot be a required claim")]
    public void Validate_BadRequiredClaimPath_ReportsNamePosition(string name, string message)
    {
        string error = Assert.Single(Errors(name));
        Assert.StartsWith("7:26: ", error);
        Assert.Contains(message, error);
    }
}
