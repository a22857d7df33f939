using System.Security.Cryptography;
using System.Text;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>
/// <c>roles_claim</c> as a dotted path into nested objects (<c>realm_access.roles</c>, Keycloak's shape). Payloads are
/// written by hand (HS256-signed) so the JSON shapes that must not match are exactly what the test says.
/// </summary>
public class JwtRolesPathTests
{
    private static readonly JwtTestKeys s_keys = JwtTestKeys.Shared;

    private static JwtFilter Filter(string rolesClaim, string[] roles, bool all = true) => new(new JwtOptions
    {
        PolicyName = "kc",
        Issuer = JwtTestKeys.Issuer,
        Audiences = [JwtTestKeys.Audience],
        RequiredRoles = roles,
        AllRoles = all,
        RolesClaim = rolesClaim,
        Keys = JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(s_keys.Jwks())),
    }, new JwtClock(JwtTestKeys.Now));

    /// <summary>A valid HS256 token whose payload is the registered claims followed by <paramref name="claims"/> (raw JSON members).</summary>
    internal static string Token(string claims)
    {
        long exp = JwtTestKeys.Now.AddMinutes(10).ToUnixTimeSeconds();
        string payload = $$"""{"iss":"{{JwtTestKeys.Issuer}}","aud":"{{JwtTestKeys.Audience}}","exp":{{exp}},"sub":"u1",{{claims}}}""";
        string input = $"{JwtTestKeys.B64("""{"alg":"HS256","kid":"hmac1"}"""u8)}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}";
        return $"{input}.{JwtTestKeys.B64(HMACSHA256.HashData(s_keys.Secret, Encoding.ASCII.GetBytes(input)))}";
    }

    private static JwtResult Check(JwtFilter filter, string claims) => filter.Validate(Encoding.ASCII.GetBytes(Token(claims)));

    private const string Keycloak =
        "\"realm_access\":{\"roles\":[\"offline_access\",\"admin\"]},\"resource_access\":{\"orders-api\":{\"roles\":[\"orders-editor\"]},\"account\":{\"roles\":[\"manage-account\"]}}";

    [Theory]
    [InlineData("realm_access.roles", "admin", true)]
    [InlineData("realm_access.roles", "orders-editor", false)]
    [InlineData("resource_access.orders-api.roles", "orders-editor", true)]
    [InlineData("resource_access.orders-api.roles", "manage-account", false)]
    [InlineData("resource_access.account.roles", "manage-account", true)]
    [InlineData("realm_access", "admin", false)]
    [InlineData("realm_access.roles.x", "admin", false)]
    [InlineData("roles", "admin", false)]
    public void Validate_KeycloakToken_RolesFoundAtPathOnly(string path, string role, bool valid)
    {
        Assert.Equal(valid ? JwtResult.Valid : JwtResult.InsufficientRole, Check(Filter(path, [role]), Keycloak));
    }

    [Fact]
    public void Validate_NestedSpaceSeparatedString_Matches()
    {
        Assert.Equal(JwtResult.Valid, Check(Filter("app.roles", ["a", "c"]), "\"app\":{\"other\":1,\"roles\":\"a b c\"}"));
    }

    [Fact]
    public void Validate_AllModeAcrossPath_NeedsEveryRole()
    {
        var filter = Filter("realm_access.roles", ["admin", "auditor"]);
        Assert.Equal(JwtResult.InsufficientRole, Check(filter, Keycloak));
        Assert.Equal(JwtResult.Valid, Check(Filter("realm_access.roles", ["admin", "auditor"], all: false), Keycloak));
    }

    [Theory]
    // The path passes through a non-object: nothing matches, and the rest of the payload is still read correctly.
    [InlineData("\"realm_access\":\"admin\"")]
    [InlineData("\"realm_access\":[\"admin\"]")]
    [InlineData("\"realm_access\":{\"roles\":{\"admin\":true}}")]
    [InlineData("\"realm_access\":null")]
    // A top-level claim whose name holds the dot is not the path.
    [InlineData("\"realm_access.roles\":[\"admin\"]")]
    public void Validate_PathThroughOtherShapes_InsufficientRole(string claims)
    {
        Assert.Equal(JwtResult.InsufficientRole, Check(Filter("realm_access.roles", ["admin"]), claims));
    }

    [Fact]
    public void Validate_NestedObjectBeforeRegisteredClaims_StillChecksThem()
    {
        // The walk runs on a copy of the reader: claims after the nested object are read as usual.
        long exp = JwtTestKeys.Now.AddMinutes(-10).ToUnixTimeSeconds();
        string payload = $$"""{"realm_access":{"x":{"y":[1,{"z":2}]},"roles":["admin"]},"iss":"{{JwtTestKeys.Issuer}}","aud":"{{JwtTestKeys.Audience}}","exp":{{exp}}}""";
        string input = $"{JwtTestKeys.B64("""{"alg":"HS256","kid":"hmac1"}"""u8)}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}";
        string token = $"{input}.{JwtTestKeys.B64(HMACSHA256.HashData(s_keys.Secret, Encoding.ASCII.GetBytes(input)))}";
        Assert.Equal(JwtResult.Expired, Filter("realm_access.roles", ["admin"]).Validate(Encoding.ASCII.GetBytes(token)));
    }

    [Fact]
    public void Validate_EscapedNamesAndDuplicateObjects_LastCopyOnly()
    {
        // JSON escapes in member names are names all the same; of a repeated object only the last copy counts
        // (RFC 7519 section 4), as for any JSON parser that keeps the lexically last member.
        const string claims = "\"realm\\u005faccess\":{\"r\\u006fles\":[\"admin\"]},\"realm_access\":{\"roles\":\"ops\"}";
        Assert.Equal(JwtResult.InsufficientRole, Check(Filter("realm_access.roles", ["admin", "ops"]), claims));
        Assert.Equal(JwtResult.InsufficientRole, Check(Filter("realm_access.roles", ["admin"]), claims));
        Assert.Equal(JwtResult.Valid, Check(Filter("realm_access.roles", ["ops"]), claims));
        Assert.Equal(JwtResult.Valid, Check(Filter("realm_access.roles", ["admin"]), "\"realm\\u005faccess\":{\"r\\u006fles\":[\"admin\"]}"));
    }

    [Fact]
    public void OnRequestHeaders_CachedNestedRolesToken_AllocatesNothing()
    {
        var filter = Filter("resource_access.orders-api.roles", ["orders-editor"]);
        var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {Token(Keycloak)}\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.OnRequestHeaders(context), iterations: 1000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over the loop (best of three rounds)");
    }

    [Fact]
    public void Verify_NestedRolesPath_AllocatesNothing()
    {
        // Full verification (no cache) of a token without sub/client_id: the nested walk itself allocates nothing.
        var filter = Filter("resource_access.orders-api.roles", ["orders-editor"]);
        long exp = JwtTestKeys.Now.AddMinutes(10).ToUnixTimeSeconds();
        string payload = $$"""{"iss":"{{JwtTestKeys.Issuer}}","aud":"{{JwtTestKeys.Audience}}","exp":{{exp}},{{Keycloak}}}""";
        string input = $"{JwtTestKeys.B64("""{"alg":"HS256","kid":"hmac1"}"""u8)}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}";
        byte[] token = Encoding.ASCII.GetBytes($"{input}.{JwtTestKeys.B64(HMACSHA256.HashData(s_keys.Secret, Encoding.ASCII.GetBytes(input)))}");
        long now = JwtTestKeys.Now.ToUnixTimeSeconds();
        Assert.Equal(JwtResult.Valid, filter.Verify(token, now, out _));
        Assert.Equal(JwtResult.Valid, filter.Verify(token, now, out _));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.Verify(token, now, out _), iterations: 1000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over 1000 verifications (best of three rounds)");
    }

    private static string[] Errors(string rolesClaim)
    {
        string dir = Directory.CreateTempSubdirectory("proxy-rolespath-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "jwks.json"), s_keys.Jwks());
            string path = Path.Combine(dir, "proxy.yaml");
            File.WriteAllText(path, string.Join('\n',
                "policies:", "  j:", "    jwt:", "      issuer: i", "      audiences: [a]", "      jwks_file: jwks.json",
                "      required_roles: [admin]", $"      roles_claim: {rolesClaim}",
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
    [InlineData("realm_access.roles")]
    [InlineData("resource_access.orders-api.roles")]
    [InlineData("a.b.c.d.e.f.g.h")]
    public void Validate_DottedPath_Accepted(string rolesClaim)
    {
        Assert.Empty(Errors(rolesClaim));
    }

    [Theory]
    [InlineData("realm_access..roles", "expected a claim name or a dotted path")]
    [InlineData("\".roles\"", "expected a claim name or a dotted path")]
    [InlineData("realm_access.", "expected a claim name or a dotted path")]
    [InlineData("a.b.c.d.e.f.g.h.i", "at most 8")]
    [InlineData("scope.roles", "name a claim other than")]
    [InlineData("aud.x", "name a claim other than")]
    public void Validate_BadPath_ReportsValuePosition(string rolesClaim, string message)
    {
        string error = Assert.Single(Errors(rolesClaim));
        Assert.StartsWith("8:20: invalid roles_claim", error);
        Assert.Contains(message, error);
    }
}
