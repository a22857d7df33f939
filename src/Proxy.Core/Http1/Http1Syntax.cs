using System.Buffers;
using System.Runtime.CompilerServices;

namespace Proxy.Http1;

/// <summary>Byte classes of the HTTP/1.1 grammar (RFC 9110 section 5.6, RFC 9112 section 2), as vectorised sets.</summary>
internal static class Http1Syntax
{
    /// <summary>tchar (RFC 9110 section 5.6.2): method and field-name characters.</summary>
    public static readonly SearchValues<byte> Token = SearchValues.Create(
        "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"u8);

    /// <summary>
    /// Bytes never allowed in a field value (RFC 9110 section 5.5): CTLs other than HTAB, and DEL.
    /// obs-text (0x80-0xFF) is allowed, as the grammar says; CR and LF are reported separately by callers.
    /// </summary>
    public static readonly SearchValues<byte> InvalidFieldValue = SearchValues.Create(
        [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
         0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x7F]);

    /// <summary>
    /// Request-target bytes: visible ASCII (RFC 9112 section 3.2) except '#', since a fragment is never
    /// part of a request-target (RFC 9112 section 3.2.1: absolute-path [ "?" query ]).
    /// </summary>
    public static readonly SearchValues<byte> TargetChar = SearchValues.Create(
        "!\"$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"u8);

    /// <summary>
    /// reg-name (RFC 3986 section 3.2.2) without pct-encoded: unreserved and sub-delims. A host name spelled with
    /// escapes ("internal%2Eexample.com") would miss its host route here yet name the same host to an upstream that
    /// decodes it, and no DNS name needs one, so such a Host is refused.
    /// </summary>
    public static readonly SearchValues<byte> RegNameChar = SearchValues.Create(
        "-._~!$&'()*+,;=0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"u8);

    /// <summary>Inside an IP-literal's brackets: IPv6 (hex, ':', '.'), IPvFuture and zone ids (RFC 6874).</summary>
    public static readonly SearchValues<byte> IpLiteralChar = SearchValues.Create(
        ":-._~!$&'()*+,;=%0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"u8);

    /// <summary>Only '.' and '%' can start a dot segment ("." or "%2e"); a path without them skips the segment walk.</summary>
    public static readonly SearchValues<byte> DotOrPercent = SearchValues.Create(".%"u8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool IsOws(byte b) => b == (byte)' ' || b == (byte)'\t';

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int HexValue(byte b)
    {
        int v = b - '0';
        if ((uint)v <= 9)
        {
            return v;
        }
        v = (b | 0x20) - 'a';
        return (uint)v <= 5 ? v + 10 : -1;
    }

    public static bool IsToken(ReadOnlySpan<byte> value) => !value.IsEmpty && value.IndexOfAnyExcept(Token) < 0;

    /// <summary>
    /// Next element of a comma-separated list (RFC 9110 section 5.6.1) with OWS trimmed; empty elements
    /// are returned as empty spans so each caller decides. False once the list is exhausted.
    /// </summary>
    public static bool NextListElement(ReadOnlySpan<byte> list, ref int position, out ReadOnlySpan<byte> element)
    {
        if (position > list.Length)
        {
            element = default;
            return false;
        }
        ReadOnlySpan<byte> rest = list.Slice(position);
        int comma = rest.IndexOf((byte)',');
        ReadOnlySpan<byte> raw = comma < 0 ? rest : rest.Slice(0, comma);
        position += comma < 0 ? rest.Length + 1 : comma + 1;
        element = TrimOws(raw);
        return true;
    }

    public static ReadOnlySpan<byte> TrimOws(ReadOnlySpan<byte> value)
    {
        int start = value.IndexOfAnyExcept((byte)' ', (byte)'\t');
        if (start < 0)
        {
            return default;
        }
        int end = value.LastIndexOfAnyExcept((byte)' ', (byte)'\t');
        return value.Slice(start, end - start + 1);
    }

    /// <summary>
    /// Host field value or authority (RFC 9110 section 7.2, RFC 3986 section 3.2): reg-name or
    /// IP-literal, then optionally ':' and 1-5 digits. An empty value is allowed unless a port is required
    /// (RFC 9112 section 3.2 lets a client send an empty Host when the URI has no authority).
    /// </summary>
    public static bool IsValidHost(ReadOnlySpan<byte> host, bool requirePort)
    {
        if (host.IsEmpty)
        {
            return !requirePort;
        }
        ReadOnlySpan<byte> rest;
        if (host[0] == (byte)'[')
        {
            int close = host.IndexOf((byte)']');
            if (close < 2 || host.Slice(1, close - 1).IndexOfAnyExcept(IpLiteralChar) >= 0)
            {
                return false;
            }
            rest = host.Slice(close + 1);
        }
        else
        {
            int colon = host.IndexOf((byte)':');
            ReadOnlySpan<byte> name = colon < 0 ? host : host.Slice(0, colon);
            if (name.IsEmpty || name.IndexOfAnyExcept(RegNameChar) >= 0)
            {
                return false;
            }
            rest = colon < 0 ? default : host.Slice(colon);
        }
        if (rest.IsEmpty)
        {
            return !requirePort;
        }
        // An empty port ("host:") is legal URI syntax but useless; we refuse it so "host:" and "host" cannot disagree.
        ReadOnlySpan<byte> port = rest.Slice(1);
        return rest[0] == (byte)':' && port.Length is >= 1 and <= 5 && port.IndexOfAnyExceptInRange((byte)'0', (byte)'9') < 0;
    }

    /// <summary>
    /// Decodes, in place, every percent-encoded unreserved character (ALPHA, DIGIT, '-', '.', '_', '~'; RFC 3986
    /// section 2.3) and upper-cases the hex digits of the other escapes, which are kept ("%c3%a9" becomes "%C3%A9":
    /// section 6.2.2.1 makes them equivalent, and routes compare bytes). Returns the new length, or -1 when a '%' is
    /// not followed by two hex digits.
    /// </summary>
    public static int DecodeUnreserved(Span<byte> path)
    {
        int read = path.IndexOf((byte)'%');
        if (read < 0)
        {
            return path.Length;
        }
        int write = read;
        while (read < path.Length)
        {
            byte b = path[read];
            if (b != (byte)'%')
            {
                path[write++] = b;
                read++;
                continue;
            }
            int high, low;
            if (read + 2 >= path.Length || (high = HexValue(path[read + 1])) < 0 || (low = HexValue(path[read + 2])) < 0)
            {
                return -1;
            }
            byte decoded = (byte)((high << 4) | low);
            if (IsUnreserved(decoded))
            {
                path[write++] = decoded;
            }
            else
            {
                path[write] = b;
                path[write + 1] = UpperHexDigit(high);
                path[write + 2] = UpperHexDigit(low);
                write += 3;
            }
            read += 3;
        }
        return write;
    }

    private static byte UpperHexDigit(int value) => (byte)(value < 10 ? '0' + value : 'A' + value - 10);

    /// <summary>
    /// Upper-cases, in place, the hex digits of every well-formed escape ("%2f" to "%2F"; RFC 3986 section 6.2.2.1),
    /// leaving everything else as it is. For route literals, so they compare equal to normalised request paths.
    /// </summary>
    public static void UpperCaseEscapes(Span<byte> value)
    {
        int i = value.IndexOf((byte)'%');
        while (i >= 0 && i + 2 < value.Length)
        {
            if (HexValue(value[i + 1]) >= 0 && HexValue(value[i + 2]) >= 0)
            {
                value[i + 1] = (byte)char.ToUpperInvariant((char)value[i + 1]);
                value[i + 2] = (byte)char.ToUpperInvariant((char)value[i + 2]);
            }
            int next = value.Slice(i + 1).IndexOf((byte)'%');
            i = next < 0 ? -1 : i + 1 + next;
        }
    }

    private static bool IsUnreserved(byte b) =>
        char.IsAsciiLetterOrDigit((char)b) || b is (byte)'-' or (byte)'.' or (byte)'_' or (byte)'~';

    /// <summary>
    /// True when an absolute path holds a dot segment ("." or "..", also percent-encoded as "%2e",
    /// RFC 3986 sections 2.3 and 6.2.2.2 make them equivalent). A gateway that routes "/api/../admin"
    /// by prefix while the upstream normalises it to "/admin" would bypass route-level policy, so such
    /// targets are refused instead of being normalised (RFC 3986 section 5.2.4 would be a rewrite).
    /// </summary>
    public static bool HasDotSegment(ReadOnlySpan<byte> path)
    {
        if (path.IndexOfAny(DotOrPercent) < 0)
        {
            return false;
        }
        int i = 0;
        while (i < path.Length)
        {
            // path[i] is '/' (paths start with one and each segment ends at the next).
            int next = path.Slice(i + 1).IndexOf((byte)'/');
            int end = next < 0 ? path.Length : i + 1 + next;
            if (IsDotSegment(path.Slice(i + 1, end - i - 1)))
            {
                return true;
            }
            i = end;
        }
        return false;
    }

    private static bool IsDotSegment(ReadOnlySpan<byte> segment)
    {
        if (segment.IsEmpty || segment.Length > 6)
        {
            return false;
        }
        int dots = 0;
        int j = 0;
        while (j < segment.Length)
        {
            if (segment[j] == (byte)'.')
            {
                j++;
            }
            else if (segment[j] == (byte)'%' && j + 2 < segment.Length
                && segment[j + 1] == (byte)'2' && (segment[j + 2] | 0x20) == (byte)'e')
            {
                j += 3;
            }
            else
            {
                return false;
            }
            dots++;
        }
        return dots <= 2;
    }
}
