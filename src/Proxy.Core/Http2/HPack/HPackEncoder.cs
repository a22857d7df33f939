namespace Proxy.Http2.HPack;

/// <summary>How the encoder may represent a field (RFC 7541 section 6.2).</summary>
internal enum HPackIndexing : byte
{
    /// <summary>Use the tables; add the field to the dynamic table unless it is sensitive or too large.</summary>
    Auto,
    /// <summary>Literal without indexing (6.2.2): a value that will not repeat (content-length, :path with a nonce).</summary>
    WithoutIndexing,
    /// <summary>Literal never indexed (6.2.3): intermediaries must not index it either (credentials).</summary>
    NeverIndexed,
}

/// <summary>
/// HPACK encoder (RFC 7541) for one connection direction. Encodes one field at a time into a caller's span:
/// a full match in the static or dynamic table becomes one indexed octet, otherwise a literal (with the
/// table's name index when there is one), Huffman-coded when that is shorter. Nothing is allocated.
/// <para>
/// <c>authorization</c> and <c>proxy-authorization</c> are always sent "never indexed" in
/// <see cref="HPackIndexing.Auto"/> mode, and so is <c>cookie</c> when the encoder is built with
/// <c>neverIndexCookies</c> (RFC 7541 section 7.1.3: short cookies are guessable through the table).
/// Field names must already be lowercase (RFC 9113 section 8.2.1); the encoder does not check.
/// </para>
/// Not thread-safe: a connection serialises its header blocks (they must be contiguous on the wire anyway).
/// </summary>
internal sealed class HPackEncoder
{
    private readonly HPackDynamicTable _table;
    private readonly bool _neverIndexCookies;
    private readonly bool _huffman;
    private int _smallestPendingSize = -1; // lowest max size set since the last block (RFC 7541 section 4.2)
    private bool _sizeUpdatePending;

    /// <param name="maxTableSize">The largest dynamic table we are willing to keep (0 disables indexing).</param>
    /// <param name="neverIndexCookies">Send cookie fields as "never indexed".</param>
    /// <param name="huffman">Huffman-code strings when shorter (off only to reproduce raw encodings in tests).</param>
    public HPackEncoder(int maxTableSize = HPackDecoder.DefaultHeaderTableSize, bool neverIndexCookies = false,
        bool huffman = true)
    {
        _huffman = huffman;
        _table = new HPackDynamicTable(maxTableSize, indexed: true);
        _neverIndexCookies = neverIndexCookies;
        // The peer's decoder starts at 4096 (SETTINGS_HEADER_TABLE_SIZE default); using less must be announced.
        int initial = Math.Min(maxTableSize, HPackDecoder.DefaultHeaderTableSize);
        _table.SetMaxSize(initial);
        if (initial != HPackDecoder.DefaultHeaderTableSize)
        {
            _sizeUpdatePending = true;
            _smallestPendingSize = initial;
        }
    }

    public HPackDynamicTable DynamicTable => _table;

    /// <summary>
    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed: use min(peer limit, our capacity), and announce the
    /// change at the start of the next block (<see cref="TryBeginHeaderBlock"/>).
    /// </summary>
    public void SetPeerHeaderTableSize(uint peerHeaderTableSize)
    {
        int size = (int)Math.Min(peerHeaderTableSize, (uint)_table.Capacity);
        if (size == _table.MaxSize)
        {
            return;
        }
        _table.SetMaxSize(size);
        _smallestPendingSize = _sizeUpdatePending ? Math.Min(_smallestPendingSize, size) : size;
        _sizeUpdatePending = true;
    }

    /// <summary>
    /// Starts a header block: writes the pending dynamic table size updates (the smallest size reached, then
    /// the final one, RFC 7541 section 4.2). Call before the first field of every block.
    /// </summary>
    public bool TryBeginHeaderBlock(Span<byte> destination, out int written)
    {
        written = 0;
        if (!_sizeUpdatePending)
        {
            return true;
        }
        int total = 0;
        if (_smallestPendingSize < _table.MaxSize)
        {
            if (!HPackInteger.TryEncode(_smallestPendingSize, 5, 0x20, destination, out total))
            {
                return false;
            }
        }
        if (!HPackInteger.TryEncode(_table.MaxSize, 5, 0x20, destination[total..], out int last))
        {
            return false;
        }
        written = total + last;
        _sizeUpdatePending = false;
        return true;
    }

    /// <summary>
    /// Encodes one field. Returns false, leaving the table unchanged, when <paramref name="destination"/> is
    /// too small (the caller flushes what it has into a frame and retries with a fresh span).
    /// </summary>
    public bool TryEncode(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, HPackIndexing indexing,
        Span<byte> destination, out int written)
    {
        bool sensitive = indexing == HPackIndexing.NeverIndexed
            || (indexing == HPackIndexing.Auto && IsSensitive(name));
        int staticIndex = HPackStaticTable.Find(name, value, out bool exact);
        if (!sensitive)
        {
            if (exact)
            {
                return TryEncodeIndexed(staticIndex, destination, out written);
            }
            int dynamic = _table.FindExact(name, value);
            if (dynamic >= 0)
            {
                return TryEncodeIndexed(HPackStaticTable.Count + 1 + dynamic, destination, out written);
            }
        }

        int nameIndex = staticIndex;
        if (nameIndex == 0)
        {
            int dynamicName = _table.FindName(name);
            nameIndex = dynamicName >= 0 ? HPackStaticTable.Count + 1 + dynamicName : 0;
        }
        bool index = indexing == HPackIndexing.Auto && !sensitive
            && name.Length + value.Length + HPackDynamicTable.EntryOverhead <= _table.MaxSize;

        // 6.2.1: 01 + 6-bit index; 6.2.3: 0001 + 4-bit; 6.2.2: 0000 + 4-bit.
        (byte flags, int prefixBits) = index ? ((byte)0x40, 6) : sensitive ? ((byte)0x10, 4) : ((byte)0x00, 4);
        if (!HPackInteger.TryEncode(nameIndex, prefixBits, flags, destination, out int used))
        {
            written = 0;
            return false;
        }
        if (nameIndex == 0)
        {
            if (!TryEncodeString(name, destination[used..], out int nameBytes, _huffman))
            {
                written = 0;
                return false;
            }
            used += nameBytes;
        }
        if (!TryEncodeString(value, destination[used..], out int valueBytes, _huffman))
        {
            written = 0;
            return false;
        }
        written = used + valueBytes;
        if (index)
        {
            _table.Insert(name, value);
        }
        return true;
    }

    /// <summary>6.1 Indexed Header Field: 1 + 7-bit index.</summary>
    public static bool TryEncodeIndexed(int index, Span<byte> destination, out int written)
        => HPackInteger.TryEncode(index, 7, 0x80, destination, out written);

    /// <summary>String Literal (5.2): Huffman when strictly shorter, raw otherwise.</summary>
    public static bool TryEncodeString(ReadOnlySpan<byte> value, Span<byte> destination, out int written,
        bool allowHuffman = true)
    {
        int huffmanLength = allowHuffman ? HPackHuffman.GetEncodedLength(value) : int.MaxValue;
        bool huffman = huffmanLength < value.Length;
        int length = huffman ? huffmanLength : value.Length;
        if (!HPackInteger.TryEncode(length, 7, huffman ? (byte)0x80 : (byte)0, destination, out int prefix)
            || destination.Length - prefix < length)
        {
            written = 0;
            return false;
        }
        if (huffman)
        {
            HPackHuffman.TryEncode(value, destination[prefix..], out _);
        }
        else
        {
            value.CopyTo(destination[prefix..]);
        }
        written = prefix + length;
        return true;
    }

    private bool IsSensitive(ReadOnlySpan<byte> name)
        => name.SequenceEqual("authorization"u8)
        || name.SequenceEqual("proxy-authorization"u8)
        || (_neverIndexCookies && name.SequenceEqual("cookie"u8));
}
