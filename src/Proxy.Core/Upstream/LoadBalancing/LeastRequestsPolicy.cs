namespace Proxy.Upstream.LoadBalancing;

/// <summary>
/// Picks the destination with the fewest requests in flight per unit of weight. Ties (every destination idle is the
/// common one) are shared out by weight: round robin when the tied weights are equal, and otherwise a low-discrepancy
/// sequence over the tied weights, so 90/10 destinations take 90% and 10% of the picks even when no request is ever in
/// flight at a pick. (Breaking ties by plain rotation, as this policy first did, split an idle 90/10 cluster 50/50.)
/// Counters are read without a lock: a pick may see a count one request stale, which is harmless for a balancer.
/// </summary>
internal sealed class LeastRequestsPolicy : ILoadBalancingPolicy
{
    private int _ticket = -1;

    public DestinationState? Pick(DestinationState[] destinations)
    {
        int n = destinations.Length;
        if (n <= 1)
        {
            return n == 0 ? null : destinations[0];
        }

        DestinationState best = destinations[0];
        int ties = 1;
        long tiedWeight = WeightTable.WeightOf(best);
        bool equalWeights = true;
        for (int i = 1; i < n; i++)
        {
            DestinationState candidate = destinations[i];
            if (LoadComparer.IsLessLoaded(candidate, best))
            {
                best = candidate;
                ties = 1;
                tiedWeight = WeightTable.WeightOf(candidate);
                equalWeights = true;
            }
            else if (!LoadComparer.IsLessLoaded(best, candidate))
            {
                ties++;
                tiedWeight += WeightTable.WeightOf(candidate);
                equalWeights &= WeightTable.WeightOf(candidate) == WeightTable.WeightOf(best);
            }
        }
        if (ties == 1)
        {
            return best;
        }

        // Second pass for the tied destination that owns the ticket's point. A count that moved in between only
        // means the pass may not find it; the first minimum is still a good answer.
        uint ticket = (uint)Interlocked.Increment(ref _ticket);
        long point = equalWeights
            ? ticket % (uint)ties * WeightTable.WeightOf(best)
            // Weyl sequence frac(ticket * golden ratio) scaled to the tied weight: consecutive tickets land far apart,
            // so a light destination is interleaved with the heavy one rather than served in one run.
            : (long)(((ulong)(ticket * 0x9E3779B9u) * (ulong)tiedWeight) >> 32);
        foreach (DestinationState candidate in destinations)
        {
            if (!LoadComparer.IsLessLoaded(candidate, best) && !LoadComparer.IsLessLoaded(best, candidate))
            {
                point -= WeightTable.WeightOf(candidate);
                if (point < 0)
                {
                    return candidate;
                }
            }
        }
        return best;
    }
}

internal static class LoadComparer
{
    /// <summary>a.Active / a.Weight &lt; b.Active / b.Weight, cross-multiplied to stay in integers.</summary>
    public static bool IsLessLoaded(DestinationState a, DestinationState b)
        => (long)a.ActiveRequests * WeightTable.WeightOf(b) < (long)b.ActiveRequests * WeightTable.WeightOf(a);
}
