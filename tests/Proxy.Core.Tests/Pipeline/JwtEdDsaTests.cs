using System.Security.Cryptography;
using System.Text;
using NSec.Cryptography;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>
/// EdDSA (Ed25519, RFC 8037) in the <c>jwt</c> policy: tokens signed at test time with NSec (libsodium's signer, not
/// our verifier), tampering, algorithm confusion both ways, the JWKS checks and the allocation of a verification.
/// </summary>
public sealed class JwtEdDsaTests : IDisposable
{
    private static readonly JwtTestKeys s_keys = JwtTestKeys.Shared;

    private readonly Key _ed = Key.Create(SignatureAlgorithm.Ed25519);
    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-eddsa-").FullName;

    public void Dispose()
    {
        _ed.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private string X => JwtTestKeys.B64(_ed.PublicKey.Export(KeyBlobFormat.RawPublicKey));

    /// <summary>The shared RSA/EC/HMAC keys plus an Ed25519 key "ed1".</summary>
    private string Jwks(string extra = "")
    {
        string shared = s_keys.Jwks();
        int end = shared.LastIndexOf(']');
        return shared[..end] + $$""", { "kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": "{{X}}" }{{extra}} """ + shared[end..];
    }

    private JwtFilter Filter(string? jwks = null, TimeProvider? clock = null) => new(new JwtOptions
    {
        PolicyName = "jwt-ed",
        Issuer = JwtTestKeys.Issuer,
        Audiences = [JwtTestKeys.Audience],
        RequiredScopes = ["orders.read"],
        Keys = JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(jwks ?? Jwks())),
    }, clock ?? new JwtClock(JwtTestKeys.Now));

    private string Sign(string header, string? payload = null, Key? key = null)
    {
        string input = $"{JwtTestKeys.B64(Encoding.UTF8.GetBytes(header))}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload ?? JwtTestKeys.ValidPayload()))}";
        byte[] signature = SignatureAlgorithm.Ed25519.Sign(key ?? _ed, Encoding.ASCII.GetBytes(input));
        return $"{input}.{JwtTestKeys.B64(signature)}";
    }

    private static JwtResult Check(JwtFilter filter, string token) => filter.Validate(Encoding.ASCII.GetBytes(token));

    [Theory]
    [InlineData("""{"alg":"EdDSA","typ":"JWT","kid":"ed1"}""")]
    [InlineData("""{"alg":"Ed25519","kid":"ed1"}""")]
    public void Validate_EdDsaSignedToken_IsValid(string header)
    {
        Assert.Equal(JwtResult.Valid, Check(Filter(), Sign(header)));
    }

    [Fact]
    public void Validate_EdDsaNoKidSingleKey_IsValid()
    {
        string jwks = $$"""{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","x":"{{X}}"}]}""";
        Assert.Equal(JwtResult.Valid, Check(Filter(jwks), Sign("""{"alg":"EdDSA"}""")));
    }

    [Fact]
    public void Validate_EdDsaTamperedPayload_ReturnsInvalid()
    {
        string[] parts = Sign("""{"alg":"EdDSA","kid":"ed1"}""").Split('.');
        string payload = JwtTestKeys.ValidPayload().Replace("orders.read", "orders.admin orders.read");
        Assert.Equal(JwtResult.Invalid, Check(Filter(), $"{parts[0]}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}.{parts[2]}"));
    }

    [Fact]
    public void Validate_EdDsaFlippedSignatureBitOrWrongLength_ReturnsInvalid()
    {
        string[] parts = Sign("""{"alg":"EdDSA","kid":"ed1"}""").Split('.');
        byte[] signature = System.Buffers.Text.Base64Url.DecodeFromChars(parts[2]);
        signature[5] ^= 1;
        Assert.Equal(JwtResult.Invalid, Check(Filter(), $"{parts[0]}.{parts[1]}.{JwtTestKeys.B64(signature)}"));
        Assert.Equal(JwtResult.Invalid, Check(Filter(), $"{parts[0]}.{parts[1]}.{JwtTestKeys.B64(signature.AsSpan(0, 63))}"));
    }

    [Fact]
    public void Validate_EdDsaSignedByOtherKeySameKid_ReturnsInvalid()
    {
        using var other = Key.Create(SignatureAlgorithm.Ed25519);
        Assert.Equal(JwtResult.Invalid, Check(Filter(), Sign("""{"alg":"EdDSA","kid":"ed1"}""", key: other)));
    }

    [Fact]
    public void Validate_EdDsaHeaderWithRsaOrHmacKey_IsRefused()
    {
        // Algorithm confusion: an EdDSA header naming a key of another family is refused before any signature check.
        Assert.Equal(JwtResult.Invalid, Check(Filter(), Sign("""{"alg":"EdDSA","kid":"rsa1"}""")));
        Assert.Equal(JwtResult.Invalid, Check(Filter(), Sign("""{"alg":"EdDSA","kid":"hmac1"}""")));
    }

    [Theory]
    [InlineData("RS256")]
    [InlineData("ES256")]
    [InlineData("HS256")]
    public void Validate_OtherAlgorithmWithOkpKey_IsRefused(string algorithm)
    {
        // The public Ed25519 key is known to everyone: as an HMAC secret it would let anyone forge tokens.
        string header = $$"""{"alg":"{{algorithm}}","kid":"ed1"}""";
        string input = $"{JwtTestKeys.B64(Encoding.UTF8.GetBytes(header))}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(JwtTestKeys.ValidPayload()))}";
        byte[] mac = HMACSHA256.HashData(_ed.PublicKey.Export(KeyBlobFormat.RawPublicKey), Encoding.ASCII.GetBytes(input));
        Assert.Equal(JwtResult.Invalid, Check(Filter(), $"{input}.{JwtTestKeys.B64(mac)}"));
        Assert.Equal(JwtResult.Invalid, Check(Filter(), Sign(header)));
    }

    [Fact]
    public void Validate_EdDsaTokenAgainstKeyWithOtherAlg_IsRefused()
    {
        // A key pinned to EdDSA takes nothing else, and an RS256-pinned key takes no EdDSA token.
        string jwks = $$"""{"keys":[{"kty":"OKP","kid":"ed1","crv":"Ed25519","alg":"EdDSA","x":"{{X}}"}]}""";
        Assert.Equal(JwtResult.Valid, Check(Filter(jwks), Sign("""{"alg":"EdDSA","kid":"ed1"}""")));
        Assert.Equal(JwtResult.Invalid, Check(Filter(jwks), Sign("""{"alg":"HS256","kid":"ed1"}""")));
    }

    [Fact]
    public void Verify_EdDsaFullCheck_AllocatesNothing()
    {
        // No "sub" or "client_id" in the payload: those are the only bytes a first sight copies (for the cache).
        var filter = Filter();
        byte[] token = Encoding.ASCII.GetBytes(Sign("""{"alg":"EdDSA","kid":"ed1"}"""));
        long now = JwtTestKeys.Now.ToUnixTimeSeconds();
        Assert.Equal(JwtResult.Valid, filter.Verify(token, now, out _));
        Assert.Equal(JwtResult.Valid, filter.Verify(token, now, out _));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.Verify(token, now, out _), iterations: 1000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over 1000 Ed25519 verifications (best of three rounds)");
        // The two checks above, a warming round and three measured rounds: every call verified the signature.
        Assert.Equal(2 + 4 * 1000, filter.VerificationCount);
    }

    [Fact]
    public void OnRequestHeaders_CachedEdDsaToken_AllocatesNothingAndVerifiesOnce()
    {
        var filter = Filter();
        var context = RateLimitTests.Context($"GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {Sign("""{"alg":"EdDSA","kid":"ed1"}""")}\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.OnRequestHeaders(context), iterations: 1000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over the loop (best of three rounds)");
        Assert.Equal(1, filter.VerificationCount);
    }

    [Theory]
    [InlineData("""{"kty":"OKP","crv":"Ed448","x":"AQAB"}""", "curve 'Ed448' is not supported (EdDSA keys must be Ed25519)")]
    [InlineData("""{"kty":"OKP","crv":"X25519","x":"AQAB"}""", "curve 'X25519' is for key agreement")]
    [InlineData("""{"kty":"OKP","crv":"P-256","x":"AQAB"}""", "unsupported curve 'P-256'")]
    [InlineData("""{"kty":"OKP","x":"AQAB"}""", "OKP key without \"crv\"")]
    [InlineData("""{"kty":"OKP","crv":"Ed25519","x":"AQAB"}""", "\"x\" must be a 32-byte Ed25519 public key")]
    [InlineData("""{"kty":"OKP","crv":"Ed25519"}""", "missing \"x\"")]
    [InlineData("""{"kty":"OKP","crv":"Ed25519","alg":"RS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}""", "alg 'RS256' does not fit kty 'OKP'")]
    [InlineData("""{"kty":"RSA","alg":"EdDSA","n":"AQAB","e":"AQAB"}""", "at least 2048")]
    [InlineData("""{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}""", "carries a private part")]
    public void Parse_BadOkpKey_ThrowsWithReason(string key, string message)
    {
        var e = Assert.Throws<FormatException>(() => JsonWebKeySet.Parse(Encoding.UTF8.GetBytes($$"""{"keys":[{{key}}]}""")));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Parse_Rfc8037ExampleKey_IsAnEdDsaKey()
    {
        // RFC 8037 appendix A.2: the example public key.
        var keys = JsonWebKeySet.Parse("""{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"""u8);
        Assert.Equal(JwkKeyType.Okp, Assert.Single(keys).KeyType);
        Assert.True(keys[0].Accepts(JwsAlgorithm.EdDSA));
        Assert.False(keys[0].Accepts(JwsAlgorithm.HS256));
        Assert.False(keys[0].Accepts(JwsAlgorithm.ES256));
    }

    [Fact]
    public void Verify_Rfc8037ExampleToken_IsValidSignature()
    {
        // RFC 8037 appendix A.4: the example JWS (payload "Example of Ed25519 signing", no claims), so the
        // signature passes and the claims check then finds no JSON object: Malformed, not Invalid.
        var filter = new JwtFilter(new JwtOptions
        {
            PolicyName = "rfc",
            Issuer = "i",
            Audiences = ["a"],
            Keys = JsonWebKeySet.Parse("""{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"""u8),
        });
        string token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        Assert.Equal(JwtResult.Malformed, filter.Verify(Encoding.ASCII.GetBytes(token), 0, out _));
        string tampered = token[..^3] + (token[^3] == 'A' ? "B" : "A") + token[^2..];
        Assert.Equal(JwtResult.Invalid, filter.Verify(Encoding.ASCII.GetBytes(tampered), 0, out _));
    }

    [Fact]
    public void Load_JwksFileWithOkpKey_CompilesAndVerifiesEdDsa()
    {
        File.WriteAllText(Path.Combine(_dir, "jwks.json"), Jwks());
        string path = Path.Combine(_dir, "proxy.yaml");
        File.WriteAllText(path, string.Join('\n',
            "policies:", "  j:", "    jwt:", $"      issuer: {JwtTestKeys.Issuer}", $"      audiences: [{JwtTestKeys.Audience}]", "      jwks_file: jwks.json",
            "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:", "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [j] }") + "\n");
        var result = ConfigLoader.LoadFile(path);
        Assert.True(result.Success, string.Join("\n", result.Errors));
        var filter = Assert.IsType<JwtFilter>(Assert.Single(result.Snapshot!.Policies).Value);
        // A filter built from a file checks "exp" against the real clock, not the fixed test time of ValidPayload.
        long exp = DateTimeOffset.UtcNow.AddMinutes(10).ToUnixTimeSeconds();
        string payload = $$"""{"iss":"{{JwtTestKeys.Issuer}}","aud":"{{JwtTestKeys.Audience}}","exp":{{exp}}}""";
        Assert.Equal(JwtResult.Valid, filter.Validate(Encoding.ASCII.GetBytes(Sign("""{"alg":"EdDSA","kid":"ed1"}""", payload))));
    }

    [Fact]
    public void Validate_JwksFileWithEd448Key_ReportsFileLineColumn()
    {
        File.WriteAllText(Path.Combine(_dir, "jwks.json"), """{"keys":[{"kty":"OKP","kid":"e448","crv":"Ed448","x":"AQAB"}]}""");
        string path = Path.Combine(_dir, "proxy.yaml");
        File.WriteAllText(path, string.Join('\n',
            "policies:", "  j:", "    jwt:", "      issuer: i", "      audiences: [a]", "      jwks_file: jwks.json",
            "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:", "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [j] }") + "\n");
        var error = Assert.Single(ConfigLoader.LoadFile(path).Errors);
        Assert.Equal("proxy.yaml:6:18: jwks_file 'jwks.json': JWKS key 'e448': curve 'Ed448' is not supported (EdDSA keys must be Ed25519)",
            $"{Path.GetFileName(error.File)}:{error.Line}:{error.Column}: {error.Message}");
    }
}
