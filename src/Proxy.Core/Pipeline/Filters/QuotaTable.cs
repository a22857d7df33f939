using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Quota counters (requests per calendar window: hour, day, month) for many keys in a fixed amount of memory: the
/// same set-associative layout as <see cref="GcraTable"/>, each entry (16 bytes) a 64-bit key hash, the window it
/// counts and the count. Nothing is allocated per check and the table never grows.
/// </summary>
/// <remarks>
/// A key not present takes, in order of preference, an empty entry, an entry of a past window (its count is void
/// anyway, so evicting it loses nothing), then the entry with the smallest count. Only a flood of distinct keys that
/// all spent quota in the current window evicts a counted key; it then starts the window over (fail-open for that
/// key rather than unbounded memory). Concurrency: one spin lock per set, as in <see cref="GcraTable"/>.
/// </remarks>
internal sealed class QuotaTable
{
    public const int Ways = 8;

    private readonly Entry[] _entries;
    private readonly int[] _locks;
    private readonly int _setMask;

    /// <param name="capacity">Total counters, rounded up to a power of two and at least <see cref="Ways"/>.</param>
    public QuotaTable(int capacity)
    {
        int sets = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, (capacity + Ways - 1) / Ways));
        _entries = new Entry[sets * Ways];
        _locks = new int[sets];
        _setMask = sets - 1;
    }

    public int Capacity => _entries.Length;

    public long MemoryBytes => (long)_entries.Length * Unsafe.SizeOf<Entry>() + (long)_locks.Length * sizeof(int);

    /// <summary>
    /// Counts one request of <paramref name="hash"/> in <paramref name="window"/> when fewer than
    /// <paramref name="limit"/> were counted; <paramref name="remaining"/> is what is left after it (0 when refused).
    /// </summary>
    public bool TryConsume(ulong hash, long window, long limit, out long remaining)
    {
        int index = Lock(hash, (int)window);
        try
        {
            ref Entry entry = ref _entries[index];
            if (entry.Count >= limit)
            {
                remaining = 0;
                return false;
            }
            entry.Count++;
            remaining = limit - entry.Count;
            return true;
        }
        finally
        {
            Volatile.Write(ref _locks[index / Ways], 0);
        }
    }

    /// <summary>Takes back one request counted by <see cref="TryConsume"/> (a later check refused the request).</summary>
    public void Refund(ulong hash, long window)
    {
        int index = Lock(hash, (int)window);
        ref Entry entry = ref _entries[index];
        if (entry.Count > 0)
        {
            entry.Count--;
        }
        Volatile.Write(ref _locks[index / Ways], 0);
    }

    /// <summary>Finds or claims the entry of <paramref name="hash"/> for <paramref name="window"/>, with its set locked.</summary>
    private int Lock(ulong hash, int window)
    {
        if (hash == 0)
        {
            hash = 1;
        }
        int set = (int)(hash >> 40) & _setMask;
        ref int gate = ref _locks[set];
        if (Interlocked.CompareExchange(ref gate, 1, 0) != 0)
        {
            Contended(ref gate);
        }
        ref Entry slot = ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(_entries), set * Ways);
        int victim = 0;
        int victimRank = int.MaxValue;
        int victimCount = int.MaxValue;
        for (int i = 0; i < Ways; i++)
        {
            ref Entry e = ref Unsafe.Add(ref slot, i);
            if (e.Hash == hash)
            {
                if (e.Window != window)
                {
                    // A new window starts from zero.
                    e.Window = window;
                    e.Count = 0;
                }
                return set * Ways + i;
            }
            // Rank: 0 empty, 1 a past window, 2 counting now (the smallest count goes first).
            int rank = e.Hash == 0 ? 0 : e.Window != window ? 1 : 2;
            if (rank < victimRank || (rank == 2 && victimRank == 2 && e.Count < victimCount))
            {
                victim = i;
                victimRank = rank;
                victimCount = e.Count;
            }
        }
        ref Entry claimed = ref Unsafe.Add(ref slot, victim);
        claimed.Hash = hash;
        claimed.Window = window;
        claimed.Count = 0;
        return set * Ways + victim;
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
        // Hours, days or months since the Unix epoch: an int lasts beyond the year 200,000 even in hours.
        public int Window;
        public int Count;
    }
}
