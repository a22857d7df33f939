using BenchmarkDotNet.Attributes;
using Proxy.Model;
using Proxy.Upstream;

namespace Proxy.Benchmarks.Upstream;

/// <summary>
/// A pick with health filtering over 8 destinations: the cluster's candidates array (swapped when health changes)
/// handed to round robin, with every destination available and with two ejected (which also makes each pick read
/// the clock, an ejection being pending). Beside it, the naive alternative: round robin over all destinations,
/// skipping unavailable ones inside the pick.
/// </summary>
[MemoryDiagnoser]
public class HealthyPickBenchmarks
{
    private DestinationState[] _destinations = null!;
    private ClusterHealth _health = null!;
    private ILoadBalancingPolicy _roundRobin = null!;
    private int _naiveCounter;

    [Params(0, 2)]
    public int Ejected { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _destinations = new DestinationState[8];
        for (int i = 0; i < _destinations.Length; i++)
        {
            _destinations[i] = new DestinationState($"http://10.0.0.{i}:8080", $"10.0.0.{i}", 8080, 1);
        }
        _health = new ClusterHealth("bench", _destinations,
            new OutlierDetectionModel { ConsecutiveFailures = 1, BaseEjection = TimeSpan.FromHours(1), MaxEjectionPercent = 50 }, panicMode: false);
        for (int i = 0; i < Ejected; i++)
        {
            _health.ReportFailure(_destinations[i * 3]);
        }
        _roundRobin = LoadBalancingPolicies.Create(LoadBalancingKind.RoundRobin);
    }

    [Benchmark(Baseline = true)]
    public object? PickWithoutHealth() => _roundRobin.Pick(_destinations);

    [Benchmark]
    public object? PickFromCandidates() => _roundRobin.Pick(_health.Candidates());

    [Benchmark]
    public object? NaiveSkipInsidePick()
    {
        long now = _health.Now();
        int n = _destinations.Length;
        for (int tries = 0; tries < n; tries++)
        {
            DestinationState d = _destinations[(uint)Interlocked.Increment(ref _naiveCounter) % (uint)n];
            if (d.IsAvailable(now))
            {
                return d;
            }
        }
        return null;
    }
}
