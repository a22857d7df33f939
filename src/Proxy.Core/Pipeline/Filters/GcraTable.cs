using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Rate-limit state for many keys in a fixed amount of memory: a set-associative table of GCRA buckets (the
/// generic cell rate algorithm, ITU-T I.371; also "leaky bucket as a meter"). Each bucket is one 64-bit key hash
/// and one theoretical arrival time (TAT); nothing is allocated per check and the table never grows.
/// </summary>
/// <remarks>
/// <para>Layout: <c>sets</c> groups of <see cref="Ways"/> entries (16 bytes each, so a set is two cache lines). A key
/// hashes to one set; a key not present takes the entry of its set with the smallest TAT. An entry whose TAT is in
/// the past is a fully rested bucket, exactly what a new key starts with, so evicting it loses nothing; only when
/// every entry of a set is still owed time (a flood of distinct keys) does an active key lose its debt and start
/// over with a full burst. Memory stays bounded whatever the key cardinality.</para>
/// <para>Concurrency: one spin lock per set (a plain int taken with <see cref="Interlocked.CompareExchange(ref int, int, int)"/>),
/// held for a few dozen instructions. Different keys rarely share a set, so contention stays on the one key being
/// hammered, which is the contention a rate limiter is for.</para>
/// </remarks>
internal sealed class GcraTable
{
    /// <summary>Entries per set: 8 x 16 bytes = two cache lines scanned per check.</summary>
    public const int Ways = 8;

    private readonly Entry[] _entries;
    private readonly int[] _locks;
    private readonly int _setMask;

    /// <param name="capacity">Total buckets, rounded up to a power of two and at least <see cref="Ways"/>.</param>
    public GcraTable(int capacity)
    {
        int sets = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, (capacity + Ways - 1) / Ways));
        _entries = new Entry[sets * Ways];
        _locks = new int[sets];
        _setMask = sets - 1;
    }

    public int Capacity => _entries.Length;

    /// <summary>Bytes held by the table: fixed at construction.</summary>
    public long MemoryBytes => (long)_entries.Length * Unsafe.SizeOf<Entry>() + (long)_locks.Length * sizeof(int);

    /// <summary>
    /// One GCRA decision for the bucket of <paramref name="hash"/> at time <paramref name="now"/>: a request costs
    /// <paramref name="interval"/> (the emission interval T = window / rate) and the bucket tolerates
    /// <paramref name="tolerance"/> (tau = T * burst) of debt, so <c>burst</c> requests pass at once from rest and then
    /// one per T.
    /// </summary>
    /// <remarks>
    /// Outputs: <paramref name="remaining"/> requests that would still pass now; <paramref name="resetAfter"/>, the
    /// time until the bucket is full again; <paramref name="retryAfter"/>, when denied, the time until one request
    /// fits (0 when allowed). Returns true when the request conforms (and was charged).
    /// </remarks>
    public bool TryAcquire(ulong hash, long now, long interval, long tolerance, out long remaining, out long resetAfter, out long retryAfter)
    {
        // 0 marks an empty entry.
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
        try
        {
            ref Entry first = ref MemoryMarshal.GetArrayDataReference(_entries);
            ref Entry slot = ref Unsafe.Add(ref first, set * Ways);
            ref Entry victim = ref slot;
            long tat = long.MinValue;
            bool found = false;
            for (int i = 0; i < Ways; i++)
            {
                ref Entry e = ref Unsafe.Add(ref slot, i);
                if (e.Hash == hash)
                {
                    victim = ref e;
                    tat = e.Tat;
                    found = true;
                    break;
                }
                if (e.Tat < victim.Tat || e.Hash == 0)
                {
                    victim = ref e;
                    if (e.Hash == 0)
                    {
                        // An empty entry beats any eviction, but keep looking for the key itself.
                        victim.Tat = long.MinValue;
                    }
                }
            }
            if (!found)
            {
                victim.Hash = hash;
                tat = now;
            }
            // A rested bucket starts from now, never earlier: unused time does not bank beyond the burst.
            long effective = Math.Max(tat, now);
            long next = effective + interval;
            long debt = next - now;
            if (debt > tolerance)
            {
                // Non-conforming: nothing charged. One more request fits once the debt falls to tolerance.
                victim.Tat = found ? tat : now;
                retryAfter = debt - tolerance;
                resetAfter = effective - now;
                remaining = 0;
                return false;
            }
            victim.Tat = next;
            retryAfter = 0;
            resetAfter = debt;
            remaining = (tolerance - debt) / interval;
            return true;
        }
        finally
        {
            Volatile.Write(ref gate, 0);
        }
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

    [StructLayout(LayoutKind.Sequential)]
    private struct Entry
    {
        public ulong Hash;
        public long Tat;
    }
}
