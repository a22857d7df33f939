using System.Buffers.Text;
using System.IdentityModel.Tokens.Jwt;
using System.Security.Cryptography;
using System.Text;
using Microsoft.IdentityModel.Tokens;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>A UTC clock the test sets by hand.</summary>
internal sealed class JwtClock(DateTimeOffset now) : TimeProvider
{
    public DateTimeOffset Now { get; set; } = now;

    public override DateTimeOffset GetUtcNow() => Now;
}

/// <summary>
/// Keys of every family, their JWKS, and tokens minted by Microsoft.IdentityModel (an independent implementation),
/// so our verifier is checked against someone else's signer.
/// </summary>
internal sealed class JwtTestKeys
{
    public const string Issuer = "https://idp.example.test";
    public const string Audience = "orders-api";

    public static readonly DateTimeOffset Now = new(2026, 11, 28, 12, 0, 0, TimeSpan.Zero);

    public RSA Rsa { get; } = RSA.Create(2048);
    public ECDsa Ec256 { get; } = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    public ECDsa Ec384 { get; } = ECDsa.Create(ECCurve.NamedCurves.nistP384);
    public byte[] Secret { get; } = RandomNumberGenerator.GetBytes(64);

    public static JwtTestKeys Shared { get; } = new();

    public string Jwks()
    {
        var rsa = Rsa.ExportParameters(false);
        var ec = Ec256.ExportParameters(false);
        var ec384 = Ec384.ExportParameters(false);
        return $$"""
            { "keys": [
              { "kty": "RSA", "kid": "rsa1", "use": "sig", "n": "{{B64(rsa.Modulus!)}}", "e": "{{B64(rsa.Exponent!)}}" },
              { "kty": "EC", "kid": "ec1", "crv": "P-256", "x": "{{B64(ec.Q.X!)}}", "y": "{{B64(ec.Q.Y!)}}" },
              { "kty": "EC", "kid": "ec384", "crv": "P-384", "x": "{{B64(ec384.Q.X!)}}", "y": "{{B64(ec384.Q.Y!)}}" },
              { "kty": "oct", "kid": "hmac1", "alg": "HS256", "k": "{{B64(Secret)}}" },
              { "kty": "oct", "kid": "hmac2", "k": "{{B64(Secret)}}" },
              { "kty": "RSA", "kid": "enc1", "use": "enc", "n": "{{B64(rsa.Modulus!)}}", "e": "{{B64(rsa.Exponent!)}}" }
            ] }
            """;
    }

    public static string B64(ReadOnlySpan<byte> bytes) => Base64Url.EncodeToString(bytes);

    public SigningCredentials Credentials(string algorithm) => algorithm switch
    {
        "RS256" or "RS384" or "RS512" or "PS256" or "PS384" or "PS512" => new SigningCredentials(new RsaSecurityKey(Rsa) { KeyId = "rsa1" }, algorithm),
        "ES256" => new SigningCredentials(new ECDsaSecurityKey(Ec256) { KeyId = "ec1" }, algorithm),
        "ES384" => new SigningCredentials(new ECDsaSecurityKey(Ec384) { KeyId = "ec384" }, algorithm),
        "HS256" => new SigningCredentials(new SymmetricSecurityKey(Secret) { KeyId = "hmac1" }, algorithm),
        // The "hmac1" key is pinned to HS256; the same secret under "hmac2" (no alg) verifies HS384/HS512.
        "HS384" or "HS512" => new SigningCredentials(new SymmetricSecurityKey(Secret) { KeyId = "hmac2" }, algorithm),
        _ => throw new ArgumentException(algorithm),
    };

    /// <summary>A token valid at <see cref="Now"/> unless the arguments say otherwise.</summary>
    public string Mint(string algorithm = "RS256", string issuer = Issuer, object? audience = null, TimeSpan? expiresIn = null,
        TimeSpan? notBeforeIn = null, string? scope = "orders.read orders.write", string[]? scp = null, SigningCredentials? credentials = null)
    {
        var claims = new Dictionary<string, object> { ["sub"] = "user-1", ["aud"] = audience ?? Audience };
        if (scope is not null)
        {
            claims["scope"] = scope;
        }
        if (scp is not null)
        {
            claims["scp"] = scp;
        }
        var descriptor = new SecurityTokenDescriptor
        {
            Issuer = issuer,
            IssuedAt = Now.UtcDateTime.AddMinutes(-1),
            NotBefore = (Now + (notBeforeIn ?? TimeSpan.FromMinutes(-1))).UtcDateTime,
            Expires = (Now + (expiresIn ?? TimeSpan.FromMinutes(10))).UtcDateTime,
            Claims = claims,
            SigningCredentials = credentials ?? Credentials(algorithm),
        };
        var handler = new JwtSecurityTokenHandler { SetDefaultTimesOnTokenCreation = false };
        return handler.CreateEncodedJwt(descriptor);
    }

    /// <summary>A token put together by hand: any header, the given payload, any signature bytes.</summary>
    public static string Raw(string headerJson, string payloadJson, ReadOnlySpan<byte> signature)
        => $"{B64(Encoding.UTF8.GetBytes(headerJson))}.{B64(Encoding.UTF8.GetBytes(payloadJson))}.{B64(signature)}";

    public static string ValidPayload()
    {
        long exp = Now.AddMinutes(10).ToUnixTimeSeconds();
        return $$"""{"iss":"{{Issuer}}","aud":"{{Audience}}","exp":{{exp}},"scope":"orders.read"}""";
    }
}
