using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// An entry of a <see cref="SetAssociativeTable{TEntry}"/>: a 64-bit key hash (0 marks an empty entry) and whatever
/// the table keeps per key. Implemented by small structs, so calls through this interface on a
/// <c>TEntry : struct</c> type argument are constrained calls the JIT specialises and inlines: no boxing, no virtual
/// dispatch on the hot path.
/// </summary>
internal interface ISetEntry
{
    ulong Hash { get; set; }

    /// <summary>
    /// How readily this (non-matching) entry gives way to a new key: the entry with the lowest rank in the set is
    /// evicted, the first one on ties. <paramref name="context"/> is what the caller passed to
    /// <see cref="SetAssociativeTable{TEntry}.FindOrClaim"/> (the current quota window, for instance).
    /// </summary>
    long EvictionRank(long context);
}

/// <summary>
/// The skeleton shared by the rate-limit tables (<see cref="GcraTable"/>, <see cref="QuotaTable"/>,
/// <see cref="LocalBudgetTable"/>): per-key state for any number of keys in a fixed amount of memory, allocated once.
/// A key hashes to one set of <see cref="Ways"/> entries; a key not present takes the entry of its set that ranks
/// lowest (<see cref="ISetEntry.EvictionRank"/>), so memory stays bounded whatever the key cardinality, and what each
/// table loses on eviction is its own policy.
/// </summary>
/// <remarks>
/// <para>Concurrency: one spin lock per set (a plain int taken with <see cref="Interlocked.CompareExchange(ref int, int, int)"/>),
/// held by the caller between <see cref="Enter"/> (or <see cref="FindOrClaim"/>) and <see cref="Exit"/> for a few dozen
/// instructions. Different keys rarely share a set, so contention stays on the one key being hammered, which is the
/// contention a rate limiter is for.</para>
/// <para>A readonly struct over two arrays, held in a readonly field of its table: no indirection beyond the arrays,
/// and generic over the entry struct so each table gets its own specialised code.</para>
/// </remarks>
internal readonly struct SetAssociativeTable<TEntry> where TEntry : struct, ISetEntry
{
    /// <summary>Entries per set: 8 entries of 16 to 24 bytes, two or three cache lines scanned per check.</summary>
    public const int Ways = 8;

    private readonly TEntry[] _entries;
    private readonly int[] _locks;
    private readonly int _setMask;

    /// <param name="capacity">Total entries, rounded up to a power of two and at least <see cref="Ways"/>.</param>
    public SetAssociativeTable(int capacity)
    {
        int sets = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, (capacity + Ways - 1) / Ways));
        _entries = new TEntry[sets * Ways];
        _locks = new int[sets];
        _setMask = sets - 1;
    }

    public int Capacity => _entries.Length;

    /// <summary>Bytes held by the table: fixed at construction.</summary>
    public long MemoryBytes => (long)_entries.Length * Unsafe.SizeOf<TEntry>() + (long)_locks.Length * sizeof(int);

    /// <summary>
    /// Normalises <paramref name="hash"/> (0 marks an empty entry, so a key hashing to 0 is stored as 1), locks its
    /// set and returns the set's index; the caller releases it with <see cref="Exit"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Enter(ref ulong hash)
    {
        if (hash == 0)
        {
            hash = 1;
        }
        // High bits pick the set so the low bits that pick nothing still distinguish keys within a set.
        int set = (int)(hash >> 40) & _setMask;
        ref int gate = ref _locks[set];
        if (Interlocked.CompareExchange(ref gate, 1, 0) != 0)
        {
            Contended(ref gate);
        }
        return set;
    }

    /// <summary>Releases the lock of <paramref name="set"/> taken by <see cref="Enter"/> or <see cref="FindOrClaim"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Exit(int set) => Volatile.Write(ref _locks[set], 0);

    /// <summary>The first of the <see cref="Ways"/> entries of <paramref name="set"/> (the set must be locked).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref TEntry First(int set) => ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(_entries), set * Ways);

    /// <summary>
    /// The entry of <paramref name="hash"/> in the locked <paramref name="set"/> (hash as normalised by
    /// <see cref="Enter"/>), or, when absent, a null ref and <paramref name="found"/> false.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref TEntry Find(int set, ulong hash, out bool found)
    {
        ref TEntry slot = ref First(set);
        for (int i = 0; i < Ways; i++)
        {
            ref TEntry e = ref Unsafe.Add(ref slot, i);
            if (e.Hash == hash)
            {
                found = true;
                return ref e;
            }
        }
        found = false;
        return ref Unsafe.NullRef<TEntry>();
    }

    /// <summary>
    /// Locks the set of <paramref name="hash"/> (<paramref name="set"/>, for <see cref="Exit"/>) and returns the key's
    /// entry: its own (<paramref name="found"/> true), or the lowest-ranked entry of the set with <see cref="ISetEntry.Hash"/>
    /// set to the key and every other field left as it was, for the caller to initialise.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref TEntry FindOrClaim(ulong hash, long context, out int set, out bool found)
    {
        set = Enter(ref hash);
        ref TEntry slot = ref First(set);
        int victim = 0;
        long victimRank = long.MaxValue;
        for (int i = 0; i < Ways; i++)
        {
            ref TEntry e = ref Unsafe.Add(ref slot, i);
            if (e.Hash == hash)
            {
                found = true;
                return ref e;
            }
            long rank = e.EvictionRank(context);
            if (rank < victimRank)
            {
                victim = i;
                victimRank = rank;
            }
        }
        ref TEntry claimed = ref Unsafe.Add(ref slot, victim);
        claimed.Hash = hash;
        found = false;
        return ref claimed;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Contended(ref int gate)
    {
        var spin = new SpinWait();
        do
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
        while (Interlocked.CompareExchange(ref gate, 1, 0) != 0);
    }
}
