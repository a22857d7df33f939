using Proxy.Model;

namespace Proxy.Upstream;

/// <summary>Factory for the built-in balancers. STUB.</summary>
internal static class LoadBalancingPolicies
{
    public static ILoadBalancingPolicy Create(LoadBalancingKind kind) => throw new NotImplementedException();
}
