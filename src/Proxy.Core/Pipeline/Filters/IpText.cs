using System.Buffers.Binary;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Parses an IP address written in ASCII (an X-Forwarded-For entry) into its integer value, with no allocation
/// (<see cref="System.Net.IPAddress.TryParse(ReadOnlySpan{char}, out System.Net.IPAddress?)"/> returns an object).
/// Accepts dotted-quad IPv4 (RFC 791 text form, no leading-zero octal), IPv6 text forms of RFC 4291 section 2.2
/// (including "::" and a trailing dotted quad), an IPv6 address in brackets, and either followed by ":port".
/// </summary>
internal static class IpText
{
    /// <summary>
    /// True when <paramref name="text"/> is an address: an IPv4 value in the low 32 bits with <paramref name="isV4"/>,
    /// else the 128-bit IPv6 value.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> text, out UInt128 value, out bool isV4)
    {
        value = 0;
        isV4 = false;
        if (text.IsEmpty || text.Length > 64)
        {
            return false;
        }
        if (text[0] == (byte)'[')
        {
            // "[v6]" or "[v6]:port".
            int close = text.IndexOf((byte)']');
            if (close < 0 || (close != text.Length - 1 && !IsPort(text[(close + 1)..])))
            {
                return false;
            }
            return TryParseV6(text[1..close], out value);
        }
        int colon = text.IndexOf((byte)':');
        if (colon < 0 || (text.LastIndexOf((byte)':') == colon && IsPort(text[colon..])))
        {
            // "a.b.c.d" or "a.b.c.d:port" (one colon and digits after it).
            isV4 = true;
            if (!TryParseV4(colon < 0 ? text : text[..colon], out uint v4))
            {
                return false;
            }
            value = v4;
            return true;
        }
        return TryParseV6(text, out value);
    }

    private static bool IsPort(ReadOnlySpan<byte> text)
    {
        // ":" 1*5DIGIT
        if (text.Length is < 2 or > 6 || text[0] != (byte)':')
        {
            return false;
        }
        foreach (byte b in text[1..])
        {
            if (!char.IsAsciiDigit((char)b))
            {
                return false;
            }
        }
        return true;
    }

    public static bool TryParseV4(ReadOnlySpan<byte> text, out uint value)
    {
        value = 0;
        int octets = 0;
        int i = 0;
        while (true)
        {
            int start = i;
            int octet = 0;
            while (i < text.Length && char.IsAsciiDigit((char)text[i]))
            {
                octet = octet * 10 + (text[i] - '0');
                i++;
                if (i - start > 3)
                {
                    return false;
                }
            }
            int digits = i - start;
            // A leading zero ("010") is octal to some parsers and decimal to others: refuse the ambiguity.
            if (digits == 0 || octet > 255 || (digits > 1 && text[start] == (byte)'0'))
            {
                return false;
            }
            value = (value << 8) | (uint)octet;
            octets++;
            if (octets == 4)
            {
                return i == text.Length;
            }
            if (i >= text.Length || text[i] != (byte)'.')
            {
                return false;
            }
            i++;
        }
    }

    public static bool TryParseV6(ReadOnlySpan<byte> text, out UInt128 value)
    {
        value = 0;
        Span<ushort> groups = stackalloc ushort[8];
        int count = 0;
        int gap = -1;
        int i = 0;
        if (text.StartsWith("::"u8))
        {
            gap = 0;
            i = 2;
            if (text.Length == 2)
            {
                return true; // "::"
            }
        }
        while (i < text.Length)
        {
            int start = i;
            int group = 0;
            while (i < text.Length && char.IsAsciiHexDigit((char)text[i]))
            {
                group = (group << 4) | HexValue(text[i]);
                i++;
            }
            int digits = i - start;
            if (i < text.Length && text[i] == (byte)'.')
            {
                // RFC 4291 section 2.2 form 3: the last 32 bits as a dotted quad.
                if (count > 6 || !TryParseV4(text[start..], out uint v4))
                {
                    return false;
                }
                groups[count++] = (ushort)(v4 >> 16);
                groups[count++] = (ushort)v4;
                i = text.Length;
                break;
            }
            if (digits is 0 or > 4 || count == 8)
            {
                return false;
            }
            groups[count++] = (ushort)group;
            if (i == text.Length)
            {
                break;
            }
            if (text[i] != (byte)':')
            {
                return false; // a zone ("%eth0") or anything else
            }
            i++;
            if (i < text.Length && text[i] == (byte)':')
            {
                if (gap >= 0)
                {
                    return false; // "::" twice
                }
                gap = count;
                i++;
                if (i == text.Length)
                {
                    break;
                }
            }
            else if (i == text.Length)
            {
                return false; // trailing single ':'
            }
        }
        if (gap < 0 ? count != 8 : count > 7)
        {
            return false;
        }
        Span<byte> bytes = stackalloc byte[16];
        bytes.Clear();
        int tail = gap < 0 ? 0 : count - gap;
        for (int g = 0; g < count; g++)
        {
            int position = gap >= 0 && g >= gap ? 8 - tail + (g - gap) : g;
            BinaryPrimitives.WriteUInt16BigEndian(bytes[(position * 2)..], groups[g]);
        }
        value = BinaryPrimitives.ReadUInt128BigEndian(bytes);
        return true;
    }

    private static int HexValue(byte b) => b <= '9' ? b - '0' : (b | 0x20) - 'a' + 10;
}
