using System.Buffers;
using Proxy.Http;

namespace Proxy.Diagnostics.Tracing;

/// <summary>
/// W3C Trace Context (Level 1, https://www.w3.org/TR/trace-context/) over bytes: parses and validates
/// <c>traceparent</c> and <c>tracestate</c> field values and formats ours. No allocation: ids stay as lower-case
/// hex in caller-provided buffers, which is also the form they are logged and forwarded in.
/// </summary>
internal static class TraceContext
{
    public const int TraceIdHexLength = 32;
    public const int SpanIdHexLength = 16;

    /// <summary>Length of a version-00 <c>traceparent</c>: <c>00-{32}-{16}-{2}</c>.</summary>
    public const int TraceParentLength = 55;

    /// <summary>Section 3.3.1: at most 32 list members.</summary>
    public const int MaxTraceStateMembers = 32;

    public const byte SampledFlag = 0x01;

    public static ReadOnlySpan<byte> TraceParentName => "traceparent"u8;
    public static ReadOnlySpan<byte> TraceStateName => "tracestate"u8;

    /// <summary>True for <c>traceparent</c> or <c>tracestate</c> (any case).</summary>
    public static bool IsTraceField(ReadOnlySpan<byte> name)
        => (name.Length == 11 && name.EqualsIgnoreCaseAscii(TraceParentName)) || (name.Length == 10 && name.EqualsIgnoreCaseAscii(TraceStateName));

    private static ReadOnlySpan<byte> HexDigits => "0123456789abcdef"u8;

    /// <summary>HEXDIGLC (section 3.2.2): lower-case only; upper case is invalid, not folded.</summary>
    private static readonly SearchValues<byte> s_lowerHex = SearchValues.Create("0123456789abcdef"u8);

    /// <summary>lcalpha / DIGIT / "_" / "-" / "*" / "/" (section 3.3.1.3.1).</summary>
    private static readonly SearchValues<byte> s_keyChars = SearchValues.Create("abcdefghijklmnopqrstuvwxyz0123456789_-*/"u8);

    /// <summary>
    /// Parses a <c>traceparent</c> value (section 3.2):
    /// <code>
    ///   version "-" trace-id "-" parent-id "-" trace-flags
    ///   2HEXDIGLC   32HEXDIGLC   16HEXDIGLC    2HEXDIGLC
    /// </code>
    /// Version ff is invalid; version 00 is exactly 55 bytes; a higher version may be longer when byte 55 is
    /// '-' (section 3.2.4: parse what this version defines, ignore the rest). An all-zero trace-id or parent-id is
    /// invalid. On success the hex ids are copied into <paramref name="traceId"/> (32) and <paramref name="parentId"/> (16).
    /// </summary>
    public static bool TryParseTraceParent(ReadOnlySpan<byte> value, Span<byte> traceId, Span<byte> parentId, out byte flags)
    {
        flags = 0;
        if (value.Length < TraceParentLength)
        {
            return false;
        }
        ReadOnlySpan<byte> version = value[..2];
        if (version.ContainsAnyExcept(s_lowerHex) || (version[0] == (byte)'f' && version[1] == (byte)'f'))
        {
            return false;
        }
        bool v0 = version[0] == (byte)'0' && version[1] == (byte)'0';
        if (value.Length > TraceParentLength && (v0 || value[TraceParentLength] != (byte)'-'))
        {
            return false;
        }
        if (value[2] != (byte)'-' || value[35] != (byte)'-' || value[52] != (byte)'-')
        {
            return false;
        }
        ReadOnlySpan<byte> trace = value.Slice(3, TraceIdHexLength);
        ReadOnlySpan<byte> parent = value.Slice(36, SpanIdHexLength);
        ReadOnlySpan<byte> flagHex = value.Slice(53, 2);
        if (trace.ContainsAnyExcept(s_lowerHex) || parent.ContainsAnyExcept(s_lowerHex) || flagHex.ContainsAnyExcept(s_lowerHex))
        {
            return false;
        }
        // Section 3.2.2.3 and 3.2.2.4: all zeroes is an invalid id.
        if (!trace.ContainsAnyExcept((byte)'0') || !parent.ContainsAnyExcept((byte)'0'))
        {
            return false;
        }
        trace.CopyTo(traceId);
        parent.CopyTo(parentId);
        flags = (byte)((HexValue(flagHex[0]) << 4) | HexValue(flagHex[1]));
        return true;
    }

    /// <summary>Writes <c>00-{traceId}-{spanId}-{flags}</c> (55 bytes; only the sampled bit of <paramref name="flags"/> is kept).</summary>
    public static void FormatTraceParent(Span<byte> destination, ReadOnlySpan<byte> traceId, ReadOnlySpan<byte> spanId, byte flags)
    {
        destination[0] = (byte)'0';
        destination[1] = (byte)'0';
        destination[2] = (byte)'-';
        traceId.CopyTo(destination[3..]);
        destination[35] = (byte)'-';
        spanId.CopyTo(destination[36..]);
        destination[52] = (byte)'-';
        // Section 3.2.2.5: a version-00 writer sets only the flags it knows; we know "sampled".
        destination[53] = (byte)'0';
        destination[54] = (flags & SampledFlag) != 0 ? (byte)'1' : (byte)'0';
    }

    /// <summary>
    /// Checks a <c>tracestate</c> field value (section 3.3.1): comma-separated list members <c>key=value</c>, with
    /// optional spaces and tabs around members and empty members allowed, and counts them into <paramref name="members"/>.
    /// <code>
    ///   key   = simple-key / multi-tenant-key
    ///   simple-key       = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
    ///   multi-tenant-key = tenant-id "@" system-id
    ///   tenant-id        = ( lcalpha / DIGIT ) 0*240( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
    ///   system-id        = lcalpha 0*13( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
    ///   value = 0*255(chr) nblk-chr ; chr = %x20 / nblk-chr ; nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
    /// </code>
    /// </summary>
    public static bool IsValidTraceState(ReadOnlySpan<byte> value, ref int members)
    {
        while (true)
        {
            int comma = value.IndexOf((byte)',');
            ReadOnlySpan<byte> member = Trim(comma < 0 ? value : value[..comma]);
            if (!member.IsEmpty)
            {
                if (++members > MaxTraceStateMembers || !IsValidMember(member))
                {
                    return false;
                }
            }
            if (comma < 0)
            {
                return true;
            }
            value = value[(comma + 1)..];
        }
    }

    /// <summary>
    /// True when a key appears twice among the request's (already validated) <c>tracestate</c> members, in one field or
    /// across several: section 3.3.1.1 requires unique keys, and a vendor could read either value.
    /// </summary>
    public static bool HasDuplicateTraceStateKeys(RequestHead head)
    {
        for (int i = 0; i < head.FieldCount; i++)
        {
            if (!IsTraceStateField(head.Name(i)))
            {
                continue;
            }
            ReadOnlySpan<byte> members = head.Value(i);
            while (NextKey(ref members, out ReadOnlySpan<byte> key))
            {
                ReadOnlySpan<byte> rest = members;
                for (int j = i; j < head.FieldCount; j++)
                {
                    if (j > i)
                    {
                        if (!IsTraceStateField(head.Name(j)))
                        {
                            continue;
                        }
                        rest = head.Value(j);
                    }
                    while (NextKey(ref rest, out ReadOnlySpan<byte> other))
                    {
                        if (other.SequenceEqual(key))
                        {
                            return true;
                        }
                    }
                }
            }
        }
        return false;
    }

    private static bool IsTraceStateField(ReadOnlySpan<byte> name) => name.Length == 10 && name.EqualsIgnoreCaseAscii(TraceStateName);

    /// <summary>The next non-empty member's key (text before '='), consuming the member.</summary>
    private static bool NextKey(ref ReadOnlySpan<byte> members, out ReadOnlySpan<byte> key)
    {
        while (!members.IsEmpty)
        {
            int comma = members.IndexOf((byte)',');
            ReadOnlySpan<byte> member = Trim(comma < 0 ? members : members[..comma]);
            members = comma < 0 ? default : members[(comma + 1)..];
            int equals = member.IndexOf((byte)'=');
            if (equals > 0)
            {
                key = member[..equals];
                return true;
            }
        }
        key = default;
        return false;
    }

    private static bool IsValidMember(ReadOnlySpan<byte> member)
    {
        int equals = member.IndexOf((byte)'=');
        if (equals <= 0)
        {
            return false;
        }
        ReadOnlySpan<byte> key = member[..equals];
        ReadOnlySpan<byte> value = member[(equals + 1)..];
        int at = key.IndexOf((byte)'@');
        if (at < 0)
        {
            if (key.Length > 256 || !IsLowerAlpha(key[0]) || key.ContainsAnyExcept(s_keyChars))
            {
                return false;
            }
        }
        else
        {
            ReadOnlySpan<byte> tenant = key[..at];
            ReadOnlySpan<byte> system = key[(at + 1)..];
            if (tenant.Length is 0 or > 241 || system.Length is 0 or > 14
                || !(IsLowerAlpha(tenant[0]) || char.IsAsciiDigit((char)tenant[0])) || !IsLowerAlpha(system[0])
                || tenant.ContainsAnyExcept(s_keyChars) || system.ContainsAnyExcept(s_keyChars))
            {
                return false;
            }
        }
        if (value.Length is 0 or > 256 || value[^1] == (byte)' ')
        {
            return false;
        }
        foreach (byte b in value)
        {
            if (b is < 0x20 or > 0x7E or (byte)',' or (byte)'=')
            {
                return false;
            }
        }
        return true;
    }

    private static ReadOnlySpan<byte> Trim(ReadOnlySpan<byte> s)
    {
        int start = 0, end = s.Length;
        while (start < end && s[start] is (byte)' ' or (byte)'\t')
        {
            start++;
        }
        while (end > start && s[end - 1] is (byte)' ' or (byte)'\t')
        {
            end--;
        }
        return s[start..end];
    }

    private static bool IsLowerAlpha(byte b) => b is >= (byte)'a' and <= (byte)'z';

    private static int HexValue(byte b) => b <= (byte)'9' ? b - '0' : b - 'a' + 10;

    /// <summary>Fills <paramref name="hex"/> (even length) with random lower-case hex, never all zeroes.</summary>
    public static void RandomHex(Span<byte> hex)
    {
        Span<byte> raw = stackalloc byte[16];
        raw = raw[..(hex.Length / 2)];
        do
        {
            Random.Shared.NextBytes(raw);
        }
        while (!raw.ContainsAnyExcept((byte)0));
        ToHex(raw, hex);
    }

    public static void ToHex(ReadOnlySpan<byte> raw, Span<byte> hex)
    {
        for (int i = 0; i < raw.Length; i++)
        {
            hex[2 * i] = HexDigits[raw[i] >> 4];
            hex[2 * i + 1] = HexDigits[raw[i] & 0xF];
        }
    }

    /// <summary>The low 8 bytes of a hex trace id as a number, for a deterministic sampling decision (as OpenTelemetry's ratio sampler).</summary>
    public static ulong SamplingKey(ReadOnlySpan<byte> traceIdHex)
    {
        ulong key = 0;
        foreach (byte b in traceIdHex[16..])
        {
            key = (key << 4) | (uint)HexValue(b);
        }
        return key;
    }
}
