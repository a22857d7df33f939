namespace Proxy.Upstream.LoadBalancing;

/// <summary>
/// Picks the destination with the fewest requests in flight per unit of weight. Ties go round robin
/// among the tied destinations (a shared ticket picks the k-th of them), so equally loaded
/// destinations take turns instead of the first one taking every request. Counters are read without
/// a lock: a pick may see a count one request stale, which is harmless for a balancer.
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
        for (int i = 1; i < n; i++)
        {
            DestinationState candidate = destinations[i];
            if (LoadComparer.IsLessLoaded(candidate, best))
            {
                best = candidate;
                ties = 1;
            }
            else if (!LoadComparer.IsLessLoaded(best, candidate))
            {
                ties++;
            }
        }
        if (ties == 1)
        {
            return best;
        }

        // Second pass for the k-th tied destination. A count that moved in between only means the
        // pass may not find it; the first minimum is still a good answer.
        int wanted = (int)((uint)Interlocked.Increment(ref _ticket) % (uint)ties);
        foreach (DestinationState candidate in destinations)
        {
            if (!LoadComparer.IsLessLoaded(candidate, best) && !LoadComparer.IsLessLoaded(best, candidate) && wanted-- == 0)
            {
                return candidate;
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
