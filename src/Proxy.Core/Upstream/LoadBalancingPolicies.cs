using Proxy.Model;
using Proxy.Upstream.LoadBalancing;

namespace Proxy.Upstream;

/// <summary>Factory for the built-in balancers. Called once per cluster at compile time: each instance keeps that cluster's counters.</summary>
internal static class LoadBalancingPolicies
{
    public static ILoadBalancingPolicy Create(LoadBalancingKind kind) => kind switch
    {
        LoadBalancingKind.RoundRobin => new RoundRobinPolicy(),
        LoadBalancingKind.LeastRequests => new LeastRequestsPolicy(),
        LoadBalancingKind.PowerOfTwo => new PowerOfTwoChoicesPolicy(),
        LoadBalancingKind.Random => new RandomPolicy(),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown load-balancing policy"),
    };
}
