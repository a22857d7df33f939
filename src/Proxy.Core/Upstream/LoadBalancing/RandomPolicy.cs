namespace Proxy.Upstream.LoadBalancing;

/// <summary>Weighted random choice. <see cref="Random.Shared"/> is thread-safe; the only other state is the cached weight table.</summary>
internal sealed class RandomPolicy : ILoadBalancingPolicy
{
    private WeightTable? _weights;

    public DestinationState? Pick(DestinationState[] destinations)
    {
        int n = destinations.Length;
        if (n <= 1)
        {
            return n == 0 ? null : destinations[0];
        }
        WeightTable table = WeightTable.For(ref _weights, destinations);
        return destinations[table.IndexOfPoint(Random.Shared.Next(table.TotalWeight))];
    }
}
