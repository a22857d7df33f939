using System.Text;

namespace Proxy.Http;

/// <summary>What an <c>Authorization</c> field value holds, as the Bearer readers (jwt, introspection, admin API) see it.</summary>
internal enum BearerStatus : byte
{
    /// <summary>No field, or credentials of another scheme (RFC 6750 section 3.1: the challenge carries no error code).</summary>
    Absent,
    /// <summary>The Bearer scheme, but not followed by <c>1*SP token</c>: no token, or a tab before it.</summary>
    Malformed,
    /// <summary>The Bearer scheme and a token (its syntax is left to the reader: a JWS, a b64token, the admin token).</summary>
    Token,
}

/// <summary>
/// One reading of <c>Authorization: Bearer &lt;token&gt;</c> for every Bearer consumer, so they agree on what is a
/// token, what is a broken Bearer credential and what is another scheme.
/// <code>
/// Authorization = credentials                                    (RFC 9110 section 11.6.2)
/// credentials   = auth-scheme [ 1*SP ( token68 / #auth-param ) ] (RFC 9110 section 11.4; scheme case-insensitive)
/// credentials   = "Bearer" 1*SP b64token                         (RFC 6750 section 2.1)
/// field-value is read without its leading and trailing OWS = *( SP / HTAB )  (RFC 9110 section 5.5)
/// </code>
/// Between the scheme and the token only SP counts, as the grammar says and as nginx (<c>"Basic "</c>, then spaces) and
/// Envoy (prefix <c>"Bearer "</c>) read it: <c>Bearer&lt;HTAB&gt;token</c> is a malformed Bearer credential, not a token.
/// </summary>
internal static class BearerCredentials
{
    /// <summary>Reads <paramref name="value"/> (an Authorization field value) without allocating.</summary>
    public static BearerStatus Read(ReadOnlySpan<byte> value, out ReadOnlySpan<byte> token)
    {
        token = default;
        // The wire parsers already drop OWS around a value (HTTP/1.1) or refuse it (HTTP/2); trimming here too keeps the
        // readers right whatever the value came from.
        value = value.Trim(" \t"u8);
        if (value.Length < 6 || !Ascii.EqualsIgnoreCase(value[..6], "Bearer"u8))
        {
            return BearerStatus.Absent;
        }
        if (value.Length == 6)
        {
            return BearerStatus.Malformed;
        }
        ReadOnlySpan<byte> rest = value[6..];
        if (rest[0] != (byte)' ' && rest[0] != (byte)'\t')
        {
            // "Bearerish x": another scheme whose name starts with Bearer.
            return BearerStatus.Absent;
        }
        // Not empty: the value ends in a non-OWS byte after the trim.
        int start = rest.IndexOfAnyExcept(" \t"u8);
        if (rest[..start].Contains((byte)'\t'))
        {
            return BearerStatus.Malformed;
        }
        token = rest[start..];
        return BearerStatus.Token;
    }
}
