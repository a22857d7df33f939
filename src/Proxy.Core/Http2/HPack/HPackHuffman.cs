namespace Proxy.Http2.HPack;

/// <summary>
/// The static Huffman code of RFC 7541 appendix B. The code is canonical (codes of one length are
/// consecutive in symbol order), so the table below keeps only each symbol's code length and the codes
/// are rebuilt at start-up.
/// <para>
/// Decoding is a table-driven state machine that consumes 4 bits per step (the nghttp2 design): the
/// 256 states are the internal nodes of the code tree, and each (state, nibble) entry gives the next
/// state and at most one emitted symbol (the shortest code is 5 bits, so a nibble cannot finish two).
/// No branch per bit, 16 KiB of table, and resumable between any two octets.
/// </para>
/// </summary>
internal static class HPackHuffman
{
    private const int Eos = 256;

    // Transition entry layout: bits 0-7 next state, 8-15 symbol, bit 16 "symbol emitted", bit 17 "EOS seen".
    private const uint EmitFlag = 1u << 16;
    private const uint FailFlag = 1u << 17;

    /// <summary>End-of-string verdict per state: 0 accept, else the error (RFC 7541 section 5.2).</summary>
    private static readonly HPackError[] s_accept;
    private static readonly uint[] s_transitions;
    private static readonly uint[] s_codes;

    /// <summary>Code length in bits of each symbol 0..256 (RFC 7541 appendix B, column "len").</summary>
    private static ReadOnlySpan<byte> CodeLengths =>
    [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
        6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
        13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
        15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
        20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
        22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
        26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
        20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
        30,
    ];

    static HPackHuffman()
    {
        ReadOnlySpan<byte> lengths = CodeLengths;

        // Canonical code assignment: shorter codes first, symbol order within a length.
        s_codes = new uint[257];
        uint code = 0;
        int previous = 0;
        for (int length = 5; length <= 30; length++)
        {
            for (int symbol = 0; symbol <= Eos; symbol++)
            {
                if (lengths[symbol] != length)
                {
                    continue;
                }
                code <<= length - previous;
                previous = length;
                s_codes[symbol] = code++;
            }
        }

        // Code tree: children[node * 2 + bit] is an internal node (>= 0) or ~symbol for a leaf.
        int[] children = new int[256 * 2];
        byte[] depth = new byte[256];
        bool[] allOnes = new bool[256];
        Array.Fill(children, int.MinValue);
        allOnes[0] = true;
        int nodes = 1;
        for (int symbol = 0; symbol <= Eos; symbol++)
        {
            int node = 0;
            for (int bit = lengths[symbol] - 1; bit >= 0; bit--)
            {
                int b = (int)(s_codes[symbol] >> bit) & 1;
                ref int child = ref children[node * 2 + b];
                if (bit == 0)
                {
                    child = ~symbol;
                    break;
                }
                if (child == int.MinValue)
                {
                    child = nodes;
                    depth[nodes] = (byte)(depth[node] + 1);
                    allOnes[nodes] = allOnes[node] && b == 1;
                    nodes++;
                }
                node = child;
            }
        }

        s_transitions = new uint[256 * 16];
        s_accept = new HPackError[256];
        for (int state = 0; state < 256; state++)
        {
            // Padding is the most significant bits of EOS (all ones), at most 7 of them.
            s_accept[state] = !allOnes[state] ? HPackError.HuffmanPaddingNotOnes
                : depth[state] > 7 ? HPackError.HuffmanPaddingTooLong
                : HPackError.None;
            for (int nibble = 0; nibble < 16; nibble++)
            {
                int node = state;
                uint entry = 0;
                for (int bit = 3; bit >= 0; bit--)
                {
                    int child = children[node * 2 + ((nibble >> bit) & 1)];
                    if (child >= 0)
                    {
                        node = child;
                        continue;
                    }
                    int symbol = ~child;
                    if (symbol == Eos)
                    {
                        entry |= FailFlag;
                        break;
                    }
                    entry |= EmitFlag | ((uint)symbol << 8);
                    node = 0;
                }
                s_transitions[state * 16 + nibble] = entry | (uint)node;
            }
        }
    }

    /// <summary>Octets the Huffman encoding of <paramref name="source"/> takes (with padding).</summary>
    public static int GetEncodedLength(ReadOnlySpan<byte> source)
    {
        ReadOnlySpan<byte> lengths = CodeLengths;
        long bits = 0;
        foreach (byte b in source)
        {
            bits += lengths[b];
        }
        return (int)((bits + 7) >> 3);
    }

    /// <summary>
    /// Huffman-encodes <paramref name="source"/>, padding the last octet with ones (the EOS prefix).
    /// Returns false if <paramref name="destination"/> is too small.
    /// </summary>
    public static bool TryEncode(ReadOnlySpan<byte> source, Span<byte> destination, out int written)
    {
        ReadOnlySpan<byte> lengths = CodeLengths;
        uint[] codes = s_codes;
        ulong accumulator = 0;
        int bits = 0;
        int i = 0;
        foreach (byte b in source)
        {
            // At most 7 pending bits + 30 code bits: fits in 64.
            accumulator = (accumulator << lengths[b]) | codes[b];
            bits += lengths[b];
            while (bits >= 8)
            {
                if ((uint)i >= (uint)destination.Length)
                {
                    written = 0;
                    return false;
                }
                bits -= 8;
                destination[i++] = (byte)(accumulator >> bits);
            }
        }
        if (bits > 0)
        {
            if ((uint)i >= (uint)destination.Length)
            {
                written = 0;
                return false;
            }
            destination[i++] = (byte)((accumulator << (8 - bits)) | (0xFFu >> bits));
        }
        written = i;
        return true;
    }

    /// <summary>
    /// Decodes a whole Huffman literal. <see cref="HPackError.HeaderListTooLarge"/> means
    /// <paramref name="destination"/> was too small.
    /// </summary>
    public static HPackError Decode(ReadOnlySpan<byte> source, Span<byte> destination, out int written)
    {
        int state = 0;
        written = 0;
        HPackError error = DecodeChunk(source, ref state, destination, ref written);
        return error != HPackError.None ? error : Finish(state);
    }

    /// <summary>
    /// Decodes part of a literal, carrying the state to the next part; appends to <paramref name="destination"/>
    /// at <paramref name="written"/>. Output beyond the destination is <see cref="HPackError.HeaderListTooLarge"/>.
    /// </summary>
    public static HPackError DecodeChunk(ReadOnlySpan<byte> source, ref int state, Span<byte> destination, ref int written)
    {
        uint[] table = s_transitions;
        int s = state;
        int w = written;
        foreach (byte b in source)
        {
            uint high = table[(s << 4) | (b >> 4)];
            uint low = table[((int)(high & 0xFF) << 4) | (b & 0x0F)];
            if (((high | low) & FailFlag) != 0)
            {
                return HPackError.HuffmanEos;
            }
            if ((high & EmitFlag) != 0)
            {
                if ((uint)w >= (uint)destination.Length)
                {
                    return HPackError.HeaderListTooLarge;
                }
                destination[w++] = (byte)(high >> 8);
            }
            if ((low & EmitFlag) != 0)
            {
                if ((uint)w >= (uint)destination.Length)
                {
                    return HPackError.HeaderListTooLarge;
                }
                destination[w++] = (byte)(low >> 8);
            }
            s = (int)(low & 0xFF);
        }
        state = s;
        written = w;
        return HPackError.None;
    }

    /// <summary>Checks the padding once the literal's last octet was decoded (RFC 7541 section 5.2).</summary>
    public static HPackError Finish(int state) => s_accept[state];
}
