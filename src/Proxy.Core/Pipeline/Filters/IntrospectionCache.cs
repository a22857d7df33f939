using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// SHA-256 of a bearer token, as four words. The cache keys on it instead of the token: entries have a fixed size
/// whatever the token's length, bearer secrets are not kept in the process's memory, and a collision (which would let
/// one token pass for another) is out of reach.
/// </summary>
internal readonly record struct TokenDigest(ulong A, ulong B, ulong C, ulong D)
{
    public static TokenDigest Of(ReadOnlySpan<byte> token)
    {
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(token, hash);
        ReadOnlySpan<ulong> words = MemoryMarshal.Cast<byte, ulong>(hash);
        return new TokenDigest(words[0], words[1], words[2], words[3]);
    }
}

/// <summary>
/// Introspection answers of one policy, keyed by <see cref="TokenDigest"/>. Fixed size (exactly <c>cache_max</c>
/// slots, allocated once), so it never grows: a new entry goes into one of two slots picked by independent words of
/// the digest (two-choice hashing), taking an empty or expired one, else evicting whichever of the two expires sooner.
/// A lookup reads two slots and allocates nothing.
/// </summary>
/// <remarks>
/// Concurrency: each slot holds a reference to an immutable <see cref="IntrospectionCache.Entry"/>, published with a volatile write and
/// read with a volatile read, so a reader sees a whole entry or none. Two writers racing on a slot lose one entry,
/// which only costs a later introspection.
/// </remarks>
internal sealed class IntrospectionCache
{
    /// <summary>One answer, kept until <see cref="ExpiresAt"/> (unix milliseconds, exclusive).</summary>
    internal sealed class Entry(TokenDigest digest, bool active, long expiresAt, byte[]? subject, byte[]? clientId, ulong scopes)
    {
        public readonly TokenDigest Digest = digest;
        public readonly bool Active = active;
        public readonly long ExpiresAt = expiresAt;
        public readonly byte[]? Subject = subject;
        public readonly byte[]? ClientId = clientId;
        /// <summary>Bits of the policy's required scopes the token carries.</summary>
        public readonly ulong Scopes = scopes;
    }

    private readonly Entry?[] _slots;

    public IntrospectionCache(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _slots = new Entry?[capacity];
    }

    public int Capacity => _slots.Length;

    /// <summary>Entries held, live or expired (tests: the bound).</summary>
    public int Count
    {
        get
        {
            int count = 0;
            foreach (Entry? entry in _slots)
            {
                count += entry is null ? 0 : 1;
            }
            return count;
        }
    }

    /// <summary>The live entry for <paramref name="digest"/> at <paramref name="now"/> (unix ms), or null.</summary>
    public Entry? TryGet(in TokenDigest digest, long now)
    {
        Entry? entry = Volatile.Read(ref _slots[First(digest)]);
        if (entry is not null && entry.Digest == digest && now < entry.ExpiresAt)
        {
            return entry;
        }
        entry = Volatile.Read(ref _slots[Second(digest)]);
        return entry is not null && entry.Digest == digest && now < entry.ExpiresAt ? entry : null;
    }

    /// <summary>Stores <paramref name="entry"/>, replacing an older answer for the same token or evicting one.</summary>
    public void Add(Entry entry, long now)
    {
        int first = First(entry.Digest);
        int second = Second(entry.Digest);
        Entry? a = Volatile.Read(ref _slots[first]);
        Entry? b = Volatile.Read(ref _slots[second]);
        int target;
        if (a is null || a.Digest == entry.Digest || a.ExpiresAt <= now)
        {
            target = first;
        }
        else if (b is null || b.Digest == entry.Digest || b.ExpiresAt <= now)
        {
            target = second;
        }
        else
        {
            target = a.ExpiresAt <= b.ExpiresAt ? first : second;
        }
        Volatile.Write(ref _slots[target], entry);
        // The same token may sit in the other slot from an earlier answer: drop it so a lookup cannot find the stale
        // one first.
        int other = target == first ? second : first;
        if (other != target && Volatile.Read(ref _slots[other]) is { } old && old.Digest == entry.Digest)
        {
            Interlocked.CompareExchange(ref _slots[other], null, old);
        }
    }

    private int First(in TokenDigest digest) => (int)(digest.A % (ulong)_slots.Length);

    private int Second(in TokenDigest digest) => (int)(digest.B % (ulong)_slots.Length);
}
