using Proxy.Configuration;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The <c>jwt</c> policy's config: keys, positions of errors, and the JWKS file relative to the config file.</summary>
public sealed class JwtConfigTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-jwt-").FullName;

    public JwtConfigTests()
    {
        Directory.CreateDirectory(Path.Combine(_dir, "keys"));
        File.WriteAllText(Path.Combine(_dir, "keys", "jwks.json"), JwtTestKeys.Shared.Jwks());
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] s_tail =
    [
        "listeners:",
        "  - { name: public, address: \"127.0.0.1:8080\" }",
        "routes:",
        "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [jwt-internal] }",
    ];

    /// <summary>Writes the config into the temp directory and loads it by path, as <c>proxy validate</c> does.</summary>
    private ConfigLoadResult Load(params string[] jwtLines)
    {
        string path = Path.Combine(_dir, "proxy.yaml");
        File.WriteAllText(path, string.Join('\n', ["policies:", "  jwt-internal:", "    jwt:", .. jwtLines, .. s_tail]) + "\n");
        return ConfigLoader.LoadFile(path);
    }

    private string[] Errors(params string[] jwtLines)
        => Load(jwtLines).Errors.Select(e => $"{e.Line}:{e.Column}: {e.Message}").ToArray();

    [Fact]
    public void Load_ContractExample_CompilesJwtFilter()
    {
        var result = Load(
            "      issuer: https://idp.example.test",
            "      audiences: [orders-api]",
            "      jwks_file: keys/jwks.json",
            "      required_scopes: [orders.read]",
            "      clock_skew: 30s");
        Assert.Empty(result.Errors);
        var filter = Assert.IsType<JwtFilter>(result.Snapshot!.Routes.InMatchOrder.Single(r => r.Id == "r").Filters(0).RequestHeaders[0]);
        Assert.Equal("https://idp.example.test", filter.Options.Issuer);
        Assert.Equal(["orders-api"], filter.Options.Audiences);
        Assert.Equal(["orders.read"], filter.Options.RequiredScopes);
        Assert.Equal(TimeSpan.FromSeconds(30), filter.Options.ClockSkew);
        Assert.Equal(5, filter.Options.Keys.Count);
    }

    [Fact]
    public void Validate_MissingIssuerAudiencesAndJwks_ReportsEachAtKind()
    {
        var errors = Errors("      required_scopes: [orders.read]");
        Assert.Equal(3, errors.Length);
        Assert.All(errors, e => Assert.StartsWith("3:5: jwt policy 'jwt-internal' is missing required key", e));
        Assert.Contains(errors, e => e.Contains("'issuer'"));
        Assert.Contains(errors, e => e.Contains("'audiences'"));
        Assert.Contains(errors, e => e.Contains("'jwks_file'"));
    }

    [Fact]
    public void Validate_EmptyAudiences_ReportsKeyPosition()
    {
        Assert.Equal(["6:7: jwt policy 'jwt-internal' has an empty 'audiences' list: no token could pass"],
            Errors("      issuer: i", "      jwks_file: keys/jwks.json", "      audiences: []"));
    }

    [Theory]
    [InlineData("30")]
    [InlineData("soon")]
    [InlineData("2h")]
    public void Validate_BadClockSkew_ReportsValuePosition(string skew)
    {
        var errors = Errors("      issuer: i", "      audiences: [a]", "      jwks_file: keys/jwks.json", $"      clock_skew: {skew}");
        Assert.Equal([$"7:19: invalid clock_skew '{skew}': expected a duration from 0s to 1h (e.g. 30s)"], errors);
    }

    [Fact]
    public void Validate_JwksUrlMalformedOrBesideFile_Reported()
    {
        Assert.Empty(Errors("      issuer: i", "      audiences: [a]", "      jwks_url: https://idp.example.test/jwks", "      jwks_refresh: 10m", "      jwks_min_refetch: 1m"));
        var errors = Errors("      issuer: i", "      audiences: [a]", "      jwks_url: ftp://idp.example.test/jwks", "      jwks_refresh: 0s");
        Assert.Equal(["6:17: invalid jwks_url 'ftp://idp.example.test/jwks': expected an absolute http:// or https:// URL",
            "7:21: invalid jwks_refresh '0s': expected a duration from 1s to 24h (e.g. 5m)"], errors);
        Assert.Equal(["6:18: jwt policy 'jwt-internal' has both 'jwks_file' and 'jwks_url'; choose one"],
            Errors("      issuer: i", "      audiences: [a]", "      jwks_file: keys/jwks.json", "      jwks_url: http://127.0.0.1:1/jwks"));
    }

    [Fact]
    public void Validate_UnreadableJwks_ReportsValuePosition()
    {
        var errors = Errors("      issuer: i", "      audiences: [a]", "      jwks_file: keys/missing.json");
        Assert.Single(errors);
        Assert.StartsWith("6:18: cannot read jwks_file 'keys/missing.json'", errors[0]);
    }

    [Theory]
    [InlineData("not json", "malformed JWKS")]
    [InlineData("[]", "expected an object with a \"keys\" array")]
    [InlineData("{\"keys\":[]}", "the JWKS holds no signature keys")]
    [InlineData("{\"keys\":[{\"kid\":\"a\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", "JWKS key 'a' has no \"kty\"")]
    [InlineData("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed448\",\"x\":\"AQAB\"}]}", "curve 'Ed448' is not supported (EdDSA keys must be Ed25519)")]
    [InlineData("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AQAB\"}]}", "must be a 32-byte Ed25519 public key")]
    [InlineData("{\"keys\":[{\"kty\":\"DSA\",\"x\":\"AQAB\"}]}", "unsupported kty 'DSA' (expected RSA, EC, OKP or oct)")]
    [InlineData("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", "at least 2048 are required")]
    [InlineData("{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}]}", "HMAC keys need at least 32")]
    [InlineData("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AQAB\",\"y\":\"AQAB\"}]}", "coordinates must be 32 bytes")]
    [InlineData("{\"keys\":[{\"kty\":\"oct\",\"alg\":\"RS256\",\"k\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}", "alg 'RS256' does not fit kty 'oct'")]
    [InlineData("{\"keys\":[{\"kty\":\"oct\",\"alg\":\"none\",\"k\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}", "unsupported alg 'none'")]
    public void Validate_BadJwks_ReportsValuePosition(string jwks, string message)
    {
        File.WriteAllText(Path.Combine(_dir, "keys", "bad.json"), jwks);
        var errors = Errors("      issuer: i", "      audiences: [a]", "      jwks_file: keys/bad.json");
        Assert.Single(errors);
        Assert.StartsWith("6:18: jwks_file 'keys/bad.json': ", errors[0]);
        Assert.Contains(message, errors[0]);
    }

    [Fact]
    public void Validate_UnknownKeyAndBadScope_Reported()
    {
        var errors = Errors("      issuer: i", "      audiences: [a]", "      jwks_file: keys/jwks.json", "      issuers: x", "      required_scopes: [\"a b\"]");
        Assert.Equal(2, errors.Length);
        Assert.Equal("7:7: unknown key 'issuers' in jwt; did you mean 'issuer'?", errors[0]);
        Assert.StartsWith("8:25: invalid scope 'a b'", errors[1]);
    }
}
