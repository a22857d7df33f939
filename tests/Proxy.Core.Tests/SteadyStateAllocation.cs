namespace Proxy.Core.Tests;

/// <summary>Measures what a steady-state data-plane call allocates on the current thread.</summary>
/// <remarks>
/// One measured pass is not enough: while the runtime re-tiers a hot loop (tiered compilation's call counting, the
/// tier-1 rejit, on-stack replacement of the loop) it may allocate on the calling thread once, and that lands in
/// whichever pass is running (seen: 40 B, 416 B, 2,344 B and 6,888 B once in CI runs). So one pass warms the code and
/// the lowest of several measured rounds is the steady state: the runtime's one-off cost hits one round at most,
/// while a real per-call allocation shows in every round.
/// </remarks>
internal static class SteadyStateAllocation
{
    /// <summary>
    /// Runs <paramref name="iteration"/> <paramref name="iterations"/> times to warm it, then returns the fewest bytes
    /// this thread allocated over <paramref name="iterations"/> calls in any of <paramref name="rounds"/> rounds.
    /// </summary>
    /// <remarks>
    /// Create the delegate once, before calling this (a lambda's closure is allocated where its captured locals are
    /// declared), so invoking it allocates nothing per call.
    /// </remarks>
    public static long BestOfRounds(Action iteration, int iterations, int rounds = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(iterations, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        for (int i = 0; i < iterations; i++)
        {
            iteration();
        }
        long best = long.MaxValue;
        for (int round = 0; round < rounds; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < iterations; i++)
            {
                iteration();
            }
            best = Math.Min(best, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        return best;
    }
}
