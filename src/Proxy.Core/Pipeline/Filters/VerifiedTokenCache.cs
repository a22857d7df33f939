using System.Numerics;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Tokens that passed every check of one <c>jwt</c> policy, so a repeated token costs a hash and a compare instead of
/// a signature check. Fixed size and direct-mapped: a new token overwrites whatever shared its slot, so memory is
/// bounded by <c>capacity</c> times the token limit. An entry holds the whole token and a hit compares it byte for
/// byte: a hash collision can only cost a miss, never let a different token through. An entry also names the key set
/// the token was verified against, and a hit requires that set to be still the one in use: when a key leaves the set
/// (a rotation, a compromised key withdrawn), every token is checked again against the new set, as a first sight
/// would be, instead of passing from the cache until it expires.
/// </summary>
/// <remarks>
/// Concurrency: each slot holds a reference to an immutable entry, published with a volatile write and read with a
/// volatile read, so readers see a whole entry or none; a lost race only costs another verification later.
/// </remarks>
internal sealed class VerifiedTokenCache
{
    private sealed class Entry(ulong hash, byte[] token, long expires, JsonWebKey[] keys, byte[]? subject, byte[]? clientId)
    {
        public readonly ulong Hash = hash;
        public readonly byte[] Token = token;
        public readonly long Expires = expires;
        // The key set, by reference: sets are immutable and replaced whole, so the same instance means the same keys.
        public readonly JsonWebKey[] Keys = keys;
        // The token's identity, read once at verification: a hit hands these out without touching the token again.
        public readonly byte[]? Subject = subject;
        public readonly byte[]? ClientId = clientId;
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

    /// <summary>
    /// True when <paramref name="token"/> was verified against <paramref name="keys"/> (the same instance) and is still
    /// before its expiry (unix seconds, skew included).
    /// </summary>
    public bool Contains(ReadOnlySpan<byte> token, ulong hash, long now, JsonWebKey[] keys) => TryGet(token, hash, now, keys, out _, out _);

    /// <summary>As <see cref="Contains"/>, also giving the identity remembered with the token (arrays never changed).</summary>
    public bool TryGet(ReadOnlySpan<byte> token, ulong hash, long now, JsonWebKey[] keys, out byte[]? subject, out byte[]? clientId)
    {
        Entry? entry = Volatile.Read(ref _slots[(int)hash & _mask]);
        if (entry is not null && entry.Hash == hash && now < entry.Expires && ReferenceEquals(entry.Keys, keys) && token.SequenceEqual(entry.Token))
        {
            subject = entry.Subject;
            clientId = entry.ClientId;
            return true;
        }
        subject = null;
        clientId = null;
        return false;
    }

    /// <summary>
    /// Remembers a token verified against <paramref name="keys"/> until <paramref name="expires"/> (unix seconds,
    /// exclusive), or until the policy's key set is another instance.
    /// </summary>
    public void Add(ReadOnlySpan<byte> token, ulong hash, long expires, JsonWebKey[] keys, byte[]? subject = null, byte[]? clientId = null)
        => Volatile.Write(ref _slots[(int)hash & _mask], new Entry(hash, token.ToArray(), expires, keys, subject, clientId));
}
