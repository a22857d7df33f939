namespace Proxy.Upstream.LoadBalancing;

/// <summary>
/// Weighted round robin: one shared counter indexes a precomputed interleaved schedule. The counter is
/// the only shared mutable state and moves with <see cref="Interlocked.Increment(ref int)"/>, so picks
/// take no lock; it wraps after 2^32 picks, which at worst skews one cycle.
/// </summary>
internal sealed class RoundRobinPolicy : ILoadBalancingPolicy
{
    private WeightTable? _weights;
    private int _counter = -1;

    public DestinationState? Pick(DestinationState[] destinations)
    {
        if (destinations.Length <= 1)
        {
            return destinations.Length == 0 ? null : destinations[0];
        }
        uint ticket = (uint)Interlocked.Increment(ref _counter);
        WeightTable table = WeightTable.For(ref _weights, destinations);
        if (table.Uniform)
        {
            return destinations[ticket % (uint)destinations.Length];
        }
        int[] schedule = table.Schedule;
        return destinations[schedule[ticket % (uint)schedule.Length]];
    }
}
