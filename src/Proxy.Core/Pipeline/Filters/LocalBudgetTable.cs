using System.Runtime.InteropServices;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Units of a shared (Redis) limit already charged to this process and not yet spent, per key, each lease valid
/// until a deadline: the local budget that spares most requests a Redis round trip. Same fixed, set-associative
/// layout as <see cref="GcraTable"/>; nothing is allocated per check and the table never grows.
/// </summary>
/// <remarks>
/// Units were charged in Redis when they were leased, so spending them locally can never admit more than the shared
/// limit; a lease that expires or is evicted unspent only wastes units (admits fewer). Hashing, sets, locking (one spin
/// lock per set) and the way search are <see cref="SetAssociativeTable{TEntry}"/>'s.
/// </remarks>
internal sealed class LocalBudgetTable
{
    public const int Ways = SetAssociativeTable<Entry>.Ways;

    private readonly SetAssociativeTable<Entry> _table;

    public LocalBudgetTable(int capacity) => _table = new SetAssociativeTable<Entry>(capacity);

    public long MemoryBytes => _table.MemoryBytes;

    /// <summary>Spends one leased unit of <paramref name="hash"/>; false when it has none valid at <paramref name="now"/>.</summary>
    public bool TryTake(ulong hash, long now)
    {
        int set = _table.Enter(ref hash);
        try
        {
            ref Entry e = ref _table.Find(set, hash, out bool found);
            if (found && e.Units > 0 && e.Expires > now)
            {
                e.Units--;
                return true;
            }
            return false;
        }
        finally
        {
            _table.Exit(set);
        }
    }

    /// <summary>Records <paramref name="units"/> leased for <paramref name="hash"/> until <paramref name="expires"/> (replacing what was left).</summary>
    public void Grant(ulong hash, int units, long expires)
    {
        ref Entry claimed = ref _table.FindOrClaim(hash, 0, out int set, out _);
        claimed.Units = units;
        claimed.Expires = expires;
        _table.Exit(set);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Entry : ISetEntry
    {
        public ulong Hash;
        public long Expires;
        public int Units;

        ulong ISetEntry.Hash
        {
            readonly get => Hash;
            set => Hash = value;
        }

        // Empty entries (Expires 0) and the lease that ends first make way.
        public readonly long EvictionRank(long context) => Expires;
    }
}
