namespace Proxy.Upstream.LoadBalancing;

/// <summary>
/// Weights of one destinations array, precomputed: prefix sums for weighted random draws and, on
/// demand, an interleaved round-robin schedule. Built on the control path the first time a policy
/// sees an array, then reused for as long as the cluster passes that same array.
/// </summary>
internal sealed class WeightTable
{
    // A schedule (and a point table) of at most this many slots; larger totals are scaled down
    // proportionally for the schedule and fall back to binary search for random draws.
    private const int MaxScheduleLength = 4096;

    private readonly int[]? _indexOfPoint;
    private int[]? _schedule;

    private WeightTable(DestinationState[] source)
    {
        Source = source;
        CumulativeWeights = new int[source.Length];
        long total = 0;
        bool uniform = true;
        for (int i = 0; i < source.Length; i++)
        {
            int weight = WeightOf(source[i]);
            uniform &= weight == WeightOf(source[0]);
            total = Math.Min(total + weight, int.MaxValue);
            CumulativeWeights[i] = (int)total;
        }
        TotalWeight = (int)total;
        Uniform = uniform;

        // Random draws land on a point in [0, total): with a modest total, a direct point -> index
        // table makes the weighted draw one load instead of a search with unpredictable branches.
        if (!uniform && total <= MaxScheduleLength)
        {
            _indexOfPoint = new int[total];
            for (int i = 0, point = 0; i < source.Length; i++)
            {
                for (; point < CumulativeWeights[i]; point++)
                {
                    _indexOfPoint[point] = i;
                }
            }
        }
    }

    public DestinationState[] Source { get; }
    /// <summary>CumulativeWeights[i] is the sum of weights 0..i.</summary>
    public int[] CumulativeWeights { get; }
    public int TotalWeight { get; }
    /// <summary>All weights equal: draws and schedules reduce to plain indices.</summary>
    public bool Uniform { get; }

    /// <summary>Weights are positive by contract; a stray zero or negative counts as one rather than starving the destination forever.</summary>
    public static int WeightOf(DestinationState destination) => Math.Max(1, destination.Weight);

    /// <summary>
    /// The table for <paramref name="destinations"/>, from <paramref name="cache"/> when it was built
    /// for the same array. Racing threads may each build one; the last write wins and all are equal.
    /// </summary>
    public static WeightTable For(ref WeightTable? cache, DestinationState[] destinations)
    {
        WeightTable? table = Volatile.Read(ref cache);
        if (table is null || !ReferenceEquals(table.Source, destinations))
        {
            table = new WeightTable(destinations);
            Volatile.Write(ref cache, table);
        }
        return table;
    }

    /// <summary>The index whose weight interval holds <paramref name="point"/> (0 &lt;= point &lt; TotalWeight).</summary>
    public int IndexOfPoint(int point)
    {
        if (Uniform)
        {
            return point / WeightOf(Source[0]);
        }
        if (_indexOfPoint is int[] lookup)
        {
            return lookup[point];
        }
        // First cumulative weight strictly above the point.
        int index = Array.BinarySearch(CumulativeWeights, point + 1);
        return index >= 0 ? index : ~index;
    }

    /// <summary>
    /// A weighted order in which each destination appears in proportion to its weight and spread out
    /// (nginx's smooth weighted round robin run once over a whole cycle), so 5:1:1 gives
    /// a a b a c a a rather than a a a a a b c.
    /// </summary>
    public int[] Schedule => Volatile.Read(ref _schedule) ?? BuildSchedule();

    private int[] BuildSchedule()
    {
        int n = Source.Length;
        var weights = new long[n];
        long gcd = 0;
        for (int i = 0; i < n; i++)
        {
            weights[i] = WeightOf(Source[i]);
            gcd = Gcd(gcd, weights[i]);
        }
        long total = 0;
        for (int i = 0; i < n; i++)
        {
            weights[i] /= gcd;
            total += weights[i];
        }
        if (total > MaxScheduleLength)
        {
            // Keeps proportions to within 1/MaxScheduleLength of the total; every destination keeps a slot.
            long scaledTotal = 0;
            for (int i = 0; i < n; i++)
            {
                weights[i] = Math.Max(1, weights[i] * MaxScheduleLength / total);
                scaledTotal += weights[i];
            }
            total = scaledTotal;
        }

        var schedule = new int[total];
        var current = new long[n];
        for (int slot = 0; slot < schedule.Length; slot++)
        {
            int best = 0;
            for (int i = 0; i < n; i++)
            {
                current[i] += weights[i];
                if (current[i] > current[best])
                {
                    best = i;
                }
            }
            current[best] -= total;
            schedule[slot] = best;
        }
        Volatile.Write(ref _schedule, schedule);
        return schedule;
    }

    private static long Gcd(long a, long b)
    {
        while (b != 0)
        {
            (a, b) = (b, a % b);
        }
        return a;
    }
}
