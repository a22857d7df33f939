using System.Buffers;
using System.Text;
using System.Text.Json;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// What an introspection response said about a token, reduced to what a policy decides on: whether it is active, when
/// it expires (unix seconds, 0 when the server did not say), who it belongs to, and which of the policy's required
/// scopes it carries (bit i set: required scope i present).
/// </summary>
internal readonly record struct IntrospectionResult(bool Active, long ExpiresAt, byte[]? Subject, byte[]? ClientId, ulong Scopes);

/// <summary>
/// Reads an RFC 7662 section 2.2 introspection response with <see cref="Utf8JsonReader"/>: a JSON object whose
/// <c>active</c> member (REQUIRED, a boolean) decides; <c>exp</c> (NumericDate), <c>sub</c>, <c>client_id</c> and
/// <c>scope</c> (space-separated, RFC 6749 section 3.3) are read when present; every other member is skipped. Runs
/// once per cache miss, so it may allocate the identity arrays it returns.
/// </summary>
internal static class IntrospectionResponseParser
{
    /// <summary>Longest <c>sub</c> or <c>client_id</c> accepted: they become request identity and forwarded headers.</summary>
    public const int MaxIdentityBytes = 4096;

    /// <summary>
    /// Parses <paramref name="json"/>; false when it is not a JSON object with a boolean <c>active</c>, or a known
    /// member has the wrong type (the server is then broken, which is not the client's fault).
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> json, byte[][] requiredScopes, out IntrospectionResult result)
    {
        result = default;
        try
        {
            return TryParseCore(json, requiredScopes, out result);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            // Utf8JsonReader reports malformed JSON by throwing; this is the miss path, off the hot loop. GetString and
            // CopyString throw InvalidOperationException for escapes that are not valid UTF-16 (a lone surrogate).
            return false;
        }
    }

    private static bool TryParseCore(ReadOnlySpan<byte> json, byte[][] requiredScopes, out IntrospectionResult result)
    {
        result = default;
        bool? active = null;
        long expires = 0;
        byte[]? subject = null;
        byte[]? clientId = null;
        ulong scopes = 0;
        var reader = new Utf8JsonReader(json);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            return false;
        }
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            if (reader.ValueTextEquals("active"u8))
            {
                reader.Read();
                if (reader.TokenType is not (JsonTokenType.True or JsonTokenType.False))
                {
                    // Section 2.2: a boolean. A string "true" is not accepted: a server that gets this wrong may get
                    // other things wrong too, and failing closed is the safe reading.
                    return false;
                }
                active = reader.TokenType == JsonTokenType.True;
            }
            else if (reader.ValueTextEquals("exp"u8))
            {
                reader.Read();
                if (!TryReadTime(ref reader, out expires))
                {
                    return false;
                }
            }
            else if (reader.ValueTextEquals("sub"u8) || reader.ValueTextEquals("client_id"u8))
            {
                bool isSubject = reader.ValueTextEquals("sub"u8);
                reader.Read();
                if (reader.TokenType == JsonTokenType.Null)
                {
                    continue;
                }
                if (reader.TokenType != JsonTokenType.String || !TryStringBytes(ref reader, out byte[] value))
                {
                    return false;
                }
                if (isSubject)
                {
                    subject = value;
                }
                else
                {
                    clientId = value;
                }
            }
            else if (reader.ValueTextEquals("scope"u8))
            {
                reader.Read();
                if (reader.TokenType == JsonTokenType.String)
                {
                    scopes = MatchScopes(ref reader, requiredScopes);
                }
                else if (reader.TokenType != JsonTokenType.Null)
                {
                    return false;
                }
            }
            else
            {
                reader.Read();
                reader.Skip();
            }
        }
        if (reader.TokenType != JsonTokenType.EndObject || active is null)
        {
            return false;
        }
        result = new IntrospectionResult(active.Value, expires, subject, clientId, scopes);
        return true;
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
            return seconds > 0;
        }
        if (reader.TryGetDouble(out double value) && value is > 0 and < 1e15)
        {
            seconds = (long)Math.Floor(value);
            return true;
        }
        return false;
    }

    private static bool TryStringBytes(ref Utf8JsonReader reader, out byte[] value)
    {
        value = reader.ValueIsEscaped || reader.HasValueSequence ? Encoding.UTF8.GetBytes(reader.GetString()!) : reader.ValueSpan.ToArray();
        return value.Length <= MaxIdentityBytes;
    }

    /// <summary>Bits of <paramref name="wanted"/> present in a space-separated scope string.</summary>
    private static ulong MatchScopes(ref Utf8JsonReader reader, byte[][] wanted)
    {
        if (wanted.Length == 0)
        {
            return 0;
        }
        if (!reader.ValueIsEscaped && !reader.HasValueSequence)
        {
            return MatchScopes(reader.ValueSpan, wanted);
        }
        byte[] rented = ArrayPool<byte>.Shared.Rent(reader.HasValueSequence ? checked((int)reader.ValueSequence.Length) : reader.ValueSpan.Length);
        try
        {
            int length = reader.CopyString(rented);
            return MatchScopes(rented.AsSpan(0, length), wanted);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    internal static ulong MatchScopes(ReadOnlySpan<byte> list, byte[][] wanted)
    {
        ulong found = 0;
        foreach (Range range in list.Split((byte)' '))
        {
            ReadOnlySpan<byte> scope = list[range];
            for (int i = 0; i < wanted.Length; i++)
            {
                if (scope.SequenceEqual(wanted[i]))
                {
                    found |= 1UL << i;
                }
            }
        }
        return found;
    }
}
