using System.Buffers.Binary;
using System.Numerics;

namespace Proxy.Http2.HPack;

/// <summary>
/// The dynamic table (RFC 7541 section 2.3.2 and 4): FIFO of entries, newest at index 0 (HPACK index 62).
/// <para>
/// Entries' octets live in one ring buffer of <c>capacity</c> bytes, written twice (at p and p + capacity):
/// with that mirror every entry, wrapped or not, is one contiguous span, so lookups hand out slices with no
/// copy. The ring cannot overflow: the octets of live entries never exceed the table size, which never
/// exceeds the capacity. Entry metadata is a second ring sized for the most entries that fit (32 bytes each).
/// </para>
/// <para>
/// An encoder's table also keeps a hash index for <see cref="FindExact"/> (built with <c>indexed: true</c>): a
/// linear scan compared every field of every response against up to a hundred entries (1.3% of the proxy's CPU
/// under h2load in the perf profile). Each entry gets a sequence number; a bucket holds the newest sequence number
/// with its hash, and each entry the next older one with the same bucket, so a chain runs newest to oldest and a
/// lookup stops at the first evicted number: eviction and <see cref="Clear"/> need no unlinking. A decoder never
/// searches its table and does not pay for the index.
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
        /// <summary>Hash of name and value (indexed tables only).</summary>
        public int Hash;
        /// <summary>Sequence number + 1 of the next older entry in the same bucket, 0 for none (indexed tables only).</summary>
        public long NextInBucket;
    }

    private byte[] _buffer;
    private Entry[] _entries;
    private int _capacity;
    private int _newest = -1; // ring index in _entries of the newest entry
    private int _count;
    private int _tail;        // ring offset in _buffer where the next entry goes
    private int _size;
    private int _maxSize;
    /// <summary>Sequence number + 1 of the newest entry per hash bucket, 0 for none; null when not indexed.</summary>
    private long[]? _buckets;
    /// <summary>Entries inserted since the table was built: the next entry's sequence number.</summary>
    private long _inserted;

    /// <param name="capacity">The largest maximum size this table will ever be given (SETTINGS_HEADER_TABLE_SIZE).</param>
    /// <param name="indexed">Keep a hash index for <see cref="FindExact"/> (an encoder's table).</param>
    public HPackDynamicTable(int capacity, bool indexed = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacity);
        _capacity = capacity;
        _buffer = new byte[capacity * 2];
        _entries = new Entry[capacity / EntryOverhead];
        _maxSize = capacity;
        if (indexed)
        {
            // At least twice as many buckets as entries can be live, a power of two for masking.
            _buckets = new long[(int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, _entries.Length * 2))];
        }
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
        Entry entry = new() { Offset = _tail, NameLength = name.Length, ValueLength = value.Length };
        if (_buckets is not null)
        {
            // Hashed from the stored copy: name may point into this table, and the copy above may have moved its source.
            entry.Hash = Hash(new ReadOnlySpan<byte>(_buffer, _tail, name.Length), new ReadOnlySpan<byte>(_buffer, _tail + name.Length, value.Length));
            ref long bucket = ref _buckets[entry.Hash & (_buckets.Length - 1)];
            entry.NextInBucket = bucket;
            bucket = _inserted + 1;
        }
        _entries[_newest] = entry;
        _inserted++;
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
        HPackDynamicTable grown = new(capacity, _buckets is not null) { _maxSize = _maxSize };
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
        _buckets = grown._buckets;
        _inserted = grown._inserted;
    }

    /// <summary>Position (0 = newest) of the entry with this name and value, or -1.</summary>
    public int FindExact(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        if (_buckets is not null)
        {
            return FindExactIndexed(name, value, _buckets);
        }
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

    private int FindExactIndexed(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, long[] buckets)
    {
        int hash = Hash(name, value);
        long next = buckets[hash & (buckets.Length - 1)];
        while (next != 0)
        {
            // Sequence numbers fall along a chain: the first one that is no longer live ends it (the rest are older).
            long position = _inserted - next;
            if (position >= _count)
            {
                return -1;
            }
            ref Entry entry = ref At((int)position);
            if (entry.Hash == hash && entry.NameLength == name.Length && entry.ValueLength == value.Length
                && name.SequenceEqual(new ReadOnlySpan<byte>(_buffer, entry.Offset, entry.NameLength))
                && value.SequenceEqual(new ReadOnlySpan<byte>(_buffer, entry.Offset + entry.NameLength, entry.ValueLength)))
            {
                return (int)position;
            }
            next = entry.NextInBucket;
        }
        return -1;
    }

    /// <summary>
    /// A multiply-xor hash of the lengths and of the first and last 8 octets of name and value: constant time, since
    /// hashing every octet cost as much as the scan it replaces. Fields that differ only in their middle (rare in
    /// practice: dates, ids and etags differ at the end) share a bucket and cost a compare each.
    /// </summary>
    private static int Hash(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        const ulong Multiplier = 0x9E3779B97F4A7C15;
        ulong hash = ((ulong)(uint)name.Length << 32 | (uint)value.Length) * Multiplier;
        hash = Mix(hash, name);
        hash = Mix(hash, value);
        return (int)(hash ^ hash >> 32);

        static ulong Mix(ulong hash, ReadOnlySpan<byte> bytes)
        {
            if (bytes.Length >= 8)
            {
                hash = BitOperations.RotateLeft((hash ^ BinaryPrimitives.ReadUInt64LittleEndian(bytes)) * Multiplier, 29);
                return BitOperations.RotateLeft((hash ^ BinaryPrimitives.ReadUInt64LittleEndian(bytes[^8..])) * Multiplier, 29);
            }
            ulong tail = 0;
            for (int i = 0; i < bytes.Length; i++)
            {
                tail = tail << 8 | bytes[i];
            }
            return BitOperations.RotateLeft((hash ^ tail) * Multiplier, 29);
        }
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
