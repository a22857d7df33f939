using System.Buffers;
using System.Runtime.CompilerServices;

namespace Proxy.Http2.HPack;

/// <summary>
/// HPACK decoder (RFC 7541) for one connection direction. A state machine that can stop after any octet,
/// so a header block is decoded as its HEADERS and CONTINUATION fragments arrive, without reassembling it.
/// <para>
/// Fields go to an <see cref="IHeaderSink"/> as soon as they are complete. Literals are handed out as
/// slices of the input when they are raw and whole in the fragment; otherwise (Huffman, or split between
/// fragments) they are decoded into two buffers rented from the shared pool and kept for the decoder's
/// life, bounded by the header list limit. Steady state allocates nothing.
/// </para>
/// <para>
/// Every error is final: the dynamic table is out of step with the peer, so the connection must end with
/// COMPRESSION_ERROR (<see cref="HPackErrorExtensions.ToHttp2ErrorCode"/>); later calls return the same error.
/// </para>
/// Not thread-safe: owned by the connection's read loop.
/// </summary>
internal sealed class HPackDecoder : IDisposable
{
    /// <summary>SETTINGS_HEADER_TABLE_SIZE initial value (RFC 9113 section 6.5.2).</summary>
    public const int DefaultHeaderTableSize = 4096;
    /// <summary>Matches <c>HttpLimits.MaxHeaderBytes</c>, the HTTP/1.1 head limit.</summary>
    public const int DefaultMaxHeaderListSize = 32 * 1024;

    private const int FieldOverhead = HPackDynamicTable.EntryOverhead;

    private enum State : byte
    {
        Ready,                    // next octet starts a field representation or a size update
        IndexContinuation,        // 6.1 index, continuation octets
        NameIndexContinuation,    // 6.2 name index, continuation octets
        SizeUpdateContinuation,   // 6.3 max size, continuation octets
        NameLength,               // H bit + name length prefix
        NameLengthContinuation,
        Name,                     // name octets
        ValueLength,              // H bit + value length prefix
        ValueLengthContinuation,
        Value,                    // value octets
    }

    private enum Indexing : byte
    {
        Incremental,   // 6.2.1
        Without,       // 6.2.2
        Never,         // 6.2.3
    }

    private readonly HPackDynamicTable _table;
    private readonly int _maxHeaderListSize;
    private int _headerTableSizeSetting;
    private bool _sizeUpdateRequired;
    private HPackError _error;

    // Per header block.
    private bool _fieldSeen;
    private int _listSize;

    // Per field.
    private State _state;
    private Indexing _indexing;
    private int _integer;
    private int _shift;
    private int _nameIndex;        // 0: literal name; 1..61 static; above: dynamic
    private bool _nameInInput;     // the literal name is data[_nameStart.._nameLength] of the current call
    private int _nameStart;
    private int _nameLength;
    private int _valueLength;
    private bool _huffman;
    private int _stringLength;     // encoded octets of the current string
    private int _stringRemaining;  // encoded octets not read yet
    private int _stringLimit;      // most decoded octets the current string may produce
    private int _huffmanState;
    private byte[] _nameBuffer = [];
    private byte[] _valueBuffer = [];

    /// <param name="headerTableSize">Our SETTINGS_HEADER_TABLE_SIZE in force (acknowledged by the peer).</param>
    /// <param name="maxHeaderListSize">Decoded list limit with RFC 9113 SETTINGS_MAX_HEADER_LIST_SIZE semantics.</param>
    public HPackDecoder(int headerTableSize = DefaultHeaderTableSize, int maxHeaderListSize = DefaultMaxHeaderListSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(headerTableSize);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxHeaderListSize, FieldOverhead);
        _table = new HPackDynamicTable(headerTableSize);
        _headerTableSizeSetting = headerTableSize;
        _maxHeaderListSize = maxHeaderListSize;
    }

    public HPackDynamicTable DynamicTable => _table;

    public int MaxHeaderListSize => _maxHeaderListSize;

    /// <summary>
    /// Call when the peer acknowledged a new SETTINGS_HEADER_TABLE_SIZE. A value below the table's current
    /// maximum requires a size update at the start of the next block (RFC 7541 section 4.2).
    /// </summary>
    public void UpdateHeaderTableSize(int headerTableSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(headerTableSize);
        _table.EnsureCapacity(headerTableSize);
        if (headerTableSize < _table.MaxSize)
        {
            _sizeUpdateRequired = true;
        }
        _headerTableSizeSetting = headerTableSize;
    }

    /// <summary>
    /// Decodes one fragment of a header block (the HEADERS, PUSH_PROMISE or a CONTINUATION payload, padding
    /// removed). <paramref name="endHeaders"/> marks the block's last fragment: the block must end on a field
    /// boundary. Fields are delivered to <paramref name="handler"/> during the call.
    /// </summary>
    public HPackError Decode<THandler>(ReadOnlySpan<byte> fragment, bool endHeaders, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        if (_error != HPackError.None)
        {
            return _error;
        }
        HPackError error = DecodeCore(fragment, ref handler);
        if (error == HPackError.None)
        {
            if (endHeaders)
            {
                error = EndBlock();
            }
            else if (_nameInInput)
            {
                // The fragment goes away after this call; the next field octets need the name.
                KeepName(fragment);
            }
        }
        if (error != HPackError.None)
        {
            _error = error;
        }
        return error;
    }

    /// <summary>Decodes a fragment held in a (possibly multi-segment) sequence.</summary>
    public HPackError Decode<THandler>(in ReadOnlySequence<byte> fragment, bool endHeaders, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        if (fragment.IsSingleSegment)
        {
            return Decode(fragment.FirstSpan, endHeaders, ref handler);
        }
        foreach (ReadOnlyMemory<byte> segment in fragment)
        {
            HPackError error = Decode(segment.Span, endHeaders: false, ref handler);
            if (error != HPackError.None)
            {
                return error;
            }
        }
        return endHeaders ? Decode(ReadOnlySpan<byte>.Empty, endHeaders: true, ref handler) : HPackError.None;
    }

    /// <summary>Returns the rented buffers.</summary>
    public void Dispose()
    {
        Return(ref _nameBuffer);
        Return(ref _valueBuffer);
    }

    private HPackError DecodeCore<THandler>(ReadOnlySpan<byte> data, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        int pos = 0;
        HPackError error = HPackError.None;
        while (pos < data.Length && error == HPackError.None)
        {
            switch (_state)
            {
                case State.Ready:
                    error = StartRepresentation(data, ref pos, ref handler);
                    break;
                case State.IndexContinuation:
                case State.NameIndexContinuation:
                case State.SizeUpdateContinuation:
                case State.NameLengthContinuation:
                case State.ValueLengthContinuation:
                    if (HPackInteger.Continue(data[pos++], ref _integer, ref _shift, out error))
                    {
                        error = OnInteger(_integer, data, ref pos, ref handler);
                    }
                    break;
                case State.NameLength:
                case State.ValueLength:
                    // String Literal (5.2): H | String Length (7+), then the octets.
                    byte first = data[pos++];
                    _huffman = (first & 0x80) != 0;
                    if (HPackInteger.StartDecode(first, 7, out int length))
                    {
                        error = OnInteger(length, data, ref pos, ref handler);
                    }
                    else
                    {
                        ContinueInteger(length, _state == State.NameLength ? State.NameLengthContinuation : State.ValueLengthContinuation);
                    }
                    break;
                case State.Name:
                    error = ReadName(data, ref pos);
                    break;
                case State.Value:
                    error = ReadValue(data, ref pos, ref handler);
                    break;
            }
        }
        return error;
    }

    /// <summary>
    /// The first octet of a representation (RFC 7541 section 6):
    /// <code>
    /// 1xxxxxxx  indexed field, 7-bit index                (6.1)
    /// 01xxxxxx  literal, incremental indexing, 6-bit name (6.2.1)
    /// 001xxxxx  dynamic table size update, 5-bit size     (6.3)
    /// 0001xxxx  literal, never indexed, 4-bit name        (6.2.3)
    /// 0000xxxx  literal, without indexing, 4-bit name     (6.2.2)
    /// </code>
    /// </summary>
    private HPackError StartRepresentation<THandler>(ReadOnlySpan<byte> data, ref int pos, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        byte b = data[pos++];
        int prefixBits;
        State continuation;
        if ((b & 0x20) != 0 && (b & 0xC0) == 0)
        {
            // 4.2: size updates only before the first field of a block.
            if (_fieldSeen)
            {
                return HPackError.TableSizeUpdateNotAtStart;
            }
            prefixBits = 5;
            continuation = State.SizeUpdateContinuation;
        }
        else
        {
            if (_sizeUpdateRequired)
            {
                return HPackError.TableSizeUpdateMissing;
            }
            _fieldSeen = true;
            if ((b & 0x80) != 0)
            {
                prefixBits = 7;
                continuation = State.IndexContinuation;
            }
            else
            {
                (_indexing, prefixBits) = (b & 0x40) != 0 ? (Indexing.Incremental, 6)
                    : (b & 0x10) != 0 ? (Indexing.Never, 4)
                    : (Indexing.Without, 4);
                continuation = State.NameIndexContinuation;
            }
        }
        if (HPackInteger.StartDecode(b, prefixBits, out int value))
        {
            _state = continuation;
            return OnInteger(value, data, ref pos, ref handler);
        }
        ContinueInteger(value, continuation);
        return HPackError.None;
    }

    private void ContinueInteger(int prefixValue, State continuation)
    {
        _integer = prefixValue;
        _shift = 0;
        _state = continuation;
    }

    /// <summary>An integer is complete; what it means depends on the state that read it.</summary>
    private HPackError OnInteger<THandler>(int value, ReadOnlySpan<byte> data, ref int pos, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        switch (_state)
        {
            case State.IndexContinuation:
                _state = State.Ready;
                return OnIndexed(value, ref handler);
            case State.NameIndexContinuation:
                return OnNameIndex(value);
            case State.SizeUpdateContinuation:
                _state = State.Ready;
                return OnSizeUpdate(value);
            case State.NameLength:
            case State.NameLengthContinuation:
                BeginString(value, State.Name);
                if (!_huffman && value > Budget(isName: true))
                {
                    return HPackError.HeaderListTooLarge;
                }
                return ReadName(data, ref pos);
            default: // ValueLength, ValueLengthContinuation
                BeginString(value, State.Value);
                if (!_huffman && value > Budget(isName: false))
                {
                    return HPackError.HeaderListTooLarge;
                }
                return ReadValue(data, ref pos, ref handler);
        }
    }

    /// <summary>6.1 Indexed Header Field: both name and value from a table.</summary>
    private HPackError OnIndexed<THandler>(int index, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        if (index == 0)
        {
            return HPackError.IndexZero;
        }
        if (index <= HPackStaticTable.Count)
        {
            if (!TryCount(HPackStaticTable.EntrySize(index)))
            {
                return HPackError.HeaderListTooLarge;
            }
            handler.OnStaticIndexedHeader(index);
            return HPackError.None;
        }
        int dynamic = index - HPackStaticTable.Count - 1;
        if (dynamic >= _table.Count)
        {
            return HPackError.IndexOutOfRange;
        }
        // The bomb guard: each reference to a big entry costs one input octet but counts its full size.
        if (!TryCount(_table.EntrySize(dynamic)))
        {
            return HPackError.HeaderListTooLarge;
        }
        handler.OnHeader(_table.Name(dynamic), _table.Value(dynamic), neverIndexed: false);
        return HPackError.None;
    }

    /// <summary>6.2: index 0 means a literal name follows; otherwise the name comes from a table.</summary>
    private HPackError OnNameIndex(int index)
    {
        if (index == 0)
        {
            _state = State.NameLength;
            return HPackError.None;
        }
        if (index > HPackStaticTable.Count + _table.Count)
        {
            return HPackError.IndexOutOfRange;
        }
        _nameIndex = index;
        _state = State.ValueLength;
        return HPackError.None;
    }

    /// <summary>6.3: the new maximum must not exceed SETTINGS_HEADER_TABLE_SIZE.</summary>
    private HPackError OnSizeUpdate(int size)
    {
        if (size > _headerTableSizeSetting)
        {
            return HPackError.TableSizeUpdateTooLarge;
        }
        _table.SetMaxSize(size);
        _sizeUpdateRequired = false;
        return HPackError.None;
    }

    private void BeginString(int length, State state)
    {
        _state = state;
        _stringLength = length;
        _stringRemaining = length;
        _huffmanState = 0;
    }

    /// <summary>Octets a string may still decode to before the field (with its 32 octets) overflows the list limit.</summary>
    private int Budget(bool isName)
        => _maxHeaderListSize - _listSize - FieldOverhead - (isName ? 0 : CurrentNameLength());

    private HPackError ReadName(ReadOnlySpan<byte> data, ref int pos)
    {
        if (!_huffman && _stringRemaining == _stringLength && data.Length - pos >= _stringLength)
        {
            // Whole raw name in this fragment: point at it.
            _nameInInput = true;
            _nameStart = pos;
            _nameLength = _stringLength;
            pos += _stringLength;
            _state = State.ValueLength;
            return HPackError.None;
        }
        HPackError error = ReadStringPart(data, ref pos, ref _nameBuffer, ref _nameLength, isName: true);
        if (error == HPackError.None && _stringRemaining == 0)
        {
            _state = State.ValueLength;
        }
        return error;
    }

    private HPackError ReadValue<THandler>(ReadOnlySpan<byte> data, ref int pos, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        if (!_huffman && _stringRemaining == _stringLength && data.Length - pos >= _stringLength)
        {
            ReadOnlySpan<byte> value = data.Slice(pos, _stringLength);
            pos += _stringLength;
            return EmitLiteral(data, value, ref handler);
        }
        HPackError error = ReadStringPart(data, ref pos, ref _valueBuffer, ref _valueLength, isName: false);
        if (error == HPackError.None && _stringRemaining == 0)
        {
            error = EmitLiteral(data, _valueBuffer.AsSpan(0, _valueLength), ref handler);
        }
        return error;
    }

    /// <summary>Copies or Huffman-decodes the part of the current string present in <paramref name="data"/>.</summary>
    private HPackError ReadStringPart(ReadOnlySpan<byte> data, ref int pos, ref byte[] buffer, ref int length, bool isName)
    {
        if (_stringRemaining == _stringLength)
        {
            // First octets of this string: size the buffer once. Huffman output is at most 8/5 of the input
            // (shortest code 5 bits) and never more than the list budget; raw output is the length itself.
            int budget = Math.Max(0, Budget(isName));
            _stringLimit = _huffman ? (int)Math.Min(budget, _stringLength * 8L / 5) : _stringLength;
            length = 0;
            EnsureCapacity(ref buffer, _stringLimit);
        }
        int take = Math.Min(_stringRemaining, data.Length - pos);
        ReadOnlySpan<byte> part = data.Slice(pos, take);
        pos += take;
        _stringRemaining -= take;
        if (!_huffman)
        {
            part.CopyTo(buffer.AsSpan(length));
            length += take;
            return HPackError.None;
        }
        HPackError error = HPackHuffman.DecodeChunk(part, ref _huffmanState, buffer.AsSpan(0, _stringLimit), ref length);
        if (error == HPackError.None && _stringRemaining == 0)
        {
            error = HPackHuffman.Finish(_huffmanState);
        }
        return error;
    }

    /// <summary>A literal field is complete: count it, deliver it, then index it if asked (6.2.1).</summary>
    private HPackError EmitLiteral<THandler>(ReadOnlySpan<byte> data, ReadOnlySpan<byte> value, ref THandler handler)
        where THandler : IHeaderSink, allows ref struct
    {
        int nameIndex = _nameIndex;
        ReadOnlySpan<byte> name = nameIndex == 0
            ? (_nameInInput ? data.Slice(_nameStart, _nameLength) : _nameBuffer.AsSpan(0, _nameLength))
            : nameIndex <= HPackStaticTable.Count ? HPackStaticTable.Name(nameIndex)
            : _table.Name(nameIndex - HPackStaticTable.Count - 1);
        if (!TryCount(name.Length + value.Length + FieldOverhead))
        {
            return HPackError.HeaderListTooLarge;
        }
        bool neverIndexed = _indexing == Indexing.Never;
        if (nameIndex is > 0 and <= HPackStaticTable.Count)
        {
            handler.OnStaticIndexedHeader(nameIndex, value, neverIndexed);
        }
        else
        {
            handler.OnHeader(name, value, neverIndexed);
        }
        if (_indexing == Indexing.Incremental)
        {
            // After the handler: the insertion may evict the entry the name came from.
            _table.Insert(name, value);
        }
        _state = State.Ready;
        _nameIndex = 0;
        _nameInInput = false;
        _nameLength = 0;
        _valueLength = 0;
        return HPackError.None;
    }

    private int CurrentNameLength() => _nameIndex == 0 ? _nameLength
        : _nameIndex <= HPackStaticTable.Count ? HPackStaticTable.Name(_nameIndex).Length
        : _table.Name(_nameIndex - HPackStaticTable.Count - 1).Length;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryCount(int fieldSize)
    {
        if (fieldSize > _maxHeaderListSize - _listSize)
        {
            return false;
        }
        _listSize += fieldSize;
        return true;
    }

    private HPackError EndBlock()
    {
        if (_state != State.Ready)
        {
            return HPackError.IncompleteHeaderBlock;
        }
        if (_sizeUpdateRequired)
        {
            return HPackError.TableSizeUpdateMissing;
        }
        _fieldSeen = false;
        _listSize = 0;
        return HPackError.None;
    }

    private void KeepName(ReadOnlySpan<byte> data)
    {
        EnsureCapacity(ref _nameBuffer, _nameLength);
        data.Slice(_nameStart, _nameLength).CopyTo(_nameBuffer);
        _nameInInput = false;
    }

    /// <summary>Grows a pooled buffer (contents are not kept: callers fill it from the start).</summary>
    private static void EnsureCapacity(ref byte[] buffer, int size)
    {
        if (buffer.Length >= size)
        {
            return;
        }
        byte[] old = buffer;
        buffer = ArrayPool<byte>.Shared.Rent(size);
        if (old.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(old);
        }
    }

    private static void Return(ref byte[] buffer)
    {
        if (buffer.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(buffer);
            buffer = [];
        }
    }
}
