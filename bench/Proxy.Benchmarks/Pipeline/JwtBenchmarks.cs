using System.Buffers.Text;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Benchmarks.Pipeline;

/// <summary>
/// The <c>jwt</c> policy: a repeated token through the filter (Authorization looked up in a parsed head, hashed,
/// found in the verified-token cache: no signature check, no allocation) against the first sight of a token, which
/// pays the full parse and an RS256 or ES256 signature check. Tokens are realistic access tokens (~700 bytes RS256).
/// </summary>
[MemoryDiagnoser]
public class JwtBenchmarks
{
    private JwtFilter _filter = null!;
    private RequestContext _context = null!;
    private byte[] _rs256 = null!;
    private byte[] _es256 = null!;
    private byte[] _hs256 = null!;
    private byte[] _edDsa = null!;
    private long _now;

    [GlobalSetup]
    public void Setup()
    {
        var rsa = RSA.Create(2048);
        var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        byte[] secret = RandomNumberGenerator.GetBytes(32);
        using var ed = NSec.Cryptography.Key.Create(NSec.Cryptography.SignatureAlgorithm.Ed25519);
        var r = rsa.ExportParameters(false);
        var q = ec.ExportParameters(false).Q;
        string jwks = $$"""
            {"keys":[
              {"kty":"RSA","kid":"rsa1","n":"{{B64(r.Modulus!)}}","e":"{{B64(r.Exponent!)}}"},
              {"kty":"EC","kid":"ec1","crv":"P-256","x":"{{B64(q.X!)}}","y":"{{B64(q.Y!)}}"},
              {"kty":"oct","kid":"hmac1","k":"{{B64(secret)}}"},
              {"kty":"OKP","kid":"ed1","crv":"Ed25519","x":"{{B64(ed.PublicKey.Export(NSec.Cryptography.KeyBlobFormat.RawPublicKey))}}"}
            ]}
            """;
        _filter = new JwtFilter(new JwtOptions
        {
            PolicyName = "jwt-internal",
            Issuer = "https://idp.example.test",
            Audiences = ["orders-api"],
            RequiredScopes = ["orders.read"],
            Keys = JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(jwks)),
        });
        _now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string payload = $$"""
            {"iss":"https://idp.example.test","sub":"248289761001","aud":["orders-api","billing-api"],"exp":{{_now + 3600}},"nbf":{{_now - 60}},"iat":{{_now - 60}},"jti":"b7f9f1a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b","client_id":"orders-web","scope":"openid profile orders.read orders.write"}
            """;
        _rs256 = Sign("""{"alg":"RS256","typ":"JWT","kid":"rsa1"}""", payload, s => rsa.SignData(s, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1));
        _es256 = Sign("""{"alg":"ES256","typ":"JWT","kid":"ec1"}""", payload, s => ec.SignData(s, HashAlgorithmName.SHA256));
        _hs256 = Sign("""{"alg":"HS256","typ":"JWT","kid":"hmac1"}""", payload, s => HMACSHA256.HashData(secret, s));
        _edDsa = Sign("""{"alg":"EdDSA","typ":"JWT","kid":"ed1"}""", payload, s => NSec.Cryptography.SignatureAlgorithm.Ed25519.Sign(ed, s));

        byte[] raw = Encoding.ASCII.GetBytes($"GET /orders/42 HTTP/1.1\r\nHost: api.example.test\r\nAuthorization: Bearer {Encoding.ASCII.GetString(_rs256)}\r\nAccept: */*\r\n\r\n");
        var head = new RequestHead();
        Http1RequestReader.TryRead(new System.Buffers.ReadOnlySequence<byte>(raw), head, HttpLimits.Default, out _, out _);
        _context = new RequestContext();
        _context.Begin(head, IPAddress.Loopback, "orders", "public");
        if (_filter.OnRequestHeaders(_context) != FilterStatus.Continue || _filter.Verify(_es256, _now, out _) != JwtResult.Valid
            || _filter.Verify(_hs256, _now, out _) != JwtResult.Valid || _filter.Verify(_edDsa, _now, out _) != JwtResult.Valid)
        {
            throw new InvalidOperationException("benchmark tokens do not verify");
        }
    }

    private static string B64(byte[] bytes) => Base64Url.EncodeToString(bytes);

    private static byte[] Sign(string header, string payload, Func<byte[], byte[]> sign)
    {
        string input = $"{B64(Encoding.UTF8.GetBytes(header))}.{B64(Encoding.UTF8.GetBytes(payload))}";
        return Encoding.ASCII.GetBytes($"{input}.{B64(sign(Encoding.ASCII.GetBytes(input)))}");
    }

    /// <summary>The steady state: the same token again, through the filter.</summary>
    [Benchmark(Baseline = true)]
    public FilterStatus CachedToken() => _filter.OnRequestHeaders(_context);

    [Benchmark]
    public int FirstSight_RS256() => (int)_filter.Verify(_rs256, _now, out _);

    [Benchmark]
    public int FirstSight_ES256() => (int)_filter.Verify(_es256, _now, out _);

    [Benchmark]
    public int FirstSight_HS256() => (int)_filter.Verify(_hs256, _now, out _);

    /// <summary>Ed25519 (RFC 8037) through NSec/libsodium: the key was imported at load, the spans go straight in.</summary>
    [Benchmark]
    public int FirstSight_EdDSA() => (int)_filter.Verify(_edDsa, _now, out _);
}
