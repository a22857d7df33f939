namespace Proxy.Http2.HPack;

/// <summary>
/// The dynamic table (RFC 7541 section 2.3.2 and 4): FIFO of entries, newest at index 0 (HPACK index 62).
/// <para>
/// Entries' octets live in one ring buffer of <c>capacity</c> bytes, written twice (at p and p + capacity):
/// with that mirror every entry, wrapped or not, is one contiguous span, so lookups hand out slices with no
/// copy. The ring cannot overflow: the octets of live entries never exceed the table size, which never
/// exceeds the capacity. Entry metadata is a second ring sized for the most entries that fit (32 bytes each).
/// </para>
/// Not thread-safe: one per connection direction, used by the connection's loop only.
/// </summary>
internal sealed class HPackDynamicTable
{
    /// <summary>RFC 7541 section 4.1: an entry's size counts 32 octets of overhead.</summary>
    public const int EntryOverhead = 32;

    private struct Entry
    {
        public int Offset;
        public int NameLength;
        public int ValueLength;
    }

    private byte[] _buffer;
    private Entry[] _entries;
    private int _capacity;
    private int _newest = -1; // ring index in _entries of the newest entry
    private int _count;
    private int _tail;        // ring offset in _buffer where the next entry goes
    private int _size;
    private int _maxSize;

    /// <param name="capacity">The largest maximum size this table will ever be given (SETTINGS_HEADER_TABLE_SIZE).</param>
    public HPackDynamicTable(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacity);
        _capacity = capacity;
        _buffer = new byte[capacity * 2];
        _entries = new Entry[capacity / EntryOverhead];
        _maxSize = capacity;
    }

    public int Count => _count;

    /// <summary>Current size (RFC 7541 section 4.1).</summary>
    public int Size => _size;

    public int MaxSize => _maxSize;

    public int Capacity => _capacity;

    /// <summary>Name of the entry at 0-based position <paramref name="index"/> from the newest.</summary>
    public ReadOnlySpan<byte> Name(int index)
    {
        ref Entry entry = ref At(index);
        return new ReadOnlySpan<byte>(_buffer, entry.Offset, entry.NameLength);
    }

    public ReadOnlySpan<byte> Value(int index)
    {
        ref Entry entry = ref At(index);
        return new ReadOnlySpan<byte>(_buffer, entry.Offset + entry.NameLength, entry.ValueLength);
    }

    public int EntrySize(int index)
    {
        ref Entry entry = ref At(index);
        return entry.NameLength + entry.ValueLength + EntryOverhead;
    }

    /// <summary>
    /// Adds an entry, evicting from the oldest first (RFC 7541 section 4.4). An entry larger than the maximum
    /// size empties the table and is not added. <paramref name="name"/> may point into this table (a literal
    /// with an indexed name): the copy is a memmove, and the new entry never overlaps a live one.
    /// </summary>
    public void Insert(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        int length = name.Length + value.Length;
        int entrySize = length + EntryOverhead;
        if (entrySize > _maxSize)
        {
            Clear();
            return;
        }
        EvictTo(_maxSize - entrySize);

        Span<byte> target = _buffer.AsSpan(_tail, length);
        name.CopyTo(target);
        value.CopyTo(target[name.Length..]);
        Mirror(_tail, length);

        _newest = _newest + 1 == _entries.Length ? 0 : _newest + 1;
        _entries[_newest] = new Entry { Offset = _tail, NameLength = name.Length, ValueLength = value.Length };
        _count++;
        _size += entrySize;
        _tail += length;
        if (_tail >= _capacity)
        {
            _tail -= _capacity;
        }
    }

    /// <summary>Sets the maximum size, evicting as needed (RFC 7541 section 4.3).</summary>
    public void SetMaxSize(int maxSize)
    {
        if ((uint)maxSize > (uint)_capacity)
        {
            ThrowMaxSizeAboveCapacity();
        }
        _maxSize = maxSize;
        EvictTo(maxSize);
    }

    /// <summary>Grows the capacity, keeping the entries (control plane: a new SETTINGS value).</summary>
    public void EnsureCapacity(int capacity)
    {
        if (capacity <= _capacity)
        {
            return;
        }
        HPackDynamicTable grown = new(capacity) { _maxSize = _maxSize };
        for (int i = _count - 1; i >= 0; i--)
        {
            grown.Insert(Name(i), Value(i));
        }
        _buffer = grown._buffer;
        _entries = grown._entries;
        _capacity = grown._capacity;
        _newest = grown._newest;
        _count = grown._count;
        _tail = grown._tail;
        _size = grown._size;
    }

    /// <summary>Position (0 = newest) of the entry with this name and value, or -1.</summary>
    public int FindExact(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        for (int i = 0; i < _count; i++)
        {
            ref Entry entry = ref At(i);
            if (entry.NameLength == name.Length && entry.ValueLength == value.Length
                && name.SequenceEqual(new ReadOnlySpan<byte>(_buffer, entry.Offset, entry.NameLength))
                && value.SequenceEqual(new ReadOnlySpan<byte>(_buffer, entry.Offset + entry.NameLength, entry.ValueLength)))
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>Position (0 = newest) of the newest entry with this name, or -1.</summary>
    public int FindName(ReadOnlySpan<byte> name)
    {
        for (int i = 0; i < _count; i++)
        {
            ref Entry entry = ref At(i);
            if (entry.NameLength == name.Length
                && name.SequenceEqual(new ReadOnlySpan<byte>(_buffer, entry.Offset, entry.NameLength)))
            {
                return i;
            }
        }
        return -1;
    }

    private void Clear()
    {
        _count = 0;
        _size = 0;
    }

    private void EvictTo(int size)
    {
        while (_size > size)
        {
            // The oldest entry is _count - 1 places behind the newest.
            _size -= EntrySize(_count - 1);
            _count--;
        }
    }

    /// <summary>Copies [offset, offset + length) to its mirror image so both halves stay equal.</summary>
    private void Mirror(int offset, int length)
    {
        int low = Math.Min(length, _capacity - offset);
        _buffer.AsSpan(offset, low).CopyTo(_buffer.AsSpan(offset + _capacity, low));
        if (length > low)
        {
            _buffer.AsSpan(_capacity, length - low).CopyTo(_buffer.AsSpan(0, length - low));
        }
    }

    private ref Entry At(int index)
    {
        if ((uint)index >= (uint)_count)
        {
            ThrowIndex();
        }
        int slot = _newest - index;
        if (slot < 0)
        {
            slot += _entries.Length;
        }
        return ref _entries[slot];
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void ThrowIndex() => throw new ArgumentOutOfRangeException("index");

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void ThrowMaxSizeAboveCapacity() => throw new ArgumentOutOfRangeException("maxSize");
}
