using System.Net;

namespace Proxy.Transport;

/// <summary>Where one client address counts in a <see cref="ClientIpLimiter"/>: one slot per row, computed once per connection.</summary>
internal readonly record struct ClientIpSlots(int Row0, int Row1);

/// <summary>
/// Concurrency per client IP address (<c>limits.max_connections_per_ip</c>, <c>limits.max_requests_per_ip</c>) in a
/// table of fixed size, whatever the number of addresses: a count-min sketch of two rows of counters (Pingora's
/// <c>pingora-limits</c> estimator), so a flood from many addresses cannot grow memory (nginx's limit_conn zone is
/// fixed-size for the same reason, but refuses new addresses when full; this never refuses for lack of room).
/// An address adds to one counter in each row; its estimate is the smaller of the two, which is never below its true
/// count. Two addresses over-count only if they share a counter in both rows (independent hashes, randomised per
/// process by <see cref="HashCode"/> so clients cannot aim collisions), and then the error is a refusal, never a
/// missed cap. Counters go up and down with interlocked adds: no locks, no allocation.
/// </summary>
internal sealed class ClientIpLimiter
{
    /// <summary>
    /// Counters per row: 2 x 16384 x 4 bytes = 128 KiB per table, allocated on first use (only when a cap is set).
    /// With 2,000 distinct addresses at once and a cap of 1, about 0.5% are refused by a double collision; with caps
    /// above 1 a refusal needs colliding addresses that together reach the cap in both rows, far rarer still.
    /// </summary>
    internal const int RowSize = 16384;

    private int[]? _row0;
    private int[]? _row1;
    private long _refused;

    private int[] Row0 => _row0 ?? Allocate(ref _row0);
    private int[] Row1 => _row1 ?? Allocate(ref _row1);

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static int[] Allocate(ref int[]? row)
    {
        Interlocked.CompareExchange(ref row, new int[RowSize], null);
        return row;
    }

    /// <summary>Requests or connections turned away since start.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    public static ClientIpSlots Slots(IPAddress address)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (!address.TryWriteBytes(bytes, out int written))
        {
            written = 0;
        }
        var h0 = new HashCode();
        h0.Add(0x5bd1e995);
        h0.AddBytes(bytes[..written]);
        var h1 = new HashCode();
        h1.Add(0x27d4eb2f);
        h1.AddBytes(bytes[..written]);
        return new ClientIpSlots(h0.ToHashCode() & (RowSize - 1), h1.ToHashCode() & (RowSize - 1));
    }

    /// <summary>Counts one more for the address unless its estimate is already at <paramref name="cap"/>.</summary>
    public bool TryEnter(ClientIpSlots slots, int cap)
    {
        int a = Interlocked.Increment(ref Row0[slots.Row0]);
        int b = Interlocked.Increment(ref Row1[slots.Row1]);
        if (Math.Min(a, b) <= cap)
        {
            return true;
        }
        // Taken optimistically, given back: two racing entries may both be refused at the cap, never both admitted past it.
        Interlocked.Decrement(ref Row0[slots.Row0]);
        Interlocked.Decrement(ref Row1[slots.Row1]);
        Interlocked.Increment(ref _refused);
        return false;
    }

    public void Exit(ClientIpSlots slots)
    {
        Interlocked.Decrement(ref Row0[slots.Row0]);
        Interlocked.Decrement(ref Row1[slots.Row1]);
    }

    /// <summary>The address's current estimate (tests, admin).</summary>
    public int Estimate(ClientIpSlots slots) => Math.Min(Volatile.Read(ref Row0[slots.Row0]), Volatile.Read(ref Row1[slots.Row1]));
}
