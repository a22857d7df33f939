using Proxy.Model;
using Proxy.Upstream;
using Proxy.Upstream.LoadBalancing;

namespace Proxy.Core.Tests.Upstream;

public class LoadBalancingPolicyTests
{
    // LoadBalancingKind is internal, so theories take its name.
    public static TheoryData<string> AllKinds =>
        [nameof(LoadBalancingKind.RoundRobin), nameof(LoadBalancingKind.LeastRequests), nameof(LoadBalancingKind.PowerOfTwo), nameof(LoadBalancingKind.Random)];

    private static ILoadBalancingPolicy Create(string kind) => LoadBalancingPolicies.Create(Enum.Parse<LoadBalancingKind>(kind));

    private static DestinationState[] Destinations(params int[] weights)
    {
        var result = new DestinationState[weights.Length];
        for (int i = 0; i < weights.Length; i++)
        {
            result[i] = new DestinationState($"http://10.0.0.{i}:80", $"10.0.0.{i}", 80, weights[i]);
        }
        return result;
    }

    private static int[] Count(ILoadBalancingPolicy policy, DestinationState[] destinations, int picks)
    {
        var counts = new int[destinations.Length];
        for (int i = 0; i < picks; i++)
        {
            counts[Array.IndexOf(destinations, policy.Pick(destinations))]++;
        }
        return counts;
    }

    [Fact]
    public void Create_EachKind_ReturnsMatchingPolicyAndFreshInstances()
    {
        Assert.IsType<RoundRobinPolicy>(LoadBalancingPolicies.Create(LoadBalancingKind.RoundRobin));
        Assert.IsType<LeastRequestsPolicy>(LoadBalancingPolicies.Create(LoadBalancingKind.LeastRequests));
        Assert.IsType<PowerOfTwoChoicesPolicy>(LoadBalancingPolicies.Create(LoadBalancingKind.PowerOfTwo));
        Assert.IsType<RandomPolicy>(LoadBalancingPolicies.Create(LoadBalancingKind.Random));
        Assert.NotSame(LoadBalancingPolicies.Create(LoadBalancingKind.RoundRobin), LoadBalancingPolicies.Create(LoadBalancingKind.RoundRobin));
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Pick_EmptyArray_ReturnsNull(string kind)
        => Assert.Null(Create(kind).Pick([]));

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Pick_SingleDestination_ReturnsIt(string kind)
    {
        DestinationState[] one = Destinations(3);
        Assert.Same(one[0], Create(kind).Pick(one));
    }

    [Theory]
    [InlineData(nameof(LoadBalancingKind.RoundRobin), 0.001)]
    [InlineData(nameof(LoadBalancingKind.Random), 0.02)]
    [InlineData(nameof(LoadBalancingKind.PowerOfTwo), 0.02)]
    [InlineData(nameof(LoadBalancingKind.LeastRequests), 0.001)]
    public void Pick_Weights90To10_SplitsWithinTolerance(string kind, double tolerance)
    {
        // All destinations idle: power of two keeps its first (weighted) draw on ties.
        int[] counts = Count(Create(kind), Destinations(90, 10), 10_000);
        Assert.InRange(counts[0] / 10_000.0, 0.9 - tolerance, 0.9 + tolerance);
    }

    [Theory]
    [InlineData(nameof(LoadBalancingKind.Random))]
    [InlineData(nameof(LoadBalancingKind.PowerOfTwo))]
    [InlineData(nameof(LoadBalancingKind.RoundRobin))]
    [InlineData(nameof(LoadBalancingKind.LeastRequests))]
    public void Pick_EqualWeights_SpreadsEvenly(string kind)
    {
        int[] counts = Count(Create(kind), Destinations(1, 1, 1, 1), 20_000);
        Assert.All(counts, c => Assert.InRange(c, 4_600, 5_400));
    }

    [Fact]
    public void RoundRobin_EqualWeights_CyclesInOrder()
    {
        DestinationState[] d = Destinations(1, 1, 1);
        var policy = new RoundRobinPolicy();
        DestinationState?[] picks = [.. Enumerable.Range(0, 6).Select(_ => policy.Pick(d))];
        Assert.Equal([d[0], d[1], d[2], d[0], d[1], d[2]], picks);
    }

    [Fact]
    public void RoundRobin_Weights5To1To1_InterleavesLikeSmoothWeightedRoundRobin()
    {
        DestinationState[] d = Destinations(5, 1, 1);
        var policy = new RoundRobinPolicy();
        string order = string.Concat(Enumerable.Range(0, 14).Select(_ => (char)('a' + Array.IndexOf(d, policy.Pick(d)))));
        // nginx's sequence for {a:5, b:1, c:1}, twice.
        Assert.Equal("aabacaaaabacaa", order);
    }

    [Fact]
    public void RoundRobin_NewDestinationsArray_UsesItsOwnWeights()
    {
        var policy = new RoundRobinPolicy();
        Count(policy, Destinations(9, 1), 100);
        int[] counts = Count(policy, Destinations(1, 3), 400);
        Assert.Equal([100, 300], counts);
    }

    [Fact]
    public void RoundRobin_HugeWeights_KeepsProportionsAndEveryDestination()
    {
        int[] counts = Count(new RoundRobinPolicy(), Destinations(1_000_000, 999_999, 1), 100_000);
        Assert.InRange(counts[0], 49_000, 51_000);
        Assert.InRange(counts[1], 49_000, 51_000);
        Assert.InRange(counts[2], 1, 100);
    }

    [Fact]
    public void Random_HugeWeights_UsesSearchAndKeepsProportions()
    {
        // A total above the point-table limit takes the binary-search path.
        int[] counts = Count(new RandomPolicy(), Destinations(300_000, 100_000), 20_000);
        Assert.InRange(counts[0], 14_400, 15_600);
    }

    [Fact]
    public void LeastRequests_OneIdle_PicksTheIdleOne()
    {
        DestinationState[] d = Destinations(1, 1, 1);
        Load(d[0], 3);
        Load(d[2], 5);
        var policy = new LeastRequestsPolicy();
        for (int i = 0; i < 10; i++)
        {
            Assert.Same(d[1], policy.Pick(d));
        }
    }

    [Fact]
    public void LeastRequests_Weights_CompareLoadPerWeight()
    {
        DestinationState[] d = Destinations(4, 1);
        Load(d[0], 4);
        Load(d[1], 2);
        Assert.Same(d[0], new LeastRequestsPolicy().Pick(d));
    }

    [Fact]
    public void LeastRequests_Ties_RotateAcrossEquallyLoaded()
    {
        DestinationState[] d = Destinations(1, 1, 1, 1);
        Load(d[3], 1);
        int[] counts = Count(new LeastRequestsPolicy(), d, 300);
        Assert.Equal([100, 100, 100, 0], counts);
    }

    [Fact]
    public void LeastRequests_TiedWithUnequalWeights_SharesByWeightAndInterleaves()
    {
        // d[3] is busy; the three idle ones tie and share the picks 6:3:1, the light one never served in a long run.
        DestinationState[] d = Destinations(6, 3, 1, 1);
        Load(d[3], 1);
        var policy = new LeastRequestsPolicy();
        int[] counts = new int[d.Length];
        int run = 0, longestRun = 0;
        DestinationState? last = null;
        for (int i = 0; i < 10_000; i++)
        {
            DestinationState picked = policy.Pick(d)!;
            counts[Array.IndexOf(d, picked)]++;
            run = picked == last ? run + 1 : 1;
            longestRun = picked == d[0] ? Math.Max(longestRun, run) : longestRun;
            last = picked;
        }
        Assert.InRange(counts[0], 5_990, 6_010);
        Assert.InRange(counts[1], 2_990, 3_010);
        Assert.InRange(counts[2], 990, 1_010);
        Assert.Equal(0, counts[3]);
        Assert.True(longestRun <= 4, $"d[0] served {longestRun} picks in a row");
    }

    [Fact]
    public void PowerOfTwo_TwoDestinations_AlwaysPicksLessLoaded()
    {
        DestinationState[] d = Destinations(1, 1);
        Load(d[0], 2);
        var policy = new PowerOfTwoChoicesPolicy();
        for (int i = 0; i < 200; i++)
        {
            Assert.Same(d[1], policy.Pick(d));
        }
    }

    [Fact]
    public void PowerOfTwo_MostLoadedOfMany_IsNeverPicked()
    {
        // The busiest destination can only win against itself, and the two draws are distinct.
        DestinationState[] d = Destinations(1, 1, 1, 1, 1);
        Load(d[2], 10);
        int[] counts = Count(new PowerOfTwoChoicesPolicy(), d, 5_000);
        Assert.Equal(0, counts[2]);
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Pick_ParallelPickers_ReturnOnlyMembersAndNeverThrow(string kind)
    {
        DestinationState[] d = Destinations(3, 1, 2);
        ILoadBalancingPolicy policy = Create(kind);
        var counts = new int[d.Length];
        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, _ =>
        {
            for (int i = 0; i < 25_000; i++)
            {
                DestinationState picked = policy.Pick(d)!;
                picked.RequestStarted();
                Interlocked.Increment(ref counts[Array.IndexOf(d, picked)]);
                picked.RequestEnded();
            }
        });
        Assert.Equal(100_000, counts.Sum());
        Assert.All(d, x => Assert.Equal(0, x.ActiveRequests));
    }

    [Fact]
    public void RoundRobin_ParallelPickers_KeepExactWeights()
    {
        // Every pick takes a distinct ticket, so 100,000 picks over a 4-slot cycle split exactly.
        DestinationState[] d = Destinations(3, 1);
        var policy = new RoundRobinPolicy();
        var counts = new int[d.Length];
        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, _ =>
        {
            for (int i = 0; i < 25_000; i++)
            {
                Interlocked.Increment(ref counts[Array.IndexOf(d, policy.Pick(d))]);
            }
        });
        Assert.Equal([75_000, 25_000], counts);
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Pick_Warm_AllocatesNothing(string kind)
    {
        DestinationState[] d = Destinations(5, 3, 2);
        ILoadBalancingPolicy policy = Create(kind);
        long allocated = SteadyStateAllocation.BestOfRounds(() => policy.Pick(d), iterations: 10_000);
        Assert.Equal(0, allocated);
    }

    private static void Load(DestinationState destination, int requests)
    {
        for (int i = 0; i < requests; i++)
        {
            destination.RequestStarted();
        }
    }
}
