using Proxy.Model;

namespace Proxy.Routing;

/// <summary>
/// Finds routes that can never match because an earlier route in precedence order always wins: the
/// earlier route's path template, hosts, methods, header and query predicates and listeners each
/// admit everything the later one does. Conservative: only certain shadowing is reported (a route
/// covered by several earlier routes together, e.g. one per method, is not).
/// </summary>
internal static class RouteShadowing
{
    /// <summary>
    /// Each pair is (the unreachable route, the route that shadows it); one pair per unreachable route,
    /// naming the first route in match order that covers it. Pairs come in match order.
    /// </summary>
    public static IReadOnlyList<(RouteModel Shadowed, RouteModel By)> Find(IReadOnlyList<RouteModel> routes)
    {
        RouteEntry[] ordered = RouteEntry.CreateAll(routes);
        Array.Sort(ordered, RouteEntry.Compare);

        var result = new List<(RouteModel Shadowed, RouteModel By)>();
        for (int later = 1; later < ordered.Length; later++)
        {
            RouteEntry shadowed = ordered[later];
            for (int earlier = 0; earlier < later; earlier++)
            {
                RouteEntry by = ordered[earlier];
                if (by.Template.Covers(shadowed.Template) && by.CoversPredicatesOf(shadowed))
                {
                    result.Add((shadowed.Route, by.Route));
                    break;
                }
            }
        }
        return result;
    }
}
