using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Units of a shared (Redis) limit already charged to this process and not yet spent, per key, each lease valid
/// until a deadline: the local budget that spares most requests a Redis round trip. Same fixed, set-associative
/// layout as <see cref="GcraTable"/>; nothing is allocated per check and the table never grows.
/// </summary>
/// <remarks>
/// Units were charged in Redis when they were leased, so spending them locally can never admit more than the shared
/// limit; a lease that expires or is evicted unspent only wastes units (admits fewer). Concurrency: one spin lock per
/// set, as in <see cref="GcraTable"/>.
/// </remarks>
internal sealed class LocalBudgetTable
{
    public const int Ways = 8;

    private readonly Entry[] _entries;
    private readonly int[] _locks;
    private readonly int _setMask;

    public LocalBudgetTable(int capacity)
    {
        int sets = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, (capacity + Ways - 1) / Ways));
        _entries = new Entry[sets * Ways];
        _locks = new int[sets];
        _setMask = sets - 1;
    }

    public long MemoryBytes => (long)_entries.Length * Unsafe.SizeOf<Entry>() + (long)_locks.Length * sizeof(int);

    /// <summary>Spends one leased unit of <paramref name="hash"/>; false when it has none valid at <paramref name="now"/>.</summary>
    public bool TryTake(ulong hash, long now)
    {
        hash = hash == 0 ? 1 : hash;
        int set = (int)(hash >> 40) & _setMask;
        ref int gate = ref Lock(set);
        try
        {
            ref Entry slot = ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(_entries), set * Ways);
            for (int i = 0; i < Ways; i++)
            {
                ref Entry e = ref Unsafe.Add(ref slot, i);
                if (e.Hash == hash)
                {
                    if (e.Units > 0 && e.Expires > now)
                    {
                        e.Units--;
                        return true;
                    }
                    return false;
                }
            }
            return false;
        }
        finally
        {
            Volatile.Write(ref gate, 0);
        }
    }

    /// <summary>Records <paramref name="units"/> leased for <paramref name="hash"/> until <paramref name="expires"/> (replacing what was left).</summary>
    public void Grant(ulong hash, int units, long expires)
    {
        hash = hash == 0 ? 1 : hash;
        int set = (int)(hash >> 40) & _setMask;
        ref int gate = ref Lock(set);
        try
        {
            ref Entry slot = ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(_entries), set * Ways);
            int victim = 0;
            long victimExpires = long.MaxValue;
            for (int i = 0; i < Ways; i++)
            {
                ref Entry e = ref Unsafe.Add(ref slot, i);
                if (e.Hash == hash)
                {
                    victim = i;
                    break;
                }
                // Empty entries (Expires 0) and the lease that ends first make way.
                if (e.Expires < victimExpires)
                {
                    victim = i;
                    victimExpires = e.Expires;
                }
            }
            ref Entry claimed = ref Unsafe.Add(ref slot, victim);
            claimed.Hash = hash;
            claimed.Units = units;
            claimed.Expires = expires;
        }
        finally
        {
            Volatile.Write(ref gate, 0);
        }
    }

    private ref int Lock(int set)
    {
        ref int gate = ref _locks[set];
        if (Interlocked.CompareExchange(ref gate, 1, 0) != 0)
        {
            Contended(ref gate);
        }
        return ref gate;
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
        public long Expires;
        public int Units;
    }
}
