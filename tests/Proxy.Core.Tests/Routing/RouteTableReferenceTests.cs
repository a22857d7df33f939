using Proxy.Http;
using Proxy.Model;
using Proxy.Routing;
using static Proxy.Core.Tests.Routing.TestRoutes;

namespace Proxy.Core.Tests.Routing;

/// <summary>The trie against <see cref="NaiveRouter"/> over generated tables and requests drawn from small alphabets, so collisions are frequent.</summary>
public class RouteTableReferenceTests
{
    private static readonly string[] s_literals = ["a", "b", "c", ""];
    private static readonly string[] s_requestSegments = ["a", "b", "c", "", "d"];
    private static readonly string[][] s_hostSets = [[], [], ["a.test"], ["*.test"], ["x.a.test", "b.test"], ["*.a.test"]];
    private static readonly string[] s_requestHosts = ["a.test", "x.a.test", "B.test:81", "x.y.a.test", "test", "other"];
    private static readonly string[][] s_methodSets = [[], [], ["GET"], ["GET", "POST"], ["POST"]];
    private static readonly string[] s_requestMethods = ["GET", "POST", "PUT"];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void Match_RandomTables_AgreesWithNaiveReference(int seed)
    {
        var random = new Random(seed);
        for (int table = 0; table < 60; table++)
        {
            int count = random.Next(1, 40);
            var routes = new RouteModel[count];
            for (int i = 0; i < count; i++)
            {
                routes[i] = RandomRoute(random, $"r{i}");
            }
            routes = InFileOrder(routes);
            RouteTable trie = RouteTable.Build(routes);
            var reference = new NaiveRouter(routes);

            Assert.Equal(reference.Ordered.Select(r => r.Id), trie.InMatchOrder.Select(r => r.Id));

            var request = new RequestHead();
            for (int n = 0; n < 300; n++)
            {
                string target = RandomTarget(random);
                string? host = random.Next(8) == 0 ? null : s_requestHosts[random.Next(s_requestHosts.Length)];
                string method = s_requestMethods[random.Next(s_requestMethods.Length)];
                var headers = new List<(string, string)>();
                if (random.Next(2) == 0)
                {
                    headers.Add(("X-H", random.Next(2) == 0 ? "1" : "2"));
                }
                int listener = random.Next(3);
                TestRequests.Fill(request, method, target, host, [.. headers]);

                string? expected = reference.Match(request, listener)?.Id;
                string? actual = trie.Match(request, listener)?.Id;
                if (expected != actual)
                {
                    string table1 = string.Join("\n", routes.Select(Describe));
                    Assert.Fail($"seed {seed}: {method} {target} host={host} headers={headers.Count} listener={listener}: expected {expected}, got {actual}\n{table1}");
                }
            }
        }
    }

    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    [InlineData(13)]
    public void Find_RandomTables_ShadowedRoutesNeverWin(int seed)
    {
        var random = new Random(seed);
        int reported = 0;
        for (int table = 0; table < 100; table++)
        {
            RouteModel[] routes = RandomTable(random, random.Next(1, 30));
            var shadowed = RouteShadowing.Find(routes).Select(p => p.Shadowed.Id).ToHashSet();
            reported += shadowed.Count;
            RouteTable trie = RouteTable.Build(routes);

            var request = new RequestHead();
            for (int n = 0; n < 200; n++)
            {
                string? host = random.Next(8) == 0 ? null : s_requestHosts[random.Next(s_requestHosts.Length)];
                (string, string)[] headers = random.Next(2) == 0 ? [("x-h", "1")] : [];
                TestRequests.Fill(request, s_requestMethods[random.Next(s_requestMethods.Length)], RandomTarget(random), host, headers);
                string? winner = trie.Match(request, random.Next(3))?.Id;
                Assert.False(winner is not null && shadowed.Contains(winner), $"seed {seed}: shadowed route {winner} won");
            }
        }
        // The generator must actually produce shadowing, or this test proves nothing.
        Assert.True(reported > 10, $"only {reported} shadowed routes generated");
    }

    /// <summary>RouteShadowing compares a route only with the earlier routes sharing its leading literals: it must
    /// report exactly what comparing every pair reports.</summary>
    [Theory]
    [InlineData(21)]
    [InlineData(22)]
    [InlineData(23)]
    public void Find_RandomTables_SameAsComparingEveryPair(int seed)
    {
        var random = new Random(seed);
        int reported = 0;
        for (int table = 0; table < 200; table++)
        {
            RouteModel[] routes = RandomTable(random, random.Next(1, 40));

            string[] actual = RouteShadowing.Find(routes).Select(p => $"{p.Shadowed.Id}<{p.By.Id}").ToArray();

            Assert.Equal(EveryPair(routes), actual);
            reported += actual.Length;
        }
        Assert.True(reported > 20, $"only {reported} shadowed routes generated");
    }

    /// <summary><paramref name="count"/> random routes in file order; half vary an earlier one, so covering pairs are common.</summary>
    private static RouteModel[] RandomTable(Random random, int count)
    {
        var routes = new RouteModel[count];
        for (int i = 0; i < count; i++)
        {
            routes[i] = i > 0 && random.Next(2) == 0
                ? Variant(random, routes[random.Next(i)], $"r{i}")
                : RandomRoute(random, $"r{i}");
        }
        return InFileOrder(routes);
    }

    private static string[] EveryPair(IReadOnlyList<RouteModel> routes)
    {
        RouteEntry[] ordered = RouteEntry.CreateAll(routes);
        Array.Sort(ordered, RouteEntry.Compare);
        var pairs = new List<string>();
        for (int later = 1; later < ordered.Length; later++)
        {
            for (int earlier = 0; earlier < later; earlier++)
            {
                if (ordered[earlier].Template.Covers(ordered[later].Template) && ordered[earlier].CoversPredicatesOf(ordered[later]))
                {
                    pairs.Add($"{ordered[later].Route.Id}<{ordered[earlier].Route.Id}");
                    break;
                }
            }
        }
        return [.. pairs];
    }

    private static RouteModel RandomRoute(Random random, string id)
    {
        string? path;
        if (random.Next(10) == 0)
        {
            path = null;
        }
        else
        {
            int length = random.Next(0, 4);
            var segments = new List<string>();
            for (int i = 0; i < length; i++)
            {
                segments.Add(random.Next(3) == 0 ? "{p}" : s_literals[random.Next(s_literals.Length)]);
            }
            if (random.Next(3) == 0)
            {
                segments.Add("{**rest}");
            }
            if (segments.Count == 0)
            {
                segments.Add("");
            }
            path = "/" + string.Join("/", segments);
        }

        HeaderMatchModel[] headers = random.Next(4) switch
        {
            0 => [Header("x-h")],
            1 => [Header("x-h", "1")],
            2 => [Header("x-h", present: false)],
            _ => [],
        };
        QueryMatchModel[] query = random.Next(5) switch
        {
            0 => [Query("q")],
            1 => [Query("q", "1")],
            2 => [Query("q", present: false)],
            _ => [],
        };
        ulong mask = random.Next(4) switch
        {
            0 => 0b01,
            1 => 0b10,
            _ => 0,
        };
        return Route(id, path, s_hostSets[random.Next(s_hostSets.Length)], s_methodSets[random.Next(s_methodSets.Length)], headers, query, mask);
    }

    /// <summary>A copy of <paramref name="source"/> with each predicate kept or redrawn at random.</summary>
    private static RouteModel Variant(Random random, RouteModel source, string id)
    {
        RouteModel fresh = RandomRoute(random, id);
        RouteMatchModel a = source.Match, b = fresh.Match;
        return Route(
            id,
            random.Next(4) == 0 ? b.Path : a.Path,
            random.Next(3) == 0 ? b.Hosts : a.Hosts,
            random.Next(3) == 0 ? b.Methods : a.Methods,
            random.Next(3) == 0 ? b.Headers : a.Headers,
            random.Next(3) == 0 ? b.Query : a.Query,
            random.Next(3) == 0 ? fresh.ListenerMask : source.ListenerMask);
    }

    private static string RandomTarget(Random random)
    {
        if (random.Next(30) == 0)
        {
            return "*";
        }
        int length = random.Next(1, 5);
        var segments = new string[length];
        for (int i = 0; i < length; i++)
        {
            segments[i] = s_requestSegments[random.Next(s_requestSegments.Length)];
        }
        string query = random.Next(4) switch
        {
            0 => "?q",
            1 => "?q=1",
            2 => "?a=1&q=2",
            _ => "",
        };
        return "/" + string.Join("/", segments) + query;
    }

    private static string Describe(RouteModel r)
        => $"{r.Id}: path={r.Match.Path ?? "null"} hosts=[{string.Join(",", r.Match.Hosts)}] methods=[{string.Join(",", r.Match.Methods)}] "
            + $"headers={r.Match.Headers.Length} query={r.Match.Query.Length} mask={r.ListenerMask}";
}
