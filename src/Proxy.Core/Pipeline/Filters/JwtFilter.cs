using System.Buffers;
using System.Buffers.Text;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Proxy.Http;

namespace Proxy.Pipeline.Filters;

/// <summary>The outcome of checking one token; each maps to one answer and one details code.</summary>
internal enum JwtResult : byte
{
    Valid = 0,
    /// <summary>No Authorization field, or not the Bearer scheme (RFC 6750 section 3.1: no error code then).</summary>
    Missing,
    /// <summary>Not a compact JWS, bad base64url or JSON, or too long.</summary>
    Malformed,
    /// <summary>Algorithm refused (none, unknown, crit, wrong for the key), no matching key, or a bad signature.</summary>
    Invalid,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    InsufficientScope,
    /// <summary>The policy's remote key set has not been fetched yet (jwks_url down since start).</summary>
    KeysUnavailable,
    /// <summary>Signed and valid, but without a required role (403, like a missing scope).</summary>
    InsufficientRole,
    /// <summary>Signed and valid, but a required claim is absent or has another value (403).</summary>
    ClaimMismatch,
}

/// <summary>The compiled settings of one <c>jwt</c> policy.</summary>
internal sealed record JwtOptions
{
    public required string PolicyName { get; init; }
    public required string Issuer { get; init; }
    /// <summary>Accepted "aud" values: a token passes when any of its audiences is one of these.</summary>
    public required IReadOnlyList<string> Audiences { get; init; }
    /// <summary>Scopes a token must all carry (in "scope" or "scp"); at most 64.</summary>
    public IReadOnlyList<string> RequiredScopes { get; init; } = [];
    /// <summary>True: every required scope must be present; false: any one of them suffices.</summary>
    public bool AllScopes { get; init; } = true;
    /// <summary>Roles a token must carry in <see cref="RolesClaim"/>; at most 64.</summary>
    public IReadOnlyList<string> RequiredRoles { get; init; } = [];
    /// <summary>True: every required role must be present; false: any one of them suffices.</summary>
    public bool AllRoles { get; init; } = true;
    /// <summary>
    /// The claim holding roles: an array of strings, or a space-separated string. A dotted name is a path into
    /// nested objects (<c>realm_access.roles</c>, as Keycloak issues); a top-level name containing a dot cannot be
    /// named. At most <see cref="JwtFilter.MaxRolesPathSegments"/> segments.
    /// </summary>
    public string RolesClaim { get; init; } = "roles";
    /// <summary>
    /// Claims that must equal the given value (a string claim, or an array of strings containing it); at most 64. A
    /// dotted name is a path into nested objects, as for <see cref="RolesClaim"/>.
    /// </summary>
    public IReadOnlyList<KeyValuePair<string, string>> RequiredClaims { get; init; } = [];
    /// <summary>Headers that carry the verified identity upstream; null when the policy forwards nothing.</summary>
    public IdentityForwardingOptions? ForwardIdentity { get; init; }
    public TimeSpan ClockSkew { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Keys from a jwks_file; empty when <see cref="KeySource"/> supplies them.</summary>
    public IReadOnlyList<JsonWebKey> Keys { get; init; } = [];
    /// <summary>
    /// The SHA-256 of the jwks_file content <see cref="Keys"/> were read from, so that a reload can tell the same key
    /// set from another (<see cref="JwtFilter.SameCache"/>); null when unknown, which never counts as the same.
    /// </summary>
    public byte[]? KeySetSha256 { get; init; }
    /// <summary>A remote key set (jwks_url), fetched and refreshed in the background.</summary>
    public JwksSource? KeySource { get; init; }
    /// <summary>Verified tokens remembered (rounded up to a power of two).</summary>
    public int CacheCapacity { get; init; } = 4096;
}

/// <summary>
/// The built-in <c>jwt</c> policy: requires a bearer token (RFC 6750 section 2.1) that is a compact JWS (RFC 7515
/// section 7.1) signed by a key from the policy's JWKS, with the expected issuer and audience, inside its validity
/// window (RFC 7519 section 4.1) and carrying the required scopes. Refusals are RFC 6750 section 3 challenges with an
/// RFC 9457 problem body. A token that passed is remembered until it expires or the policy's key set changes
/// (<see cref="VerifiedTokenCache"/>), so a repeated token costs a lookup and allocates nothing.
/// </summary>
internal sealed class JwtFilter : IRequestHeadersFilter
{
    /// <summary>Longest token accepted; real tokens are a few hundred bytes to a few KiB.</summary>
    public const int MaxTokenBytes = 8 * 1024;

    private const int MaxScopes = 64;

    /// <summary>
    /// Deepest roles_claim or required_claims path (<c>a.b.c.d</c>); Keycloak's deepest is three
    /// (<c>resource_access.CLIENT.roles</c>).
    /// </summary>
    public const int MaxRolesPathSegments = 8;

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();

    /// <summary>RFC 4648 section 5: the base64url alphabet.</summary>
    private static readonly SearchValues<byte> s_base64UrlAlphabet =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"u8);

    // Indexed by JwtResult.
    private static readonly string[] s_details =
        ["", "jwt_missing", "jwt_malformed", "jwt_invalid", "jwt_expired", "jwt_not_yet_valid", "jwt_issuer", "jwt_audience", "jwt_scope", "jwt_keys_unavailable", "jwt_role", "jwt_claim"];

    // Fixed texts only: nothing from the token or the keys goes into an answer.
    private static readonly string[] s_descriptions =
    [
        "", "", "The token is not a well-formed JWS", "The token signature, algorithm or key is not accepted", "The token has expired",
        "The token is not valid yet", "The token issuer is not accepted", "The token audience is not accepted", "The token lacks a required scope",
        "The token signing keys are not available", "The token lacks a required role", "The token lacks a required claim value",
    ];

    private readonly byte[] _issuer;
    private readonly byte[][] _audiences;
    private readonly byte[][] _scopes;
    private readonly ulong _allScopes;
    private readonly bool _scopesAll;
    private readonly byte[][] _roles;
    private readonly ulong _allRoles;
    private readonly bool _rolesAll;
    /// <summary>The roles_claim path split at '.' once, at compile time: one UTF-8 name per nesting level.</summary>
    private readonly byte[][] _rolesPath;
    /// <summary>Each required claim's name split at '.' once, at compile time, as <see cref="_rolesPath"/>.</summary>
    private readonly byte[][][] _claimPaths;
    private readonly byte[][] _claimValues;
    private readonly ulong _allClaims;
    private readonly IdentityForwarding? _forwarding;
    private readonly long _skewSeconds;
    private readonly JsonWebKey[] _keys;
    private readonly JwksSource? _source;
    private readonly VerifiedTokenCache _cache;
    private readonly TimeProvider _time;
    private readonly byte[][] _challenges;
    private readonly byte[][] _bodies;
    private readonly PolicyDecisionCounts _counts;

    /// <param name="options">The compiled policy.</param>
    /// <param name="time">The clock; <see cref="TimeProvider.System"/> when null.</param>
    /// <param name="running">
    /// On a reload, the running <c>jwt</c> filter of the same policy name, if any: its decision counts go on
    /// (<see cref="PolicyDecisionCounts"/>), and when a verdict it cached means the same under
    /// <paramref name="options"/> on the same clock (<see cref="SameCache"/>), this filter takes over its
    /// verified-token cache, the same instance, so a reload does not send every token in use through a signature
    /// check again (with a jwks_file, it also takes over the running filter's key set instance, which the cached
    /// entries name). Both filters may then serve requests at once: the cache is thread-safe.
    /// </param>
    public JwtFilter(JwtOptions options, TimeProvider? time = null, JwtFilter? running = null)
    {
        ArgumentOutOfRangeException.ThrowIfZero(options.Audiences.Count);
        if (options.KeySource is null)
        {
            ArgumentOutOfRangeException.ThrowIfZero(options.Keys.Count);
        }
        _source = options.KeySource;
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.RequiredScopes.Count, MaxScopes);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.RequiredRoles.Count, MaxScopes);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.RequiredClaims.Count, MaxScopes);
        Options = options;
        _time = time ?? TimeProvider.System;
        _counts = PolicyDecisionCounts.ContinueFrom(running?._counts);
        _issuer = Encoding.UTF8.GetBytes(options.Issuer);
        _audiences = options.Audiences.Select(Encoding.UTF8.GetBytes).ToArray();
        _scopes = options.RequiredScopes.Select(Encoding.UTF8.GetBytes).ToArray();
        _allScopes = Mask(_scopes.Length);
        _scopesAll = options.AllScopes;
        _roles = options.RequiredRoles.Select(Encoding.UTF8.GetBytes).ToArray();
        _allRoles = Mask(_roles.Length);
        _rolesAll = options.AllRoles;
        _rolesPath = options.RolesClaim.Split('.').Select(Encoding.UTF8.GetBytes).ToArray();
        ArgumentOutOfRangeException.ThrowIfGreaterThan(_rolesPath.Length, MaxRolesPathSegments);
        _claimPaths = options.RequiredClaims.Select(c => c.Key.Split('.').Select(Encoding.UTF8.GetBytes).ToArray()).ToArray();
        foreach (byte[][] path in _claimPaths)
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThan(path.Length, MaxRolesPathSegments);
        }
        _claimValues = options.RequiredClaims.Select(c => Encoding.UTF8.GetBytes(c.Value)).ToArray();
        _allClaims = Mask(_claimPaths.Length);
        _forwarding = options.ForwardIdentity is { IsEmpty: false } forward ? new IdentityForwarding(forward) : null;
        _skewSeconds = (long)Math.Ceiling(options.ClockSkew.TotalSeconds);
        KeptCache = running is not null && ReferenceEquals(running._time, _time) && SameCache(running.Options, options);
        _cache = KeptCache ? running!._cache : new VerifiedTokenCache(options.CacheCapacity);
        // A cache entry holds only while the policy's key set is the instance it was verified against: a kept cache
        // keeps hitting with the running filter's array (SameCache found the file's content identical), a new one
        // starts from its own copy. A jwks_url policy reads the source's set instead (KeptCache: the same source).
        _keys = KeptCache && options.KeySource is null ? running!._keys : [.. options.Keys];

        string name = options.PolicyName;
        _challenges = new byte[s_details.Length][];
        _bodies = new byte[s_details.Length][];
        for (int i = 1; i < s_details.Length; i++)
        {
            var result = (JwtResult)i;
            // RFC 6750 section 3: auth-param values are quoted strings; policy names and scopes are validated to
            // need no escaping.
            string challenge = $"Bearer realm=\"{name}\"";
            string detail;
            if (result == JwtResult.Missing)
            {
                detail = $"A bearer token is required by policy '{name}'.";
            }
            else if (result == JwtResult.InsufficientScope)
            {
                challenge += $", error=\"insufficient_scope\", error_description=\"{s_descriptions[i]}\", scope=\"{string.Join(' ', options.RequiredScopes)}\"";
                detail = options.AllScopes || options.RequiredScopes.Count == 1
                    ? $"Policy '{name}' requires the scopes: {string.Join(' ', options.RequiredScopes)}."
                    : $"Policy '{name}' requires one of the scopes: {string.Join(' ', options.RequiredScopes)}.";
            }
            else if (result == JwtResult.InsufficientRole)
            {
                // RFC 6750 section 3.1: insufficient_scope is the code for "more privileges than the token carries".
                challenge += $", error=\"insufficient_scope\", error_description=\"{s_descriptions[i]}\"";
                detail = options.AllRoles || options.RequiredRoles.Count == 1
                    ? $"Policy '{name}' requires the roles: {string.Join(' ', options.RequiredRoles)}."
                    : $"Policy '{name}' requires one of the roles: {string.Join(' ', options.RequiredRoles)}.";
            }
            else if (result == JwtResult.ClaimMismatch)
            {
                challenge += $", error=\"insufficient_scope\", error_description=\"{s_descriptions[i]}\"";
                // Names only: the expected values may be internal (tenant ids) and are not echoed.
                detail = $"Policy '{name}' requires the claims: {string.Join(' ', options.RequiredClaims.Select(c => c.Key))}.";
            }
            else
            {
                challenge += $", error=\"invalid_token\", error_description=\"{s_descriptions[i]}\"";
                detail = $"{s_descriptions[i]} (policy '{name}').";
            }
            _challenges[i] = Encoding.ASCII.GetBytes(challenge);
            _bodies[i] = IsForbidden(result)
                ? RateLimitFilter.BuildProblem(403, "Forbidden", detail)
                : RateLimitFilter.BuildProblem(401, "Unauthorized", detail);
        }
    }

    public JwtOptions Options { get; }

    /// <summary>True when this filter took over the verified-token cache of the filter it replaced on a reload.</summary>
    internal bool KeptCache { get; }

    /// <summary>
    /// Whether a token cached as verified under <paramref name="running"/> may count as verified under
    /// <paramref name="next"/>, with the same subject and client id: the same key source (the very <see cref="JwksSource"/>, which a reload
    /// keeps when <c>jwks_url</c>, <c>jwks_refresh</c> and <c>jwks_min_refetch</c> are unchanged, or a jwks_file of
    /// identical content: the same keys, hence the same algorithms), the same issuer, audiences, required scopes,
    /// roles and claims with their modes and roles claim, the same clock skew (an entry's expiry includes it) and the
    /// same cache size. Lists compare in order: a reordered list is taken as a change, which only costs a fresh cache.
    /// <c>forward_identity</c> does not count: an entry keeps the subject and client id whatever is forwarded, and
    /// the identity comes from the registered claims alone. Anything else changed: the policy starts with an empty
    /// cache.
    /// </summary>
    internal static bool SameCache(JwtOptions running, JwtOptions next)
    {
        bool sameKeys = next.KeySource is not null
            ? ReferenceEquals(running.KeySource, next.KeySource)
            : running.KeySource is null && running.KeySetSha256 is { } was && next.KeySetSha256 is { } now && was.AsSpan().SequenceEqual(now);
        return sameKeys && running.PolicyName == next.PolicyName && running.Issuer == next.Issuer
            && running.Audiences.SequenceEqual(next.Audiences, StringComparer.Ordinal)
            && running.RequiredScopes.SequenceEqual(next.RequiredScopes, StringComparer.Ordinal) && running.AllScopes == next.AllScopes
            && running.RequiredRoles.SequenceEqual(next.RequiredRoles, StringComparer.Ordinal) && running.AllRoles == next.AllRoles
            && running.RolesClaim == next.RolesClaim
            && running.RequiredClaims.Select(c => (c.Key, c.Value)).SequenceEqual(next.RequiredClaims.Select(c => (c.Key, c.Value)))
            && running.ClockSkew == next.ClockSkew && running.CacheCapacity == next.CacheCapacity;
    }

    /// <summary>
    /// Signature checks (tokens that missed the cache and got as far as their key) since the policy was first
    /// compiled: a reload that keeps the policy keeps counting, as <see cref="AllowedCount"/>. Exported as
    /// <c>proxy_jwt_signature_checks_total</c>; against the allowed count it tells how well the cache works.
    /// </summary>
    public long VerificationCount => Volatile.Read(ref _counts.SignatureChecks);

    /// <summary>The key set a token is checked against now: one volatile read of the source's set, or the file's.</summary>
    private JsonWebKey[] CurrentKeys => _source?.Keys ?? _keys;

    /// <summary>Requests let through since the policy was first compiled (a reload that keeps it keeps counting).</summary>
    public long AllowedCount => Volatile.Read(ref _counts.Allowed);

    /// <summary>Requests answered 401 or 403, counted as <see cref="AllowedCount"/>.</summary>
    public long RejectedCount => Volatile.Read(ref _counts.Rejected);

    public static string DetailsCode(JwtResult result) => s_details[(int)result];

    private static ulong Mask(int count) => count == MaxScopes ? ulong.MaxValue : (1UL << count) - 1;

    private static bool IsForbidden(JwtResult result) => result is JwtResult.InsufficientScope or JwtResult.InsufficientRole or JwtResult.ClaimMismatch;

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        byte[]? subject = null, clientId = null;
        context.TryGetHeader("authorization"u8, out ReadOnlySpan<byte> authorization);
        JwtResult result = BearerCredentials.Read(authorization, out ReadOnlySpan<byte> token) switch
        {
            BearerStatus.Token => Validate(token, out subject, out clientId),
            BearerStatus.Malformed => JwtResult.Malformed,
            _ => JwtResult.Missing,
        };
        if (result == JwtResult.Valid)
        {
            context.Identity.SetToken(subject, clientId);
            _forwarding?.Apply(context);
            Interlocked.Increment(ref _counts.Allowed);
            return FilterStatus.Continue;
        }
        return Reject(context, result);
    }

    /// <summary>Checks a token: from the cache when it passed before, else fully (then remembered when it passes).</summary>
    public JwtResult Validate(ReadOnlySpan<byte> token) => Validate(token, out _, out _);

    /// <summary>As <see cref="Validate(ReadOnlySpan{byte})"/>, also giving the token's "sub" and client id (arrays owned by the cache).</summary>
    internal JwtResult Validate(ReadOnlySpan<byte> token, out byte[]? subject, out byte[]? clientId)
    {
        subject = null;
        clientId = null;
        if (token.IsEmpty || token.Length > MaxTokenBytes)
        {
            return JwtResult.Malformed;
        }
        long now = _time.GetUtcNow().ToUnixTimeSeconds();
        // Only the tail is hashed: it is signature bytes, which differ between any two tokens an issuer signs, and a
        // hit still compares the whole token, so a crafted collision costs its sender a miss and nothing else.
        ulong hash = RateLimitFilter.Hash(token[Math.Max(0, token.Length - 48)..]);
        // One read of the key set for the lookup and the check: a background refresh may swap it meanwhile, and an
        // entry must name the set that really verified it (a swap then costs one more check, never a stale pass).
        JsonWebKey[] keys = CurrentKeys;
        if (_cache.TryGet(token, hash, now, keys, out subject, out clientId))
        {
            return JwtResult.Valid;
        }
        JwtResult result = Verify(token, now, keys, out long expires, out subject, out clientId);
        if (result == JwtResult.Valid)
        {
            // Skew included: the cache must not turn a token away earlier than a full check would.
            _cache.Add(token, hash, expires + _skewSeconds, keys, subject, clientId);
        }
        return result;
    }

    /// <summary>A full check without the cache (tests and benchmarks measure this path).</summary>
    public JwtResult Verify(ReadOnlySpan<byte> token, long now, out long expires) => Verify(token, now, CurrentKeys, out expires, out _, out _);

    private JwtResult Verify(ReadOnlySpan<byte> token, long now, JsonWebKey[] keys, out long expires, out byte[]? subject, out byte[]? clientId)
    {
        expires = 0;
        subject = null;
        clientId = null;
        if (token.IsEmpty || token.Length > MaxTokenBytes)
        {
            return JwtResult.Malformed;
        }

        // RFC 7515 section 7.1: BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(signature); a JWE has five
        // parts and is refused by the third-part check.
        int first = token.IndexOf((byte)'.');
        if (first <= 0)
        {
            return JwtResult.Malformed;
        }
        int second = token[(first + 1)..].IndexOf((byte)'.');
        if (second <= 0)
        {
            return JwtResult.Malformed;
        }
        second += first + 1;
        ReadOnlySpan<byte> signatureText = token[(second + 1)..];
        if (signatureText.IsEmpty || signatureText.Contains((byte)'.'))
        {
            return JwtResult.Malformed;
        }
        ReadOnlySpan<byte> signingInput = token[..second];

        // Decoded parts are 3/4 of their text, so one buffer the token's size holds all three.
        byte[] rented = ArrayPool<byte>.Shared.Rent(token.Length);
        try
        {
            Span<byte> buffer = rented;
            if (!Decode(token[..first], buffer, out int headerLength))
            {
                return JwtResult.Malformed;
            }
            ReadOnlySpan<byte> header = buffer[..headerLength];
            buffer = buffer[headerLength..];
            if (!Decode(signatureText, buffer, out int signatureLength))
            {
                return JwtResult.Malformed;
            }
            ReadOnlySpan<byte> signature = buffer[..signatureLength];
            buffer = buffer[signatureLength..];
            if (!Decode(token[(first + 1)..second], buffer, out int payloadLength))
            {
                return JwtResult.Malformed;
            }
            ReadOnlySpan<byte> payload = buffer[..payloadLength];

            JwtResult result = ReadHeader(header, keys, out JwsAlgorithm algorithm, out JsonWebKey? key);
            if (result == JwtResult.Invalid && key is null && _source is not null)
            {
                // A kid we do not hold may be a rotated-in key: fetch again (rate-limited), refuse this token.
                _source.OnUnknownKey();
                if (keys.Length == 0)
                {
                    return JwtResult.KeysUnavailable;
                }
            }
            if (result != JwtResult.Valid)
            {
                return result;
            }
            Interlocked.Increment(ref _counts.SignatureChecks);
            if (!VerifySignature(key!, algorithm, signingInput, signature))
            {
                return JwtResult.Invalid;
            }
            // The claims are read only once the signature vouches for them.
            return CheckClaims(payload, now, out expires, out subject, out clientId);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            // Utf8JsonReader reports malformed JSON only by throwing; this path is a refusal, not steady state. Its
            // GetString and CopyString throw InvalidOperationException for a string whose escapes are not valid UTF-16
            // (a lone surrogate, "\ud800"): claims that are not text make the token malformed, not the filter broken.
            return JwtResult.Malformed;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static bool Decode(ReadOnlySpan<byte> text, Span<byte> destination, out int written)
    {
        // RFC 7515 section 2: base64url without padding, and nothing else. Base64Url.DecodeFromUtf8 also skips
        // whitespace and takes '=' padding: refused first, so a signed token has one spelling, not many.
        written = 0;
        if (text.ContainsAnyExcept(s_base64UrlAlphabet))
        {
            return false;
        }
        OperationStatus status = Base64Url.DecodeFromUtf8(text, destination, out int consumed, out written);
        return status == OperationStatus.Done && consumed == text.Length && written > 0;
    }

    /// <summary>The JOSE header (RFC 7515 section 4.1): "alg" picks the algorithm, "kid" the key; "crit" is refused.</summary>
    private static JwtResult ReadHeader(ReadOnlySpan<byte> header, JsonWebKey[] keys, out JwsAlgorithm algorithm, out JsonWebKey? key)
    {
        algorithm = JwsAlgorithm.Unknown;
        key = null;
        bool hasKid = false;
        var reader = new Utf8JsonReader(header);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            return JwtResult.Malformed;
        }
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            if (reader.ValueTextEquals("alg"u8))
            {
                reader.Read();
                if (reader.TokenType != JsonTokenType.String)
                {
                    return JwtResult.Malformed;
                }
                // "none" (RFC 7518 section 3.6) and anything unknown parse to Unknown; an escaped name is never genuine.
                algorithm = reader.ValueIsEscaped ? JwsAlgorithm.Unknown : JsonWebKeySet.ParseAlgorithm(reader.ValueSpan);
                if (algorithm == JwsAlgorithm.Unknown)
                {
                    return JwtResult.Invalid;
                }
            }
            else if (reader.ValueTextEquals("kid"u8))
            {
                reader.Read();
                if (reader.TokenType != JsonTokenType.String)
                {
                    return JwtResult.Malformed;
                }
                hasKid = true;
                key = null;
                foreach (JsonWebKey candidate in keys)
                {
                    if (candidate.Kid is { } kid && reader.ValueTextEquals(kid))
                    {
                        key = candidate;
                        break;
                    }
                }
            }
            else if (reader.ValueTextEquals("crit"u8))
            {
                // Section 4.1.11: extensions listed in "crit" must be understood; we understand none.
                return JwtResult.Invalid;
            }
            else
            {
                reader.Read();
                reader.Skip();
            }
        }
        if (reader.TokenType != JsonTokenType.EndObject || algorithm == JwsAlgorithm.Unknown)
        {
            return algorithm == JwsAlgorithm.Unknown ? JwtResult.Invalid : JwtResult.Malformed;
        }
        if (!hasKid && keys.Length == 1)
        {
            key = keys[0];
        }
        // The key must be of the algorithm's family: this is what stops "HS256 with the RSA public key as secret".
        return key is not null && key.Accepts(algorithm) ? JwtResult.Valid : JwtResult.Invalid;
    }

    private static bool VerifySignature(JsonWebKey key, JwsAlgorithm algorithm, ReadOnlySpan<byte> data, ReadOnlySpan<byte> signature)
    {
        try
        {
            switch (algorithm)
            {
                case JwsAlgorithm.RS256 or JwsAlgorithm.RS384 or JwsAlgorithm.RS512:
                    // RFC 7518 section 3.3: RSASSA-PKCS1-v1_5.
                    return signature.Length == key.Rsa!.KeySize / 8
                        && key.Rsa.VerifyData(data, signature, Hash(algorithm), RSASignaturePadding.Pkcs1);
                case JwsAlgorithm.PS256 or JwsAlgorithm.PS384 or JwsAlgorithm.PS512:
                    // Section 3.5: RSASSA-PSS with MGF1 and a salt as long as the hash, which is .NET's Pss.
                    return signature.Length == key.Rsa!.KeySize / 8
                        && key.Rsa.VerifyData(data, signature, Hash(algorithm), RSASignaturePadding.Pss);
                case JwsAlgorithm.ES256 or JwsAlgorithm.ES384 or JwsAlgorithm.ES512:
                    // Section 3.4: the signature is R || S, each as long as the curve's field (P-521: 66 bytes).
                    int field = algorithm switch { JwsAlgorithm.ES256 => 32, JwsAlgorithm.ES384 => 48, _ => 66 };
                    return signature.Length == 2 * field
                        && key.ECDsa!.VerifyData(data, signature, Hash(algorithm), DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
                case JwsAlgorithm.EdDSA:
                    // RFC 8037 section 3.1: Ed25519 over the signing input, a 64-byte signature (RFC 8032 section
                    // 5.1.6). NSec verifies spans with the key imported at load: nothing is allocated here.
                    return signature.Length == NSec.Cryptography.SignatureAlgorithm.Ed25519.SignatureSize
                        && NSec.Cryptography.SignatureAlgorithm.Ed25519.Verify(key.Ed25519!, data, signature);
                default:
                    // Section 3.2: HMAC; compared in constant time so the answer's timing says nothing about the MAC.
                    byte[] secret = key.Secret!;
                    Span<byte> mac = stackalloc byte[64];
                    int length = algorithm switch
                    {
                        JwsAlgorithm.HS256 => HMACSHA256.HashData(secret, data, mac),
                        JwsAlgorithm.HS384 => HMACSHA384.HashData(secret, data, mac),
                        _ => HMACSHA512.HashData(secret, data, mac),
                    };
                    // The key must be at least as long as the hash output (section 3.2).
                    return secret.Length >= length && CryptographicOperations.FixedTimeEquals(mac[..length], signature);
            }
        }
        catch (CryptographicException)
        {
            return false;
        }
    }

    private static HashAlgorithmName Hash(JwsAlgorithm algorithm) => algorithm switch
    {
        JwsAlgorithm.RS256 or JwsAlgorithm.PS256 or JwsAlgorithm.ES256 => HashAlgorithmName.SHA256,
        JwsAlgorithm.RS384 or JwsAlgorithm.PS384 or JwsAlgorithm.ES384 => HashAlgorithmName.SHA384,
        _ => HashAlgorithmName.SHA512,
    };

    /// <summary>
    /// The claims (RFC 7519 section 4.1): "exp" is required, "nbf" optional, "iss" and "aud" must match. A claim name
    /// given twice counts only in its lexically last copy (section 4: "use a JSON parser that returns only the
    /// lexically last duplicate member name"), at every level of a path, so every reading below replaces what an
    /// earlier copy gave instead of adding to it.
    /// </summary>
    private JwtResult CheckClaims(ReadOnlySpan<byte> payload, long now, out long expires, out byte[]? subject, out byte[]? clientId)
    {
        expires = 0;
        subject = null;
        clientId = null;
        byte[]? authorizedParty = null;
        ulong roles = 0;
        ulong claims = 0;
        bool hasExpiry = false;
        long notBefore = long.MinValue;
        bool issuerMatches = false;
        bool audienceMatches = false;
        ulong scopeScopes = 0;
        ulong scpScopes = 0;
        var reader = new Utf8JsonReader(payload);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            return JwtResult.Malformed;
        }
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            // Configured claims are read on a copy of the reader, and the claim then goes on to the registered names
            // below: a required claim named client_id or azp checks the value and still gives the identity its id.
            bool isRoles = _roles.Length > 0 && reader.ValueTextEquals(_rolesPath[0]);
            ulong named = _claimPaths.Length == 0 ? 0 : ClaimsNamed(ref reader);
            if (isRoles || named != 0)
            {
                var value = reader;
                value.Read();
                if (isRoles)
                {
                    roles = MatchRoles(value);
                }
                if (named != 0)
                {
                    claims = (claims & ~named) | MatchClaims(value, named);
                }
            }
            if (reader.ValueTextEquals("sub"u8))
            {
                reader.Read();
                subject = reader.TokenType == JsonTokenType.String ? StringBytes(ref reader) : null;
                reader.Skip();
            }
            else if (reader.ValueTextEquals("client_id"u8))
            {
                // RFC 9068 section 2.2: the OAuth client the token was issued to.
                reader.Read();
                clientId = reader.TokenType == JsonTokenType.String ? StringBytes(ref reader) : null;
                reader.Skip();
            }
            else if (reader.ValueTextEquals("azp"u8))
            {
                // OpenID Connect Core section 2: the authorized party, used when there is no client_id.
                reader.Read();
                authorizedParty = reader.TokenType == JsonTokenType.String ? StringBytes(ref reader) : null;
                reader.Skip();
            }
            else if (reader.ValueTextEquals("exp"u8))
            {
                reader.Read();
                if (!TryReadTime(ref reader, out expires))
                {
                    return JwtResult.Malformed;
                }
                hasExpiry = true;
            }
            else if (reader.ValueTextEquals("nbf"u8))
            {
                reader.Read();
                if (!TryReadTime(ref reader, out notBefore))
                {
                    return JwtResult.Malformed;
                }
            }
            else if (reader.ValueTextEquals("iss"u8))
            {
                reader.Read();
                issuerMatches = reader.TokenType == JsonTokenType.String && reader.ValueTextEquals(_issuer);
            }
            else if (reader.ValueTextEquals("aud"u8))
            {
                // Section 4.1.3: a string or an array of strings.
                reader.Read();
                if (reader.TokenType == JsonTokenType.StartArray)
                {
                    bool any = false;
                    while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                    {
                        any |= reader.TokenType == JsonTokenType.String && IsAudience(ref reader);
                        reader.Skip();
                    }
                    audienceMatches = any;
                }
                else
                {
                    audienceMatches = reader.TokenType == JsonTokenType.String && IsAudience(ref reader);
                    reader.Skip();
                }
            }
            else if (reader.ValueTextEquals("scope"u8))
            {
                // RFC 8693 section 4.2 / RFC 6749 section 3.3: space-separated scope tokens.
                reader.Read();
                scopeScopes = reader.TokenType == JsonTokenType.String ? MatchScopeList(ref reader) : 0;
                reader.Skip();
            }
            else if (reader.ValueTextEquals("scp"u8))
            {
                // Azure AD and Okta: an array of scopes (or, from some issuers, a space-separated string).
                reader.Read();
                ulong found = 0;
                if (reader.TokenType == JsonTokenType.StartArray)
                {
                    while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                    {
                        if (reader.TokenType == JsonTokenType.String)
                        {
                            found |= MatchScope(ref reader);
                        }
                        reader.Skip();
                    }
                }
                else if (reader.TokenType == JsonTokenType.String)
                {
                    found = MatchScopeList(ref reader);
                }
                else
                {
                    reader.Skip();
                }
                scpScopes = found;
            }
            else
            {
                reader.Read();
                reader.Skip();
            }
        }
        if (reader.TokenType != JsonTokenType.EndObject || !hasExpiry)
        {
            return JwtResult.Malformed;
        }
        // Section 4.1.4: the current time must be before "exp"; section 4.1.5: not before "nbf". Skew both ways.
        if (now >= expires + _skewSeconds)
        {
            return JwtResult.Expired;
        }
        if (notBefore != long.MinValue && now + _skewSeconds < notBefore)
        {
            return JwtResult.NotYetValid;
        }
        if (!issuerMatches)
        {
            return JwtResult.WrongIssuer;
        }
        if (!audienceMatches)
        {
            return JwtResult.WrongAudience;
        }
        clientId ??= authorizedParty;
        // "scope" and "scp" are two claims (two issuers' spellings): a token's scopes are those of both.
        ulong scopes = scopeScopes | scpScopes;
        if (_scopes.Length > 0 && !(_scopesAll ? (scopes & _allScopes) == _allScopes : scopes != 0))
        {
            return JwtResult.InsufficientScope;
        }
        if (_roles.Length > 0 && !(_rolesAll ? (roles & _allRoles) == _allRoles : roles != 0))
        {
            return JwtResult.InsufficientRole;
        }
        return (claims & _allClaims) == _allClaims ? JwtResult.Valid : JwtResult.ClaimMismatch;
    }

    /// <summary>A string claim's value as bytes (unescaped); allocated once per full verification, then cached.</summary>
    private static byte[] StringBytes(ref Utf8JsonReader reader)
        => reader.ValueIsEscaped || reader.HasValueSequence ? Encoding.UTF8.GetBytes(reader.GetString()!) : reader.ValueSpan.ToArray();

    /// <summary>Bits of the required claims whose path starts at the current top-level name.</summary>
    private ulong ClaimsNamed(ref Utf8JsonReader reader)
    {
        ulong named = 0;
        for (int i = 0; i < _claimPaths.Length; i++)
        {
            if (reader.ValueTextEquals(_claimPaths[i][0]))
            {
                named |= 1UL << i;
            }
        }
        return named;
    }

    /// <summary>
    /// Bits of the <paramref name="named"/> required claims whose value, found along the claim's path from the
    /// top-level <paramref name="value"/>, matches: a string equal to the expected value, an array holding it, or a
    /// number or boolean whose JSON text is it (<c>email_verified: "true"</c>). Each claim is checked against its
    /// own expected value only.
    /// </summary>
    private ulong MatchClaims(Utf8JsonReader value, ulong named)
    {
        ulong found = 0;
        for (ulong bits = named; bits != 0; bits &= bits - 1)
        {
            int i = System.Numerics.BitOperations.TrailingZeroCount(bits);
            var at = value;
            if (TryFollowPath(ref at, _claimPaths[i]) && MatchesValue(ref at, _claimValues[i]))
            {
                found |= 1UL << i;
            }
        }
        return found;
    }

    /// <summary>True when a claim value (an array: one of its elements) is <paramref name="expected"/>; the reader is not moved.</summary>
    private static bool MatchesValue(ref Utf8JsonReader reader, byte[] expected)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            return MatchesScalar(ref reader, expected);
        }
        var copy = reader;
        while (copy.Read() && copy.TokenType != JsonTokenType.EndArray)
        {
            if (MatchesScalar(ref copy, expected))
            {
                return true;
            }
            copy.Skip();
        }
        return false;
    }

    private static bool MatchesScalar(ref Utf8JsonReader reader, byte[] expected) => reader.TokenType switch
    {
        JsonTokenType.String => reader.ValueTextEquals(expected),
        JsonTokenType.Number or JsonTokenType.True or JsonTokenType.False => !reader.HasValueSequence && reader.ValueSpan.SequenceEqual(expected),
        _ => false,
    };

    /// <summary>Bits of the required roles under the roles path, from the top-level claim's <paramref name="value"/>.</summary>
    private ulong MatchRoles(Utf8JsonReader value)
        => TryFollowPath(ref value, _rolesPath) ? MatchList(ref value, _roles) : 0;

    /// <summary>
    /// Moves <paramref name="reader"/>, on the value of the top-level claim <c>path[0]</c>, to the value at the end of
    /// <paramref name="path"/>: at each level the lexically last member of the name (a later copy of an object
    /// replaces an earlier one whole). False when a level is missing or the path runs through a string, number,
    /// array or null. Each level is scanned on a copy of the reader (a struct: no allocation); at most
    /// <see cref="MaxRolesPathSegments"/> levels.
    /// </summary>
    private static bool TryFollowPath(ref Utf8JsonReader reader, byte[][] path)
    {
        for (int level = 1; level < path.Length; level++)
        {
            if (reader.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }
            bool found = false;
            var scan = reader;
            while (scan.Read() && scan.TokenType == JsonTokenType.PropertyName)
            {
                bool match = scan.ValueTextEquals(path[level]);
                scan.Read();
                if (match)
                {
                    reader = scan;
                    found = true;
                }
                scan.Skip();
            }
            if (!found)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Bits of <paramref name="wanted"/> present in a claim that is an array of strings or a space-separated string.</summary>
    private static ulong MatchList(ref Utf8JsonReader reader, byte[][] wanted)
    {
        ulong found = 0;
        if (reader.TokenType == JsonTokenType.StartArray)
        {
            var copy = reader;
            while (copy.Read() && copy.TokenType != JsonTokenType.EndArray)
            {
                if (copy.TokenType == JsonTokenType.String)
                {
                    for (int i = 0; i < wanted.Length; i++)
                    {
                        if (copy.ValueTextEquals(wanted[i]))
                        {
                            found |= 1UL << i;
                        }
                    }
                }
                copy.Skip();
            }
        }
        else if (reader.TokenType == JsonTokenType.String && !reader.ValueIsEscaped && !reader.HasValueSequence)
        {
            foreach (Range range in reader.ValueSpan.Split((byte)' '))
            {
                ReadOnlySpan<byte> item = reader.ValueSpan[range];
                for (int i = 0; i < wanted.Length; i++)
                {
                    if (item.SequenceEqual(wanted[i]))
                    {
                        found |= 1UL << i;
                    }
                }
            }
        }
        return found;
    }

    /// <summary>NumericDate (RFC 7519 section 2): seconds since the epoch, possibly with a fraction (dropped).</summary>
    private static bool TryReadTime(ref Utf8JsonReader reader, out long seconds)
    {
        seconds = 0;
        if (reader.TokenType != JsonTokenType.Number)
        {
            return false;
        }
        if (reader.TryGetInt64(out seconds))
        {
            return true;
        }
        if (reader.TryGetDouble(out double value) && value is > -1e15 and < 1e15)
        {
            seconds = (long)Math.Floor(value);
            return true;
        }
        return false;
    }

    private bool IsAudience(ref Utf8JsonReader reader)
    {
        foreach (byte[] audience in _audiences)
        {
            if (reader.ValueTextEquals(audience))
            {
                return true;
            }
        }
        return false;
    }

    private ulong MatchScope(ref Utf8JsonReader reader)
    {
        ulong found = 0;
        for (int i = 0; i < _scopes.Length; i++)
        {
            if (reader.ValueTextEquals(_scopes[i]))
            {
                found |= 1UL << i;
            }
        }
        return found;
    }

    private ulong MatchScopeList(ref Utf8JsonReader reader)
    {
        if (_scopes.Length == 0)
        {
            return 0;
        }
        if (!reader.ValueIsEscaped && !reader.HasValueSequence)
        {
            return MatchScopeList(reader.ValueSpan);
        }
        // Escapes in a scope string are legal JSON but rare: unescape into a rented buffer.
        byte[] rented = ArrayPool<byte>.Shared.Rent(reader.ValueSpan.Length);
        try
        {
            int length = reader.CopyString(rented);
            return MatchScopeList(rented.AsSpan(0, length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private ulong MatchScopeList(ReadOnlySpan<byte> list)
    {
        ulong found = 0;
        foreach (Range range in list.Split((byte)' '))
        {
            ReadOnlySpan<byte> scope = list[range];
            for (int i = 0; i < _scopes.Length; i++)
            {
                if (scope.SequenceEqual(_scopes[i]))
                {
                    found |= 1UL << i;
                }
            }
        }
        return found;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Reject(RequestContext context, JwtResult result)
    {
        Interlocked.Increment(ref _counts.Rejected);
        int i = (int)result;
        // RFC 6750 section 3: every 401 and 403 from a bearer-protected resource carries the challenge.
        context.AddResponseHeader("www-authenticate"u8, _challenges[i]);
        return context.Respond(IsForbidden(result) ? 403 : 401, s_details[i], s_problemJson, _bodies[i]);
    }
}
