namespace Proxy.Http2.HPack;

/// <summary>
/// Integer representation with an N-bit prefix (RFC 7541 section 5.1).
/// <code>
///   0   1   2   3   4   5   6   7
/// +---+---+---+---+---+---+---+---+
/// | ? | ? | ? | 1   1   1   1   1 |   prefix all ones: value >= 2^N - 1
/// +---+---+---+-------------------+
/// | 1 |    Value-(2^N-1) LSB      |   7 bits per octet, least significant first,
/// +---+---------------------------+   high bit set while more octets follow
/// | 0 |    Value-(2^N-1) MSB      |
/// +---+---------------------------+
/// </code>
/// Decoding is resumable (<see cref="HPackDecoder"/> keeps the partial value in its state); values are
/// capped at 2^31-1, which is more than any length or index we accept.
/// </summary>
internal static class HPackInteger
{
    /// <summary>Continuation shift after which one more octet could overflow 31 bits (5 octets of 7 bits).</summary>
    internal const int MaxShift = 28;

    /// <summary>Octets needed to encode <paramref name="value"/> with an N-bit prefix.</summary>
    public static int GetEncodedLength(int value, int prefixBits)
    {
        int max = (1 << prefixBits) - 1;
        if (value < max)
        {
            return 1;
        }
        int length = 2;
        for (uint rest = (uint)(value - max); rest >= 0x80; rest >>= 7)
        {
            length++;
        }
        return length;
    }

    /// <summary>
    /// Writes <paramref name="value"/> with an N-bit prefix; <paramref name="flags"/> are the bits above the prefix
    /// in the first octet. Returns false, writing nothing useful, if <paramref name="destination"/> is too small.
    /// </summary>
    public static bool TryEncode(int value, int prefixBits, byte flags, Span<byte> destination, out int written)
    {
        int max = (1 << prefixBits) - 1;
        if (destination.IsEmpty)
        {
            written = 0;
            return false;
        }
        if (value < max)
        {
            destination[0] = (byte)(flags | value);
            written = 1;
            return true;
        }
        destination[0] = (byte)(flags | max);
        uint rest = (uint)(value - max);
        int i = 1;
        while (rest >= 0x80)
        {
            if (i == destination.Length)
            {
                written = 0;
                return false;
            }
            destination[i++] = (byte)(rest | 0x80);
            rest >>= 7;
        }
        if (i == destination.Length)
        {
            written = 0;
            return false;
        }
        destination[i++] = (byte)rest;
        written = i;
        return true;
    }

    /// <summary>Starts decoding: true with the value if it fits the prefix, false if continuation octets follow.</summary>
    public static bool StartDecode(byte first, int prefixBits, out int value)
    {
        int max = (1 << prefixBits) - 1;
        value = first & max;
        return value < max;
    }

    /// <summary>
    /// Adds one continuation octet to <paramref name="value"/>; returns true when it was the last one.
    /// Refuses values above 2^31-1 and needless octets past the fifth (e.g. endless 0x80 padding).
    /// </summary>
    public static bool Continue(byte next, ref int value, ref int shift, out HPackError error)
    {
        if (shift > MaxShift)
        {
            error = HPackError.IntegerOverflow;
            return false;
        }
        long sum = value + ((long)(next & 0x7F) << shift);
        if (sum > int.MaxValue)
        {
            error = HPackError.IntegerOverflow;
            return false;
        }
        value = (int)sum;
        shift += 7;
        error = HPackError.None;
        return (next & 0x80) == 0;
    }

    /// <summary>Decodes a complete integer from the front of <paramref name="source"/> (tests and simple callers).</summary>
    public static HPackError TryDecode(ReadOnlySpan<byte> source, int prefixBits, out int value, out int consumed)
    {
        consumed = 0;
        value = 0;
        if (source.IsEmpty)
        {
            return HPackError.IncompleteHeaderBlock;
        }
        consumed = 1;
        if (StartDecode(source[0], prefixBits, out value))
        {
            return HPackError.None;
        }
        int shift = 0;
        while (consumed < source.Length)
        {
            bool done = Continue(source[consumed++], ref value, ref shift, out HPackError error);
            if (error != HPackError.None)
            {
                return error;
            }
            if (done)
            {
                return HPackError.None;
            }
        }
        return HPackError.IncompleteHeaderBlock;
    }
}
