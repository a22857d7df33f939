using Proxy.Model;

namespace Proxy.Routing;

/// <summary>Finds routes that can never match because an earlier route in precedence order always wins. STUB.</summary>
internal static class RouteShadowing
{
    /// <summary>Each pair is (the unreachable route, the route that shadows it).</summary>
    public static IReadOnlyList<(RouteModel Shadowed, RouteModel By)> Find(IReadOnlyList<RouteModel> routes)
        => throw new NotImplementedException();
}
