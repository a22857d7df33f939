namespace Proxy.Upstream.LoadBalancing;

/// <summary>
/// Power of two choices: draw two distinct destinations at random by weight and take the less loaded
/// (requests in flight per unit of weight). Near least-requests balance at constant cost, and no
/// herding on a single idle destination when many proxies or threads pick at once.
/// <see cref="Random.Shared"/> is thread-safe; the only other state is the cached weight table.
/// </summary>
internal sealed class PowerOfTwoChoicesPolicy : ILoadBalancingPolicy
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
        int first = table.IndexOfPoint(Random.Shared.Next(table.TotalWeight));

        // Second draw without replacement: sample the total minus the first one's interval, then skip
        // over that interval, so the second is weighted among the others.
        int firstEnd = table.CumulativeWeights[first];
        int firstStart = firstEnd - WeightTable.WeightOf(destinations[first]);
        int point = Random.Shared.Next(table.TotalWeight - (firstEnd - firstStart));
        if (point >= firstStart)
        {
            point += firstEnd - firstStart;
        }
        int second = table.IndexOfPoint(point);

        DestinationState a = destinations[first];
        DestinationState b = destinations[second];
        return LoadComparer.IsLessLoaded(b, a) ? b : a;
    }
}
