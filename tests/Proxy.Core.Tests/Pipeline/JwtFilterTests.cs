using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.Tokens;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

public class JwtFilterTests
{
    private static readonly JwtTestKeys s_keys = JwtTestKeys.Shared;

    private static JwtFilter Filter(JwtClock? clock = null, string[]? scopes = null, string? jwks = null, TimeSpan? skew = null)
        => new(new JwtOptions
        {
            PolicyName = "jwt-internal",
            Issuer = JwtTestKeys.Issuer,
            Audiences = ["other-api", JwtTestKeys.Audience],
            RequiredScopes = scopes ?? ["orders.read"],
            ClockSkew = skew ?? TimeSpan.FromSeconds(30),
            Keys = Proxy.Pipeline.Filters.JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(jwks ?? s_keys.Jwks())),
        }, clock ?? new JwtClock(JwtTestKeys.Now));

    private static JwtResult Check(string token, JwtFilter? filter = null) => (filter ?? Filter()).Validate(Encoding.ASCII.GetBytes(token));

    [Theory]
    [InlineData("RS256")]
    [InlineData("RS384")]
    [InlineData("RS512")]
    [InlineData("PS256")]
    [InlineData("PS384")]
    [InlineData("PS512")]
    [InlineData("ES256")]
    [InlineData("ES384")]
    [InlineData("HS256")]
    [InlineData("HS384")]
    [InlineData("HS512")]
    public void Validate_TokenFromIdentityModel_IsValid(string algorithm)
    {
        Assert.Equal(JwtResult.Valid, Check(s_keys.Mint(algorithm)));
    }

    [Fact]
    public void Validate_ES512WithP521Key_IsValid()
    {
        using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP521);
        var q = ec.ExportParameters(false).Q;
        string jwks = $$"""{"keys":[{"kty":"EC","kid":"p521","crv":"P-521","x":"{{JwtTestKeys.B64(q.X)}}","y":"{{JwtTestKeys.B64(q.Y)}}"}]}""";
        string token = s_keys.Mint(credentials: new SigningCredentials(new ECDsaSecurityKey(ec) { KeyId = "p521" }, "ES512"));
        Assert.Equal(JwtResult.Valid, Check(token, Filter(jwks: jwks)));
    }

    [Fact]
    public void Validate_AudienceArrayContainingAccepted_IsValid()
    {
        Assert.Equal(JwtResult.Valid, Check(s_keys.Mint(audience: new[] { "billing", JwtTestKeys.Audience })));
    }

    [Fact]
    public void Validate_ScopesInScpArray_IsValid()
    {
        Assert.Equal(JwtResult.Valid, Check(s_keys.Mint(scope: null, scp: ["orders.write", "orders.read"]), Filter(scopes: ["orders.read", "orders.write"])));
    }

    [Fact]
    public void Validate_Expired_ReturnsExpired()
    {
        Assert.Equal(JwtResult.Expired, Check(s_keys.Mint(expiresIn: TimeSpan.FromMinutes(-5), notBeforeIn: TimeSpan.FromMinutes(-20))));
    }

    [Fact]
    public void Validate_ExpiredWithinClockSkew_IsValid()
    {
        string token = s_keys.Mint(expiresIn: TimeSpan.FromSeconds(-20), notBeforeIn: TimeSpan.FromMinutes(-20));
        Assert.Equal(JwtResult.Valid, Check(token));
        Assert.Equal(JwtResult.Expired, Check(token, Filter(skew: TimeSpan.Zero)));
    }

    [Fact]
    public void Validate_NotBeforeInFuture_ReturnsNotYetValid()
    {
        Assert.Equal(JwtResult.NotYetValid, Check(s_keys.Mint(notBeforeIn: TimeSpan.FromMinutes(5))));
    }

    [Fact]
    public void Validate_WrongIssuer_ReturnsWrongIssuer()
    {
        Assert.Equal(JwtResult.WrongIssuer, Check(s_keys.Mint(issuer: "https://evil.example.test")));
    }

    [Fact]
    public void Validate_WrongAudience_ReturnsWrongAudience()
    {
        Assert.Equal(JwtResult.WrongAudience, Check(s_keys.Mint(audience: "billing")));
        Assert.Equal(JwtResult.WrongAudience, Check(s_keys.Mint(audience: new[] { "billing", "hr" })));
    }

    [Fact]
    public void Validate_MissingScope_ReturnsInsufficientScope()
    {
        Assert.Equal(JwtResult.InsufficientScope, Check(s_keys.Mint(scope: "orders.write")));
        Assert.Equal(JwtResult.InsufficientScope, Check(s_keys.Mint(scope: "orders.readx orders")));
        Assert.Equal(JwtResult.InsufficientScope, Check(s_keys.Mint(scope: null)));
    }

    [Theory]
    [InlineData("RS256")]
    [InlineData("ES256")]
    [InlineData("HS256")]
    public void Validate_TamperedPayload_ReturnsInvalid(string algorithm)
    {
        string[] parts = s_keys.Mint(algorithm).Split('.');
        string payload = JwtTestKeys.ValidPayload().Replace("orders.read", "orders.admin orders.read");
        string token = $"{parts[0]}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}.{parts[2]}";
        Assert.Equal(JwtResult.Invalid, Check(token));
    }

    [Fact]
    public void Validate_BadSignatureBytes_ReturnsInvalid()
    {
        string[] parts = s_keys.Mint("RS256").Split('.');
        byte[] signature = Convert.FromBase64String(Base64(parts[2]));
        signature[10] ^= 1;
        Assert.Equal(JwtResult.Invalid, Check($"{parts[0]}.{parts[1]}.{JwtTestKeys.B64(signature)}"));
    }

    [Fact]
    public void Validate_AlgNone_IsRefused()
    {
        string unsigned = JwtTestKeys.Raw("""{"alg":"none","typ":"JWT"}""", JwtTestKeys.ValidPayload(), []);
        Assert.NotEqual(JwtResult.Valid, Check(unsigned));
        Assert.Equal(JwtResult.Invalid, Check(JwtTestKeys.Raw("""{"alg":"none"}""", JwtTestKeys.ValidPayload(), [1, 2, 3])));
        Assert.Equal(JwtResult.Invalid, Check(JwtTestKeys.Raw("""{"alg":"None","kid":"rsa1"}""", JwtTestKeys.ValidPayload(), [1, 2, 3])));
    }

    [Fact]
    public void Validate_UnknownAlgorithm_IsRefused()
    {
        Assert.Equal(JwtResult.Invalid, Check(JwtTestKeys.Raw("""{"alg":"RS1","kid":"rsa1"}""", JwtTestKeys.ValidPayload(), [1, 2, 3])));
        Assert.Equal(JwtResult.Invalid, Check(JwtTestKeys.Raw("""{"kid":"rsa1"}""", JwtTestKeys.ValidPayload(), [1, 2, 3])));
    }

    [Theory]
    [InlineData("rsa1")]
    [InlineData(null)]
    public void Validate_HS256SignedWithRsaPublicKey_IsRefused(string? kid)
    {
        // The classic algorithm-confusion forgery: HMAC keyed with the RSA public key, which an attacker knows.
        var rsaOnly = $$"""{"keys":[{"kty":"RSA","kid":"rsa1","n":"{{JwtTestKeys.B64(s_keys.Rsa.ExportParameters(false).Modulus!)}}","e":"AQAB"}]}""";
        string header = kid is null ? """{"alg":"HS256","typ":"JWT"}""" : $$"""{"alg":"HS256","kid":"{{kid}}"}""";
        string signingInput = $"{JwtTestKeys.B64(Encoding.UTF8.GetBytes(header))}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(JwtTestKeys.ValidPayload()))}";
        foreach (byte[] secret in new[] { s_keys.Rsa.ExportSubjectPublicKeyInfo(), Encoding.ASCII.GetBytes(s_keys.Rsa.ExportSubjectPublicKeyInfoPem()), s_keys.Rsa.ExportParameters(false).Modulus! })
        {
            byte[] mac = HMACSHA256.HashData(secret, Encoding.ASCII.GetBytes(signingInput));
            Assert.Equal(JwtResult.Invalid, Check($"{signingInput}.{JwtTestKeys.B64(mac)}", Filter(jwks: rsaOnly)));
        }
    }

    [Fact]
    public void Validate_RS256HeaderWithEcKey_IsRefused()
    {
        string[] parts = s_keys.Mint("ES256").Split('.');
        string header = JwtTestKeys.B64("""{"alg":"RS256","kid":"ec1"}"""u8);
        Assert.Equal(JwtResult.Invalid, Check($"{header}.{parts[1]}.{parts[2]}"));
    }

    [Fact]
    public void Validate_UnknownKid_ReturnsInvalid()
    {
        var credentials = new SigningCredentials(new RsaSecurityKey(s_keys.Rsa) { KeyId = "rotated-away" }, "RS256");
        Assert.Equal(JwtResult.Invalid, Check(s_keys.Mint(credentials: credentials)));
    }

    [Fact]
    public void Validate_NoKidWithSeveralKeys_ReturnsInvalid()
    {
        var credentials = new SigningCredentials(new RsaSecurityKey(s_keys.Rsa), "RS256");
        Assert.Equal(JwtResult.Invalid, Check(s_keys.Mint(credentials: credentials)));
    }

    [Fact]
    public void Validate_EncryptionKeyKid_ReturnsInvalid()
    {
        var credentials = new SigningCredentials(new RsaSecurityKey(s_keys.Rsa) { KeyId = "enc1" }, "RS256");
        Assert.Equal(JwtResult.Invalid, Check(s_keys.Mint(credentials: credentials)));
    }

    [Fact]
    public void Validate_OtherRsaKeySameKid_ReturnsInvalid()
    {
        using var other = RSA.Create(2048);
        var credentials = new SigningCredentials(new RsaSecurityKey(other) { KeyId = "rsa1" }, "RS256");
        Assert.Equal(JwtResult.Invalid, Check(s_keys.Mint(credentials: credentials)));
    }

    /// <summary>
    /// A correctly signed token whose claim escapes a lone UTF-16 surrogate ("\ud800") is not text: malformed (401),
    /// where before Utf8JsonReader's InvalidOperationException escaped the filter (500 filter_failed, a stack trace).
    /// </summary>
    [Theory]
    [InlineData("sub")]
    [InlineData("client_id")]
    public void Validate_SignedClaimWithLoneSurrogateEscape_ReturnsMalformed(string claim)
    {
        long exp = JwtTestKeys.Now.AddMinutes(10).ToUnixTimeSeconds();
        string payload = $$"""{"iss":"{{JwtTestKeys.Issuer}}","aud":"{{JwtTestKeys.Audience}}","exp":{{exp}},"scope":"orders.read","{{claim}}":"\ud800"}""";
        string unsigned = JwtTestKeys.Raw("""{"alg":"HS256","kid":"hmac1"}""", payload, [])[..^1];
        byte[] signature = HMACSHA256.HashData(s_keys.Secret, Encoding.ASCII.GetBytes(unsigned));

        Assert.Equal(JwtResult.Malformed, Check(unsigned + "." + JwtTestKeys.B64(signature)));
    }

    [Fact]
    public void Validate_CritHeader_ReturnsInvalid()
    {
        Assert.Equal(JwtResult.Invalid, Check(JwtTestKeys.Raw("""{"alg":"HS256","kid":"hmac1","crit":["exp"]}""", JwtTestKeys.ValidPayload(), [1])));
    }

    [Theory]
    [InlineData("")]
    [InlineData("abc")]
    [InlineData("a.b")]
    [InlineData("a.b.c.d.e")]
    [InlineData("..")]
    [InlineData("!!!.e30.AAAA")]
    [InlineData("e30.e30.AAAA")]
    [InlineData("eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYTEi.e30.AAAA")]
    public void Validate_Malformed_IsRefused(string token)
    {
        Assert.NotEqual(JwtResult.Valid, Check(token));
    }

    [Theory]
    // RFC 7515 section 2: base64url without padding; Base64Url.DecodeFromUtf8 alone skips whitespace and takes '='.
    [InlineData(2, 10, " ")]
    [InlineData(2, 10, "\t")]
    [InlineData(2, 10, "\r\n")]
    [InlineData(2, -1, "=")]
    [InlineData(1, 4, " ")]
    [InlineData(0, 4, " ")]
    [InlineData(0, -1, "=")]
    public void Validate_WhitespaceOrPaddingInAPart_ReturnsMalformed(int part, int at, string inserted)
    {
        // A genuine HS256 token (header 39 chars and signature 43: one "=" is exactly the padding a decoder accepts),
        // then the bytes slipped into one part.
        string payload = JwtTestKeys.ValidPayload();
        string signingInput = $"{JwtTestKeys.B64("""{"alg":"HS256","kid":"hmac1"}"""u8)}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}";
        string token = $"{signingInput}.{JwtTestKeys.B64(HMACSHA256.HashData(s_keys.Secret, Encoding.ASCII.GetBytes(signingInput)))}";
        Assert.Equal(JwtResult.Valid, Check(token));
        string[] parts = token.Split('.');
        parts[part] = at < 0 ? parts[part] + inserted : parts[part].Insert(at, inserted);
        Assert.Equal(JwtResult.Malformed, Check(string.Join('.', parts)));
    }

    [Fact]
    public void OnRequestHeaders_SpaceInSignature_Responds401Malformed()
    {
        string token = s_keys.Mint("HS256");
        string spaced = token.Insert(token.LastIndexOf('.') + 8, " ");
        var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {spaced}\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, Filter().OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal("jwt_malformed", context.ReplyDetails);
    }

    [Fact]
    public void Validate_MissingExp_ReturnsMalformed()
    {
        string payload = $$"""{"iss":"{{JwtTestKeys.Issuer}}","aud":"{{JwtTestKeys.Audience}}","scope":"orders.read"}""";
        string signingInput = $"{JwtTestKeys.B64("""{"alg":"HS256","kid":"hmac1"}"""u8)}.{JwtTestKeys.B64(Encoding.UTF8.GetBytes(payload))}";
        byte[] mac = HMACSHA256.HashData(s_keys.Secret, Encoding.ASCII.GetBytes(signingInput));
        Assert.Equal(JwtResult.Malformed, Check($"{signingInput}.{JwtTestKeys.B64(mac)}"));
    }

    [Fact]
    public void Validate_RepeatedToken_VerifiesOnceThenHitsCache()
    {
        var filter = Filter();
        byte[] token = Encoding.ASCII.GetBytes(s_keys.Mint("RS256"));
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(JwtResult.Valid, filter.Validate(token));
        }
        Assert.Equal(1, filter.VerificationCount);
    }

    [Fact]
    public void Validate_CachedTokenAfterExpiry_IsRefused()
    {
        var clock = new JwtClock(JwtTestKeys.Now);
        var filter = Filter(clock);
        byte[] token = Encoding.ASCII.GetBytes(s_keys.Mint("ES256", expiresIn: TimeSpan.FromMinutes(1)));
        Assert.Equal(JwtResult.Valid, filter.Validate(token));
        clock.Now = JwtTestKeys.Now.AddMinutes(1).AddSeconds(29);
        Assert.Equal(JwtResult.Valid, filter.Validate(token));
        clock.Now = JwtTestKeys.Now.AddMinutes(1).AddSeconds(31);
        Assert.Equal(JwtResult.Expired, filter.Validate(token));
    }

    [Fact]
    public void Validate_RejectedToken_IsNotCached()
    {
        var filter = Filter();
        byte[] token = Encoding.ASCII.GetBytes(s_keys.Mint(scope: "orders.write"));
        Assert.Equal(JwtResult.InsufficientScope, filter.Validate(token));
        Assert.Equal(JwtResult.InsufficientScope, filter.Validate(token));
        Assert.Equal(2, filter.VerificationCount);
    }

    [Fact]
    public void OnRequestHeaders_CachedToken_AllocatesNothing()
    {
        var filter = Filter(new JwtClock(JwtTestKeys.Now));
        var context = RateLimitTests.Context($"GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {s_keys.Mint("RS256")}\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.OnRequestHeaders(context), iterations: 1000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over the loop (best of three rounds)");
        Assert.Equal(1, filter.VerificationCount);
    }

    [Fact]
    public void OnRequestHeaders_NoToken_Responds401WithRealmOnly()
    {
        var context = RateLimitTests.Context("GET /orders HTTP/1.1\r\nHost: a\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, Filter().OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal("jwt_missing", context.ReplyDetails);
        Assert.Equal("www-authenticate: Bearer realm=\"jwt-internal\"\r\n", Encoding.ASCII.GetString(context.ReplyHeaders));
        Assert.Equal("application/problem+json", Encoding.ASCII.GetString(context.ReplyContentType));
    }

    [Fact]
    public void OnRequestHeaders_BasicScheme_TreatedAsMissing()
    {
        var context = RateLimitTests.Context("GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, Filter().OnRequestHeaders(context));
        Assert.Equal("jwt_missing", context.ReplyDetails);
    }

    /// <summary>
    /// RFC 9110 section 11.4 / RFC 6750 section 2.1: <c>Bearer 1*SP token</c>. A Bearer credential whose token is missing
    /// or follows a tab is a broken Bearer credential (invalid_token), not an absent one; OWS around the field value and
    /// several spaces before the token are fine.
    /// </summary>
    [Theory]
    [InlineData("Bearer\t{0}", "jwt_malformed")]
    [InlineData("Bearer \t{0}", "jwt_malformed")]
    [InlineData("Bearer", "jwt_malformed")]
    [InlineData("Bearerish {0}", "jwt_missing")]
    [InlineData("\tbearer   {0}\t ", null)]
    public void OnRequestHeaders_WhitespaceAroundBearerToken_FollowsTheGrammar(string authorization, string? details)
    {
        string value = string.Format(System.Globalization.CultureInfo.InvariantCulture, authorization, s_keys.Mint("RS256"));
        var context = RateLimitTests.Context($"GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization:{value}\r\n\r\n");

        FilterStatus status = Filter().OnRequestHeaders(context);

        Assert.Equal(details is null ? FilterStatus.Continue : FilterStatus.Respond, status);
        if (details is not null)
        {
            Assert.Equal(401, context.ReplyStatus);
            Assert.Equal(details, context.ReplyDetails);
            Assert.Equal(details == "jwt_malformed", Encoding.ASCII.GetString(context.ReplyHeaders).Contains("error=\"invalid_token\"", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void OnRequestHeaders_ExpiredToken_Responds401InvalidToken()
    {
        string token = s_keys.Mint(expiresIn: TimeSpan.FromMinutes(-5), notBeforeIn: TimeSpan.FromMinutes(-20));
        var context = RateLimitTests.Context($"GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: bearer {token}\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, Filter().OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal("jwt_expired", context.ReplyDetails);
        string headers = Encoding.ASCII.GetString(context.ReplyHeaders);
        Assert.Contains("error=\"invalid_token\"", headers);
        Assert.Contains("error_description=\"The token has expired\"", headers);
        var problem = JsonDocument.Parse(context.ReplyBody.ToArray()).RootElement;
        Assert.Equal(401, problem.GetProperty("status").GetInt32());
        Assert.DoesNotContain(token[..20], Encoding.UTF8.GetString(context.ReplyBody));
    }

    [Fact]
    public void OnRequestHeaders_MissingScope_Responds403InsufficientScope()
    {
        var context = RateLimitTests.Context($"GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {s_keys.Mint("HS256", scope: "orders.write")}\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, Filter().OnRequestHeaders(context));
        Assert.Equal(403, context.ReplyStatus);
        Assert.Equal("jwt_scope", context.ReplyDetails);
        Assert.Contains("error=\"insufficient_scope\"", Encoding.ASCII.GetString(context.ReplyHeaders));
        Assert.Contains("scope=\"orders.read\"", Encoding.ASCII.GetString(context.ReplyHeaders));
    }

    [Fact]
    public void OnRequestHeaders_HmacFailure_DoesNotLeakSecret()
    {
        string token = JwtTestKeys.Raw("""{"alg":"HS256","kid":"hmac1"}""", JwtTestKeys.ValidPayload(), [1, 2, 3]);
        var context = RateLimitTests.Context($"GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
        Filter().OnRequestHeaders(context);
        string reply = Encoding.ASCII.GetString(context.ReplyHeaders) + Encoding.UTF8.GetString(context.ReplyBody);
        Assert.Equal("jwt_invalid", context.ReplyDetails);
        Assert.DoesNotContain(JwtTestKeys.B64(s_keys.Secret), reply);
        Assert.DoesNotContain("hmac1", reply);
    }

    private static string Base64(string base64Url)
    {
        string s = base64Url.Replace('-', '+').Replace('_', '/');
        return s + new string('=', (4 - s.Length % 4) % 4);
    }
}
