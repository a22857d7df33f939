using System.Numerics;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Tokens that passed every check of one <c>jwt</c> policy, so a repeated token costs a hash and a compare instead of
/// a signature check. Fixed size and direct-mapped: a new token overwrites whatever shared its slot, so memory is
/// bounded by <c>capacity</c> times the token limit. An entry holds the whole token and a hit compares it byte for
/// byte: a hash collision can only cost a miss, never let a different token through.
/// </summary>
/// <remarks>
/// Concurrency: each slot holds a reference to an immutable entry, published with a volatile write and read with a
/// volatile read, so readers see a whole entry or none; a lost race only costs another verification later.
/// </remarks>
internal sealed class VerifiedTokenCache
{
    private sealed class Entry(ulong hash, byte[] token, long expires)
    {
        public readonly ulong Hash = hash;
        public readonly byte[] Token = token;
        public readonly long Expires = expires;
    }

    private readonly Entry?[] _slots;
    private readonly int _mask;

    public VerifiedTokenCache(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _slots = new Entry?[(int)BitOperations.RoundUpToPowerOf2((uint)capacity)];
        _mask = _slots.Length - 1;
    }

    public int Capacity => _slots.Length;

    /// <summary>True when <paramref name="token"/> was verified and is still before its expiry (unix seconds, skew included).</summary>
    public bool Contains(ReadOnlySpan<byte> token, ulong hash, long now)
    {
        Entry? entry = Volatile.Read(ref _slots[(int)hash & _mask]);
        return entry is not null && entry.Hash == hash && now < entry.Expires && token.SequenceEqual(entry.Token);
    }

    /// <summary>Remembers a verified token until <paramref name="expires"/> (unix seconds, exclusive).</summary>
    public void Add(ReadOnlySpan<byte> token, ulong hash, long expires)
        => Volatile.Write(ref _slots[(int)hash & _mask], new Entry(hash, token.ToArray(), expires));
}
