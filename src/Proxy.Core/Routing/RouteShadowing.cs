using System.Text;
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
    /// <remarks>
    /// A template covers another only if its leading literal segments (those before its first parameter or catch-all)
    /// are the first segments of the other's leading literals (<see cref="RouteTemplate.Covers"/>). Routes are
    /// grouped by their leading literals, and a route is compared only with the earlier routes of the groups along
    /// its own: comparing every pair took 10 s for 32,000 routes, at every load and reload.
    /// </remarks>
    public static IReadOnlyList<(RouteModel Shadowed, RouteModel By)> Find(IReadOnlyList<RouteModel> routes)
    {
        RouteEntry[] ordered = RouteEntry.CreateAll(routes);
        Array.Sort(ordered, RouteEntry.Compare);

        // Leading literals -> indexes into ordered, ascending.
        var groups = new Dictionary<string, List<int>>(StringComparer.Ordinal);
        for (int i = 0; i < ordered.Length; i++)
        {
            string key = LiteralPrefix(ordered[i].Template, LeadingLiterals(ordered[i].Template));
            if (!groups.TryGetValue(key, out List<int>? group))
            {
                groups[key] = group = [];
            }
            group.Add(i);
        }

        var result = new List<(RouteModel Shadowed, RouteModel By)>();
        for (int later = 1; later < ordered.Length; later++)
        {
            RouteEntry shadowed = ordered[later];
            int leading = LeadingLiterals(shadowed.Template);
            int first = int.MaxValue;
            for (int length = 0; length <= leading; length++)
            {
                if (!groups.TryGetValue(LiteralPrefix(shadowed.Template, length), out List<int>? group))
                {
                    continue;
                }
                foreach (int earlier in group)
                {
                    if (earlier >= later || earlier >= first)
                    {
                        break;
                    }
                    RouteEntry by = ordered[earlier];
                    if (by.Template.Covers(shadowed.Template) && by.CoversPredicatesOf(shadowed))
                    {
                        first = earlier;
                        break;
                    }
                }
            }
            if (first != int.MaxValue)
            {
                result.Add((shadowed.Route, ordered[first].Route));
            }
        }
        return result;
    }

    private static int LeadingLiterals(RouteTemplate template)
    {
        int count = 0;
        while (count < template.Segments.Length && template.Segments[count].Kind == SegmentKind.Literal)
        {
            count++;
        }
        return count;
    }

    /// <summary>The first <paramref name="length"/> literal segments, each prefixed by '/' (a literal holds no '/').</summary>
    private static string LiteralPrefix(RouteTemplate template, int length)
    {
        var key = new StringBuilder();
        for (int i = 0; i < length; i++)
        {
            key.Append('/').Append(Encoding.UTF8.GetString(template.Segments[i].Literal));
        }
        return key.ToString();
    }
}
