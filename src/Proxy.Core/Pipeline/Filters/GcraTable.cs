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
/// <para>Hashing, sets, locking and the way search are <see cref="SetAssociativeTable{TEntry}"/>'s (one spin lock per
/// set); this class keeps the GCRA arithmetic and its eviction rank.</para>
/// </remarks>
internal sealed class GcraTable
{
    /// <summary>Entries per set: 8 x 16 bytes = two cache lines scanned per check.</summary>
    public const int Ways = SetAssociativeTable<Entry>.Ways;

    private readonly SetAssociativeTable<Entry> _table;

    /// <param name="capacity">Total buckets, rounded up to a power of two and at least <see cref="Ways"/>.</param>
    public GcraTable(int capacity) => _table = new SetAssociativeTable<Entry>(capacity);

    public int Capacity => _table.Capacity;

    /// <summary>Bytes held by the table: fixed at construction.</summary>
    public long MemoryBytes => _table.MemoryBytes;

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
        ref Entry victim = ref _table.FindOrClaim(hash, 0, out int set, out bool found);
        try
        {
            // A claimed entry is a new key: it starts as a fully rested bucket.
            long tat = found ? victim.Tat : now;
            // A rested bucket starts from now, never earlier: unused time does not bank beyond the burst.
            long effective = Math.Max(tat, now);
            long next = effective + interval;
            long debt = next - now;
            if (debt > tolerance)
            {
                // Non-conforming: nothing charged. One more request fits once the debt falls to tolerance.
                victim.Tat = tat;
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
            _table.Exit(set);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Entry : ISetEntry
    {
        public ulong Hash;
        public long Tat;

        ulong ISetEntry.Hash
        {
            readonly get => Hash;
            set => Hash = value;
        }

        // An empty entry goes first; then the smallest TAT: an entry whose TAT is in the past is a fully rested
        // bucket, exactly what a new key starts with, so evicting it loses nothing.
        public readonly long EvictionRank(long context) => Hash == 0 ? long.MinValue : Tat;
    }
}
