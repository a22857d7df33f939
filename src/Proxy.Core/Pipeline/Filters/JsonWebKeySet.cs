using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using NSec.Cryptography;

namespace Proxy.Pipeline.Filters;

/// <summary>The JWS algorithms the <c>jwt</c> policy accepts (RFC 7518 section 3.1); <c>none</c> is never one of them.</summary>
internal enum JwsAlgorithm : byte
{
    Unknown = 0,
    RS256, RS384, RS512,
    PS256, PS384, PS512,
    ES256, ES384, ES512,
    HS256, HS384, HS512,
    /// <summary>RFC 8037 section 3.1: EdDSA; with the only curve we accept, Ed25519 (RFC 8032 section 5.1).</summary>
    EdDSA,
}

/// <summary>Key families (RFC 7518 section 6.1 "kty").</summary>
internal enum JwkKeyType : byte
{
    Rsa = 0,
    EC,
    Oct,
    /// <summary>RFC 8037 section 2: Octet Key Pair (Ed25519 here).</summary>
    Okp,
}

/// <summary>
/// One verification key from a JWKS. Immutable after load; <see cref="RSA"/> and <see cref="ECDsa"/> public-key
/// verification is safe to call concurrently on .NET's OpenSSL and CNG implementations (each call gets its own
/// operation context), and an NSec <see cref="PublicKey"/> is an immutable 32-byte value that libsodium's
/// stateless verify only reads.
/// </summary>
internal sealed class JsonWebKey
{
    public required JwkKeyType KeyType { get; init; }
    /// <summary>UTF-8 "kid", or null when the key has none.</summary>
    public byte[]? Kid { get; init; }
    /// <summary>The key's own "alg" (RFC 7517 section 4.4); when set, a token must use exactly this algorithm.</summary>
    public JwsAlgorithm Algorithm { get; init; }
    public RSA? Rsa { get; init; }
    public ECDsa? ECDsa { get; init; }
    /// <summary>For EC keys: the algorithm its curve implies (ES256 for P-256, RFC 7518 section 3.4).</summary>
    public JwsAlgorithm CurveAlgorithm { get; init; }
    public byte[]? Secret { get; init; }
    /// <summary>For OKP keys: the Ed25519 public key, imported once at load so a verification allocates nothing.</summary>
    public PublicKey? Ed25519 { get; init; }

    /// <summary>
    /// True when a token signed with <paramref name="algorithm"/> may be checked with this key. This is the guard
    /// against algorithm confusion: the family must match the key type, so an RSA public key is never an HMAC secret.
    /// </summary>
    public bool Accepts(JwsAlgorithm algorithm)
    {
        if (Algorithm != JwsAlgorithm.Unknown && Algorithm != algorithm)
        {
            return false;
        }
        return KeyType switch
        {
            JwkKeyType.Rsa => algorithm is >= JwsAlgorithm.RS256 and <= JwsAlgorithm.PS512,
            JwkKeyType.EC => algorithm == CurveAlgorithm,
            JwkKeyType.Okp => algorithm == JwsAlgorithm.EdDSA,
            _ => algorithm is >= JwsAlgorithm.HS256 and <= JwsAlgorithm.HS512,
        };
    }
}

/// <summary>Reads a JSON Web Key Set (RFC 7517 section 5) into verification keys. Control plane: written plainly.</summary>
internal static class JsonWebKeySet
{
    /// <summary>RFC 7518 section 3.3: RSA keys of 2048 bits or more.</summary>
    public const int MinRsaBits = 2048;

    public static JwsAlgorithm ParseAlgorithm(ReadOnlySpan<byte> name) => name switch
    {
        _ when name.SequenceEqual("RS256"u8) => JwsAlgorithm.RS256,
        _ when name.SequenceEqual("RS384"u8) => JwsAlgorithm.RS384,
        _ when name.SequenceEqual("RS512"u8) => JwsAlgorithm.RS512,
        _ when name.SequenceEqual("PS256"u8) => JwsAlgorithm.PS256,
        _ when name.SequenceEqual("PS384"u8) => JwsAlgorithm.PS384,
        _ when name.SequenceEqual("PS512"u8) => JwsAlgorithm.PS512,
        _ when name.SequenceEqual("ES256"u8) => JwsAlgorithm.ES256,
        _ when name.SequenceEqual("ES384"u8) => JwsAlgorithm.ES384,
        _ when name.SequenceEqual("ES512"u8) => JwsAlgorithm.ES512,
        _ when name.SequenceEqual("HS256"u8) => JwsAlgorithm.HS256,
        _ when name.SequenceEqual("HS384"u8) => JwsAlgorithm.HS384,
        _ when name.SequenceEqual("HS512"u8) => JwsAlgorithm.HS512,
        _ when name.SequenceEqual("EdDSA"u8) => JwsAlgorithm.EdDSA,
        // RFC 9864 section 2.2: the fully-specified name for exactly what "EdDSA" means with the only curve we accept.
        _ when name.SequenceEqual("Ed25519"u8) => JwsAlgorithm.EdDSA,
        _ => JwsAlgorithm.Unknown,
    };

    /// <summary>
    /// Parses a JWKS document. Keys whose "use" is not "sig" are skipped (a set may carry encryption keys); any
    /// other unusable key is an error, since silently dropping it would turn valid tokens into 401s.
    /// Throws <see cref="FormatException"/> with a message for the config error.
    /// </summary>
    public static JsonWebKey[] Parse(ReadOnlySpan<byte> json)
    {
        JsonDocument document;
        try
        {
            var bytes = json.ToArray();
            document = JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new FormatException($"malformed JWKS: {e.Message}");
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("keys", out var keys) || keys.ValueKind != JsonValueKind.Array)
            {
                throw new FormatException("malformed JWKS: expected an object with a \"keys\" array (RFC 7517 section 5)");
            }
            var result = new List<JsonWebKey>();
            int index = 0;
            foreach (var key in keys.EnumerateArray())
            {
                if (ParseKey(key, index) is { } parsed)
                {
                    result.Add(parsed);
                }
                index++;
            }
            if (result.Count == 0)
            {
                throw new FormatException("the JWKS holds no signature keys");
            }
            for (int i = 0; i < result.Count; i++)
            {
                for (int j = 0; j < i; j++)
                {
                    if (result[i].Kid is { } a && result[j].Kid is { } b && a.AsSpan().SequenceEqual(b))
                    {
                        throw new FormatException($"the JWKS has two keys with kid '{Encoding.UTF8.GetString(a)}'");
                    }
                }
            }
            return [.. result];
        }
    }

    private static JsonWebKey? ParseKey(JsonElement key, int index)
    {
        if (key.ValueKind != JsonValueKind.Object)
        {
            throw new FormatException($"JWKS key #{index} is not an object");
        }
        string? kid = OptionalString(key, "kid", index);
        string label = kid is null ? $"JWKS key #{index}" : $"JWKS key '{kid}'";
        string? use = OptionalString(key, "use", index);
        if (use is not null && use != "sig")
        {
            return null;
        }
        JwsAlgorithm algorithm = JwsAlgorithm.Unknown;
        if (OptionalString(key, "alg", index) is { } alg)
        {
            algorithm = ParseAlgorithm(Encoding.UTF8.GetBytes(alg));
            if (algorithm == JwsAlgorithm.Unknown)
            {
                throw new FormatException($"{label} has unsupported alg '{alg}' (expected RS256/384/512, PS256/384/512, ES256/384/512, EdDSA or HS256/384/512)");
            }
        }
        string? kty = OptionalString(key, "kty", index);
        byte[]? kidBytes = kid is null ? null : Encoding.UTF8.GetBytes(kid);
        JsonWebKey result;
        switch (kty)
        {
            case "RSA":
                var parameters = new RSAParameters { Modulus = Required(key, "n", label), Exponent = Required(key, "e", label) };
                var rsa = RSA.Create();
                try
                {
                    rsa.ImportParameters(parameters);
                }
                catch (CryptographicException e)
                {
                    rsa.Dispose();
                    throw new FormatException($"{label}: invalid RSA key ({e.Message})");
                }
                if (rsa.KeySize < MinRsaBits)
                {
                    rsa.Dispose();
                    throw new FormatException($"{label}: RSA key is {parameters.Modulus!.Length * 8} bits; at least {MinRsaBits} are required (RFC 7518 section 3.3)");
                }
                result = new JsonWebKey { KeyType = JwkKeyType.Rsa, Kid = kidBytes, Algorithm = algorithm, Rsa = rsa };
                break;
            case "EC":
                string crv = OptionalString(key, "crv", index) ?? throw new FormatException($"{label}: EC key without \"crv\"");
                (ECCurve curve, JwsAlgorithm curveAlgorithm, int size) = crv switch
                {
                    "P-256" => (ECCurve.NamedCurves.nistP256, JwsAlgorithm.ES256, 32),
                    "P-384" => (ECCurve.NamedCurves.nistP384, JwsAlgorithm.ES384, 48),
                    "P-521" => (ECCurve.NamedCurves.nistP521, JwsAlgorithm.ES512, 66),
                    _ => throw new FormatException($"{label}: unsupported curve '{crv}' (expected P-256, P-384 or P-521)"),
                };
                byte[] x = Required(key, "x", label);
                byte[] y = Required(key, "y", label);
                if (x.Length != size || y.Length != size)
                {
                    throw new FormatException($"{label}: coordinates must be {size} bytes for {crv} (RFC 7518 section 6.2.1.2)");
                }
                var ecdsa = ECDsa.Create();
                try
                {
                    ecdsa.ImportParameters(new ECParameters { Curve = curve, Q = new ECPoint { X = x, Y = y } });
                }
                catch (CryptographicException e)
                {
                    ecdsa.Dispose();
                    throw new FormatException($"{label}: invalid EC key ({e.Message})");
                }
                result = new JsonWebKey { KeyType = JwkKeyType.EC, Kid = kidBytes, Algorithm = algorithm, ECDsa = ecdsa, CurveAlgorithm = curveAlgorithm };
                break;
            case "oct":
                byte[] secret = Required(key, "k", label);
                // RFC 7518 section 3.2: an HMAC key at least as long as the hash output; 32 bytes covers HS256.
                if (secret.Length < 32)
                {
                    throw new FormatException($"{label}: oct key is {secret.Length} bytes; HMAC keys need at least 32 (RFC 7518 section 3.2)");
                }
                result = new JsonWebKey { KeyType = JwkKeyType.Oct, Kid = kidBytes, Algorithm = algorithm, Secret = secret };
                break;
            case "OKP":
                result = ParseOkp(key, index, label, kidBytes, algorithm);
                break;
            case null:
                throw new FormatException($"{label} has no \"kty\"");
            default:
                throw new FormatException($"{label} has unsupported kty '{kty}' (expected RSA, EC, OKP or oct)");
        }
        if (algorithm != JwsAlgorithm.Unknown && !result.Accepts(algorithm))
        {
            throw new FormatException($"{label}: alg '{algorithm}' does not fit kty '{kty}'");
        }
        return result;
    }

    /// <summary>RFC 8037 section 2: <c>{"kty":"OKP","crv":"Ed25519","x":BASE64URL(public key)}</c>.</summary>
    private static JsonWebKey ParseOkp(JsonElement key, int index, string label, byte[]? kid, JwsAlgorithm algorithm)
    {
        string crv = OptionalString(key, "crv", index) ?? throw new FormatException($"{label}: OKP key without \"crv\"");
        switch (crv)
        {
            case "Ed25519":
                break;
            case "Ed448":
                // NSec (libsodium) has no Ed448, and no issuer we know of signs with it.
                throw new FormatException($"{label}: curve 'Ed448' is not supported (EdDSA keys must be Ed25519)");
            case "X25519" or "X448":
                // Section 3.2: ECDH-ES curves; a signature key set should not hold them without "use": "enc".
                throw new FormatException($"{label}: curve '{crv}' is for key agreement, not signatures (EdDSA keys must be Ed25519)");
            default:
                throw new FormatException($"{label}: unsupported curve '{crv}' (EdDSA keys must be Ed25519)");
        }
        if (key.TryGetProperty("d", out _))
        {
            // A private key in a published key set is a leak; refuse it rather than quietly use the public half.
            throw new FormatException($"{label}: OKP key carries a private part \"d\"; publish only the public key");
        }
        byte[] x = Required(key, "x", label);
        // RFC 8032 section 5.1.5: an Ed25519 public key is 32 bytes.
        if (x.Length != 32 || !TryImportEd25519(x, label, out PublicKey? publicKey))
        {
            throw new FormatException($"{label}: \"x\" must be a 32-byte Ed25519 public key (RFC 8037 section 2)");
        }
        return new JsonWebKey { KeyType = JwkKeyType.Okp, Kid = kid, Algorithm = algorithm, Ed25519 = publicKey };
    }

    private static bool TryImportEd25519(byte[] x, string label, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out PublicKey? publicKey)
    {
        try
        {
            return PublicKey.TryImport(SignatureAlgorithm.Ed25519, x, KeyBlobFormat.RawPublicKey, out publicKey);
        }
        catch (Exception e) when (e is PlatformNotSupportedException or DllNotFoundException or TypeInitializationException)
        {
            // NSec loads libsodium on first use; a binary shipped without libsodium.so would otherwise crash on
            // an unhandled exception here. As a config error, every other key type keeps working.
            throw new FormatException($"{label}: Ed25519 is unavailable because libsodium could not be loaded; ship libsodium.so next to the proxy executable ({(e.InnerException ?? e).GetType().Name})");
        }
    }

    private static string? OptionalString(JsonElement key, string name, int index)
    {
        if (!key.TryGetProperty(name, out var value))
        {
            return null;
        }
        if (value.ValueKind != JsonValueKind.String)
        {
            throw new FormatException($"JWKS key #{index}: \"{name}\" must be a string");
        }
        return value.GetString();
    }

    private static byte[] Required(JsonElement key, string name, string label)
    {
        if (!key.TryGetProperty(name, out var value) || value.ValueKind != JsonValueKind.String)
        {
            throw new FormatException($"{label}: missing \"{name}\"");
        }
        string text = value.GetString()!;
        try
        {
            // RFC 7517 section 4 / RFC 7518 section 6: key material is base64url without padding.
            byte[] bytes = System.Buffers.Text.Base64Url.DecodeFromChars(text);
            if (bytes.Length == 0)
            {
                throw new FormatException($"{label}: \"{name}\" is empty");
            }
            return bytes;
        }
        catch (FormatException) when (text.Length > 0)
        {
            throw new FormatException($"{label}: \"{name}\" is not base64url");
        }
    }
}
