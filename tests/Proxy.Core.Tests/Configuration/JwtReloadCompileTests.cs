using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using Proxy.Configuration;
using Proxy.Model;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Configuration;

/// <summary>
/// Which reloads keep a <c>jwt</c> policy's verified-token cache (<see cref="JwtFilter.SameCache"/>): those that leave
/// the key source and every setting a verdict depends on as they were.
/// </summary>
public sealed class JwtReloadCompileTests : IDisposable
{
    private const string OneKey = """{"keys":[{"kty":"oct","kid":"h1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0"}]}""";

    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-jwt-reload-").FullName;

    public JwtReloadCompileTests() => File.WriteAllText(Jwks, OneKey);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Jwks => Path.Combine(_dir, "jwks.json");

    /// <summary>A jwt policy reading <see cref="Jwks"/> (unless <paramref name="settings"/> names a source), plus <paramref name="settings"/>.</summary>
    private string WithJwt(string settings = "", string routeId = "r") => $$"""
        policies:
          token:
            jwt:
              issuer: https://idp.example.test
              audiences: [orders-api, billing-api]
              {{(settings.Contains("jwks_url", StringComparison.Ordinal) ? "" : $"jwks_file: \"{Jwks}\"")}}
              {{settings}}
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: {{routeId}}, match: { path: / }, respond: { status: 200 }, policies: [token] }
        """;

    private static JwtFilter Token(ProxySnapshot snapshot) => (JwtFilter)snapshot.Policies.Single(p => p.Key == "token").Value;

    private JwtFilter Reload(string before, string after, Action? between = null)
    {
        var first = ConfigLoader.LoadText(WithJwt(before), "a.yaml").Snapshot!;
        between?.Invoke();
        var result = ConfigLoader.LoadText(WithJwt(after, routeId: "other"), "a.yaml", first);
        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.NotSame(Token(first), Token(result.Snapshot!));
        return Token(result.Snapshot!);
    }

    [Theory]
    [InlineData("", "")]
    [InlineData("required_scopes: [a, b]", "forward_identity: { subject: x-auth-subject }\n      required_scopes: [a, b]")]
    [InlineData("jwks_url: http://127.0.0.1:1/jwks.json", "jwks_url: http://127.0.0.1:1/jwks.json")]
    public void Compile_SameJwtVerdicts_TakesOverVerifiedTokenCache(string before, string after)
        => Assert.True(Reload(before, after).KeptCache);

    [Fact]
    public void Compile_JwksFileRewrittenWithTheSameContent_TakesOverVerifiedTokenCache()
        => Assert.True(Reload("", "", between: () => File.WriteAllText(Jwks, OneKey)).KeptCache);

    /// <summary>An HS256 token for <see cref="OneKey"/>, valid for ten minutes from now (the loader's clock is the system's).</summary>
    private static byte[] HmacToken()
    {
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string input = Base64Url.EncodeToString("{\"alg\":\"HS256\",\"kid\":\"h1\"}"u8) + "."
            + Base64Url.EncodeToString(Encoding.UTF8.GetBytes($"{{\"iss\":\"https://idp.example.test\",\"aud\":\"orders-api\",\"exp\":{now + 600}}}"));
        byte[] mac = HMACSHA256.HashData(Base64Url.DecodeFromChars("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0"), Encoding.ASCII.GetBytes(input));
        return Encoding.ASCII.GetBytes(input + "." + Base64Url.EncodeToString(mac));
    }

    /// <summary>
    /// A cache entry names the key set it was verified against, so the filter a reload builds must keep the running
    /// filter's key array along with its cache, or every kept entry would miss. The signature check count goes on
    /// across the reload (it is exported as a counter): the token verified before the reload costs none after it.
    /// </summary>
    [Fact]
    public void Compile_JwksFileRewrittenWithTheSameContent_KeptCacheHitsWithoutASignatureCheck()
    {
        var first = ConfigLoader.LoadText(WithJwt(), "a.yaml").Snapshot!;
        byte[] token = HmacToken();
        Assert.Equal(JwtResult.Valid, Token(first).Validate(token));
        Assert.Equal(1, Token(first).VerificationCount);

        File.WriteAllText(Jwks, OneKey);
        var result = ConfigLoader.LoadText(WithJwt(routeId: "other"), "a.yaml", first);
        Assert.True(result.Success, string.Join("\n", result.Errors));
        JwtFilter next = Token(result.Snapshot!);
        Assert.True(next.KeptCache);
        Assert.Equal(JwtResult.Valid, next.Validate(token));
        Assert.Equal(1, next.VerificationCount);

        // A changed clock skew starts an empty cache: the token is checked again, and the count goes on from 1.
        result = ConfigLoader.LoadText(WithJwt("clock_skew: 10s"), "a.yaml", result.Snapshot);
        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.False(Token(result.Snapshot!).KeptCache);
        Assert.Equal(JwtResult.Valid, Token(result.Snapshot!).Validate(token));
        Assert.Equal(2, Token(result.Snapshot!).VerificationCount);
    }

    [Fact]
    public void Compile_JwksFileContentChanged_StartsAnEmptyCache()
        => Assert.False(Reload("", "", between: () => File.WriteAllText(Jwks, OneKey.Replace("}]}", "},{\"kty\":\"oct\",\"kid\":\"h2\",\"k\":\"b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXI\"}]}", StringComparison.Ordinal))).KeptCache);

    [Theory]
    [InlineData("clock_skew: 10s")]
    [InlineData("required_scopes: [a]")]
    [InlineData("required_scopes: [a, b]\n      scopes_mode: any")]
    [InlineData("required_roles: [admin]")]
    [InlineData("required_roles: [admin, ops]\n      roles_mode: any")]
    [InlineData("roles_claim: realm_access.roles")]
    [InlineData("required_claims: { tenant: acme }")]
    [InlineData("jwks_url: http://127.0.0.1:1/jwks.json")]
    public void Compile_ChangedJwtVerdicts_StartsAnEmptyCache(string after)
        => Assert.False(Reload("", after).KeptCache);

    [Theory]
    [InlineData("required_scopes: [a, b]", "required_scopes: [a, b]\n      scopes_mode: any")]
    [InlineData("required_claims: { tenant: acme }", "required_claims: { tenant: other }")]
    [InlineData("jwks_url: http://127.0.0.1:1/jwks.json", "jwks_url: http://127.0.0.1:1/jwks.json\n      jwks_refresh: 10m")]
    public void Compile_ChangedJwtSetting_StartsAnEmptyCache(string before, string after)
        => Assert.False(Reload(before, after).KeptCache);

    [Fact]
    public void Compile_IssuerOrAudiencesChanged_StartsAnEmptyCache()
    {
        var first = ConfigLoader.LoadText(WithJwt(), "a.yaml").Snapshot!;
        foreach (string changed in new[] { WithJwt().Replace("idp.example.test", "idp2.example.test", StringComparison.Ordinal), WithJwt().Replace("[orders-api, billing-api]", "[billing-api, orders-api]", StringComparison.Ordinal) })
        {
            var result = ConfigLoader.LoadText(changed, "a.yaml", first);
            Assert.True(result.Success, string.Join("\n", result.Errors));
            Assert.False(Token(result.Snapshot!).KeptCache);
        }
    }
}
