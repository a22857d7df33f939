using BenchmarkDotNet.Attributes;
using Proxy.Model;
using Proxy.Upstream;

namespace Proxy.Benchmarks.Routing;

/// <summary>One pick per policy over a cluster of 8 destinations, with equal or mixed weights.</summary>
[MemoryDiagnoser]
public class LoadBalancingBenchmarks
{
    private DestinationState[] _destinations = null!;
    private ILoadBalancingPolicy _roundRobin = null!;
    private ILoadBalancingPolicy _leastRequests = null!;
    private ILoadBalancingPolicy _powerOfTwo = null!;
    private ILoadBalancingPolicy _random = null!;

    [Params(false, true)]
    public bool Weighted { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        int[] weights = Weighted ? [5, 3, 2, 1, 1, 4, 2, 2] : [1, 1, 1, 1, 1, 1, 1, 1];
        _destinations = new DestinationState[weights.Length];
        for (int i = 0; i < weights.Length; i++)
        {
            _destinations[i] = new DestinationState($"http://10.0.0.{i}:8080", $"10.0.0.{i}", 8080, weights[i]);
            // Some load, so least-requests and power-of-two compare real numbers.
            for (int r = 0; r < i % 3; r++)
            {
                _destinations[i].RequestStarted();
            }
        }
        _roundRobin = LoadBalancingPolicies.Create(LoadBalancingKind.RoundRobin);
        _leastRequests = LoadBalancingPolicies.Create(LoadBalancingKind.LeastRequests);
        _powerOfTwo = LoadBalancingPolicies.Create(LoadBalancingKind.PowerOfTwo);
        _random = LoadBalancingPolicies.Create(LoadBalancingKind.Random);
    }

    [Benchmark]
    public object? RoundRobin() => _roundRobin.Pick(_destinations);

    [Benchmark]
    public object? LeastRequests() => _leastRequests.Pick(_destinations);

    [Benchmark]
    public object? PowerOfTwo() => _powerOfTwo.Pick(_destinations);

    [Benchmark]
    public object? Random() => _random.Pick(_destinations);
}
