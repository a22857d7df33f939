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
/// key rather than unbounded memory). Hashing, sets, locking (one spin lock per set) and the way
/// search are <see cref="SetAssociativeTable{TEntry}"/>'s.
/// </remarks>
internal sealed class QuotaTable
{
    public const int Ways = SetAssociativeTable<Entry>.Ways;

    private readonly SetAssociativeTable<Entry> _table;

    /// <param name="capacity">Total counters, rounded up to a power of two and at least <see cref="Ways"/>.</param>
    public QuotaTable(int capacity) => _table = new SetAssociativeTable<Entry>(capacity);

    public int Capacity => _table.Capacity;

    public long MemoryBytes => _table.MemoryBytes;

    /// <summary>
    /// Counts one request of <paramref name="hash"/> in <paramref name="window"/> when fewer than
    /// <paramref name="limit"/> were counted; <paramref name="remaining"/> is what is left after it (0 when refused).
    /// </summary>
    public bool TryConsume(ulong hash, long window, long limit, out long remaining)
    {
        ref Entry entry = ref Lock(hash, (int)window, out int set);
        try
        {
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
            _table.Exit(set);
        }
    }

    /// <summary>Takes back one request counted by <see cref="TryConsume"/> (a later check refused the request).</summary>
    public void Refund(ulong hash, long window)
    {
        ref Entry entry = ref Lock(hash, (int)window, out int set);
        if (entry.Count > 0)
        {
            entry.Count--;
        }
        _table.Exit(set);
    }

    /// <summary>Finds or claims the entry of <paramref name="hash"/> for <paramref name="window"/>, with its set locked.</summary>
    private ref Entry Lock(ulong hash, int window, out int set)
    {
        ref Entry entry = ref _table.FindOrClaim(hash, window, out set, out bool found);
        if (!found || entry.Window != window)
        {
            // A claimed entry, or a new window, starts from zero.
            entry.Window = window;
            entry.Count = 0;
        }
        return ref entry;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Entry : ISetEntry
    {
        public ulong Hash;
        // Hours, days or months since the Unix epoch: an int lasts beyond the year 200,000 even in hours.
        public int Window;
        public int Count;

        ulong ISetEntry.Hash
        {
            readonly get => Hash;
            set => Hash = value;
        }

        // Empty first, then a past window (its count is void anyway), then the smallest count of the current window.
        public readonly long EvictionRank(long context) => Hash == 0 ? -2 : Window != (int)context ? -1 : Count;
    }
}
