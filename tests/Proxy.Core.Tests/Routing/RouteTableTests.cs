using Proxy.Http;
using Proxy.Model;
using Proxy.Routing;
using static Proxy.Core.Tests.Routing.TestRoutes;

namespace Proxy.Core.Tests.Routing;

public class RouteTableTests
{
    private static string? MatchId(RouteModel[] routes, string target, string? host = "h", string method = "GET", int listener = 0, params (string, string)[] headers)
    {
        RouteTable table = RouteTable.Build(InFileOrder(routes));
        RequestHead request = TestRequests.Create(method, target, host, headers);
        return table.Match(request, listener)?.Id;
    }

    private static bool Matches(RouteModel route, string target, string? host = "h", string method = "GET", int listener = 0, params (string, string)[] headers)
        => MatchId([route], target, host, method, listener, headers) is not null;

    // ---- paths ----

    [Theory]
    [InlineData("/x/y", "/x/y", true)]
    [InlineData("/x/y", "/x/y?q=1", true)]
    [InlineData("/x/y", "/x", false)]
    [InlineData("/x/y", "/x/y/z", false)]
    [InlineData("/x/y", "/x/yz", false)]
    [InlineData("/", "/", true)]
    [InlineData("/", "/x", false)]
    [InlineData("/a//b", "/a//b", true)]
    [InlineData("/a//b", "/a/b", false)]
    public void Match_ExactPath_MatchesOnlyThatPath(string template, string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", template), target));

    [Theory]
    [InlineData("/x", "/x/", false)]
    [InlineData("/x/", "/x", false)]
    [InlineData("/x/", "/x/", true)]
    public void Match_ExactPath_TrailingSlashIsSignificant(string template, string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", template), target));

    [Theory]
    [InlineData("/Users", "/users", false)]
    [InlineData("/users", "/USERS", false)]
    [InlineData("/users", "/users", true)]
    public void Match_ExactPath_IsCaseSensitive(string template, string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", template), target));

    [Theory]
    [InlineData("/a%20b", "/a%20b", true)]
    [InlineData("/a b", "/a%20b", false)]
    [InlineData("/a/b", "/a%2Fb", false)]
    [InlineData("/caf\u00e9", "/caf%C3%A9", false)]
    public void Match_ExactPath_ComparesBytesWithoutPercentDecoding(string template, string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", template), target));

    [Theory]
    [InlineData("/users/42", true)]
    [InlineData("/users/me", true)]
    [InlineData("/users/", false)]
    [InlineData("/users", false)]
    [InlineData("/users/42/orders", false)]
    [InlineData("/users//", false)]
    public void Match_Parameter_MatchesOneNonEmptySegment(string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", "/users/{id}"), target));

    [Theory]
    [InlineData("/users/42/orders/7", true)]
    [InlineData("/users/42/orders", false)]
    [InlineData("/users/42/items/7", false)]
    public void Match_TwoParameters_MatchAroundLiterals(string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", "/users/{id}/orders/{order}"), target));

    [Theory]
    [InlineData("/x", true)]
    [InlineData("/x/", true)]
    [InlineData("/x/a", true)]
    [InlineData("/x/a/b/c", true)]
    [InlineData("/x?y=1", true)]
    [InlineData("/xy", false)]
    [InlineData("/", false)]
    [InlineData("/y/x", false)]
    public void Match_CatchAll_MatchesZeroOrMoreRemainingSegments(string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", "/x/{**rest}"), target));

    [Theory]
    [InlineData("/")]
    [InlineData("/anything/at/all")]
    [InlineData("*")]
    public void Match_RootCatchAllOrNullPath_MatchesEveryPath(string target)
    {
        Assert.True(Matches(Route("r", "/{**rest}"), target, method: "OPTIONS"));
        Assert.True(Matches(Route("r", path: null), target, method: "OPTIONS"));
    }

    [Fact]
    public void Match_NonOriginFormTarget_MatchesOnlyRootCatchAll()
        => Assert.Null(MatchId([Route("exact", "/x"), Route("param", "/{id}")], "*", method: "OPTIONS"));

    [Fact]
    public void Match_EmptyTable_ReturnsNull()
    {
        RouteTable table = RouteTable.Build([]);
        Assert.Null(table.Match(TestRequests.Create("GET", "/", "h"), 0));
        Assert.False(table.TryMatch(TestRequests.Create("GET", "/", "h"), 0, out _));
        Assert.Empty(table.InMatchOrder);
    }

    [Theory]
    [InlineData("/users/{id}.json")]
    [InlineData("/files/{**rest}/more")]
    [InlineData("users")]
    [InlineData("/users/{}")]
    [InlineData("/a?b")]
    public void Build_InvalidTemplate_ThrowsFormatException(string template)
        => Assert.Throws<FormatException>(() => RouteTable.Build(InFileOrder(Route("r", template))));

    // ---- hosts ----

    [Theory]
    [InlineData("api.example.com", true)]
    [InlineData("API.Example.COM", true)]
    [InlineData("api.example.com:8080", true)]
    [InlineData("api.example.com.evil", false)]
    [InlineData("example.com", false)]
    [InlineData(null, false)]
    public void Match_ExactHost_IgnoresCaseAndPort(string? host, bool expected)
        => Assert.Equal(expected, Matches(Route("r", hosts: ["api.example.com"]), "/", host));

    [Theory]
    [InlineData("a.example.org", true)]
    [InlineData("A.b.EXAMPLE.org:443", true)]
    [InlineData("example.org", false)]
    [InlineData("badexample.org", false)]
    [InlineData(".example.org", false)]
    public void Match_WildcardHost_MatchesNamesUnderTheSuffixOnly(string host, bool expected)
        => Assert.Equal(expected, Matches(Route("r", hosts: ["*.example.org"]), "/", host));

    /// <summary>"example.com." is the fully qualified spelling of "example.com": one trailing dot is stripped before matching.</summary>
    [Theory]
    [InlineData("api.example.com.", "api.example.com", true)]
    [InlineData("API.example.com.:8080", "api.example.com", true)]
    [InlineData("api.example.com..", "api.example.com", false)]
    [InlineData("a.example.org.", "*.example.org", true)]
    [InlineData("example.org.", "*.example.org", false)]
    [InlineData(".", "*", true)]
    public void Match_HostWithTrailingDot_MatchesTheNameWithoutIt(string host, string pattern, bool expected)
        => Assert.Equal(expected, Matches(Route("r", hosts: [pattern]), "/", host));

    [Theory]
    [InlineData("[::1]:8080", true)]
    [InlineData("[::1]", true)]
    [InlineData("[::2]", false)]
    public void Match_Ipv6Host_StripsPortAfterBracket(string host, bool expected)
        => Assert.Equal(expected, Matches(Route("r", hosts: ["[::1]"]), "/", host));

    [Fact]
    public void Match_NoHosts_MatchesAnyOrMissingHost()
    {
        Assert.True(Matches(Route("r"), "/", "whatever.test"));
        Assert.True(Matches(Route("r"), "/", host: null));
    }

    [Fact]
    public void Match_SeveralHosts_MatchesAnyOfThem()
    {
        RouteModel route = Route("r", hosts: ["a.test", "*.b.test"]);
        Assert.True(Matches(route, "/", "a.test"));
        Assert.True(Matches(route, "/", "x.b.test"));
        Assert.False(Matches(route, "/", "c.test"));
    }

    // ---- methods ----

    [Theory]
    [InlineData("GET", true)]
    [InlineData("HEAD", true)]
    [InlineData("POST", false)]
    [InlineData("get", false)]
    [InlineData("GETX", false)]
    public void Match_Methods_ComparesExactBytes(string method, bool expected)
        => Assert.Equal(expected, Matches(Route("r", methods: ["GET", "HEAD"]), "/", method: method));

    [Fact]
    public void Match_CustomMethod_MatchesByBytes()
        => Assert.True(Matches(Route("r", methods: ["PURGE"]), "/", method: "PURGE"));

    // ---- headers ----

    [Fact]
    public void Match_HeaderPresent_RequiresFieldWithAnyValue()
    {
        RouteModel route = Route("r", headers: [Header("X-Tenant")]);
        Assert.True(Matches(route, "/", headers: ("x-tenant", "")));
        Assert.True(Matches(route, "/", headers: ("X-TENANT", "a")));
        Assert.False(Matches(route, "/", headers: ("x-tenants", "a")));
        Assert.False(Matches(route, "/"));
    }

    [Fact]
    public void Match_HeaderValue_IsExactAndCaseSensitive()
    {
        RouteModel route = Route("r", headers: [Header("X-Tenant", "Blue")]);
        Assert.True(Matches(route, "/", headers: ("x-tenant", "Blue")));
        Assert.False(Matches(route, "/", headers: ("x-tenant", "blue")));
        Assert.False(Matches(route, "/", headers: ("x-tenant", "Blue2")));
        Assert.True(Matches(route, "/", headers: [("x-tenant", "red"), ("X-Tenant", "Blue")]));
    }

    [Fact]
    public void Match_HeaderNotPresent_RequiresNoSuchField()
    {
        RouteModel route = Route("r", headers: [Header("X-Debug", present: false)]);
        Assert.True(Matches(route, "/"));
        Assert.True(Matches(route, "/", headers: ("x-other", "1")));
        Assert.False(Matches(route, "/", headers: ("x-debug", "0")));
    }

    [Fact]
    public void Match_SeveralHeaders_AllMustHold()
    {
        RouteModel route = Route("r", headers: [Header("a", "1"), Header("b")]);
        Assert.True(Matches(route, "/", headers: [("a", "1"), ("b", "x")]));
        Assert.False(Matches(route, "/", headers: ("a", "1")));
    }

    // ---- query ----

    [Theory]
    [InlineData("/?a=1&b&c=3", true)]
    [InlineData("/?b", true)]
    [InlineData("/?b=", true)]
    [InlineData("/?b=2", true)]
    [InlineData("/?bb=1&ab", false)]
    [InlineData("/?B=1", false)]
    [InlineData("/", false)]
    [InlineData("/?", false)]
    public void Match_QueryPresent_ComparesNameExactly(string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", query: [Query("b")]), target));

    [Theory]
    [InlineData("/?a=1&b&c=3", true)]
    [InlineData("/?c=3", true)]
    [InlineData("/?c=3&c=4", true)]
    [InlineData("/?c=4&c=3", true)]
    [InlineData("/?c=33", false)]
    [InlineData("/?c=%33", false)]
    [InlineData("/?c", false)]
    public void Match_QueryValue_IsExactAsSent(string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", query: [Query("c", "3")]), target));

    [Theory]
    [InlineData("/?b", true)]
    [InlineData("/?b=", true)]
    [InlineData("/?b=1", false)]
    public void Match_QueryEmptyValue_MatchesBareName(string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", query: [Query("b", "")]), target));

    [Theory]
    [InlineData("/", true)]
    [InlineData("/?a=1", true)]
    [InlineData("/?debug", false)]
    [InlineData("/?a=1&debug=0", false)]
    public void Match_QueryNotPresent_RequiresNoSuchParameter(string target, bool expected)
        => Assert.Equal(expected, Matches(Route("r", query: [Query("debug", present: false)]), target));

    // ---- listeners ----

    [Theory]
    [InlineData(0UL, 0, true)]
    [InlineData(0UL, 5, true)]
    [InlineData(0b10UL, 1, true)]
    [InlineData(0b10UL, 0, false)]
    [InlineData(0b10UL, 2, false)]
    [InlineData(1UL << 63, 63, true)]
    [InlineData(ulong.MaxValue, 64, false)]
    public void Match_ListenerMask_SelectsListeners(ulong mask, int listener, bool expected)
        => Assert.Equal(expected, Matches(Route("r", listeners: mask), "/", listener: listener));

    // ---- precedence ----

    [Fact]
    public void Match_LiteralAndParameter_LiteralWinsRegardlessOfFileOrder()
    {
        RouteModel[] routes = [Route("param", "/users/{id}"), Route("literal", "/users/me")];
        Assert.Equal("literal", MatchId(routes, "/users/me"));
        Assert.Equal("param", MatchId(routes, "/users/42"));
    }

    [Fact]
    public void Match_ParameterAndCatchAll_ParameterWins()
    {
        RouteModel[] routes = [Route("all", "/users/{**rest}"), Route("param", "/users/{id}")];
        Assert.Equal("param", MatchId(routes, "/users/42"));
        Assert.Equal("all", MatchId(routes, "/users/42/orders"));
        Assert.Equal("all", MatchId(routes, "/users"));
    }

    [Fact]
    public void Match_ExactAndCatchAllOnSamePrefix_ExactWinsForThePrefix()
    {
        RouteModel[] routes = [Route("all", "/x/{**rest}"), Route("exact", "/x")];
        Assert.Equal("exact", MatchId(routes, "/x"));
        Assert.Equal("all", MatchId(routes, "/x/"));
    }

    [Fact]
    public void Match_DeeperCatchAll_BeatsShallowerCatchAll()
    {
        RouteModel[] routes = [Route("root", "/{**rest}"), Route("api", "/api/{**rest}"), Route("v1", "/api/v1/{**rest}")];
        Assert.Equal("v1", MatchId(routes, "/api/v1/x"));
        Assert.Equal("api", MatchId(routes, "/api/v2/x"));
        Assert.Equal("root", MatchId(routes, "/other"));
    }

    [Fact]
    public void Match_LiteralDeadEnd_BacktracksToParameter()
    {
        RouteModel[] routes = [Route("literal", "/a/b/d"), Route("param", "/a/{id}/c")];
        Assert.Equal("param", MatchId(routes, "/a/b/c"));
    }

    [Fact]
    public void Match_LiteralDeadEnd_BacktracksToCatchAllOnTheWay()
    {
        RouteModel[] routes = [Route("deep", "/a/b/c"), Route("all", "/a/{**rest}")];
        Assert.Equal("all", MatchId(routes, "/a/b/x"));
        Assert.Equal("deep", MatchId(routes, "/a/b/c"));
    }

    [Fact]
    public void Match_LiteralFailsOtherPredicate_FallsBackToParameter()
    {
        RouteModel[] routes = [Route("param", "/users/{id}"), Route("me-post", "/users/me", methods: ["POST"])];
        Assert.Equal("param", MatchId(routes, "/users/me", method: "GET"));
        Assert.Equal("me-post", MatchId(routes, "/users/me", method: "POST"));
    }

    [Fact]
    public void Match_PathSpecificity_ComesBeforeHostSpecificity()
    {
        RouteModel[] routes = [Route("host-all", "/{**rest}", hosts: ["api.test"]), Route("path", "/x")];
        Assert.Equal("path", MatchId(routes, "/x", "api.test"));
    }

    [Fact]
    public void Match_SamePath_ExactHostBeatsWildcardBeatsNone()
    {
        RouteModel[] routes =
        [
            Route("none", "/x"),
            Route("wildcard", "/x", hosts: ["*.example.org"]),
            Route("exact", "/x", hosts: ["api.example.org"]),
        ];
        Assert.Equal("exact", MatchId(routes, "/x", "api.example.org"));
        Assert.Equal("wildcard", MatchId(routes, "/x", "www.example.org"));
        Assert.Equal("none", MatchId(routes, "/x", "other.test"));
    }

    [Fact]
    public void Match_SamePathAndHosts_MorePredicatesFirst()
    {
        RouteModel[] routes =
        [
            Route("plain", "/x"),
            Route("method", "/x", methods: ["GET"]),
            Route("method-header", "/x", methods: ["GET"], headers: [Header("x-a")]),
            Route("method-header-query", "/x", methods: ["GET"], headers: [Header("x-a")], query: [Query("q")]),
        ];
        Assert.Equal("method-header-query", MatchId(routes, "/x?q", headers: ("x-a", "1")));
        Assert.Equal("method-header", MatchId(routes, "/x", headers: ("x-a", "1")));
        Assert.Equal("method", MatchId(routes, "/x"));
        Assert.Equal("plain", MatchId(routes, "/x", method: "POST"));
    }

    [Fact]
    public void Match_FullTie_FirstInFileWins()
    {
        RouteModel[] routes = [Route("first", "/x/{id}"), Route("second", "/x/{name}")];
        Assert.Equal("first", MatchId(routes, "/x/1"));
        Assert.Equal("second", MatchId([routes[1], routes[0]], "/x/1"));
    }

    [Fact]
    public void Match_NullPathAndRootCatchAll_TieBrokenByFileOrder()
    {
        Assert.Equal("null", MatchId([Route("null", path: null), Route("root", "/{**rest}")], "/x"));
        Assert.Equal("root", MatchId([Route("root", "/{**rest}"), Route("null", path: null)], "/x"));
    }

    [Fact]
    public void Match_ListenerMismatch_FallsThroughToNextCandidate()
    {
        RouteModel[] routes = [Route("admin", "/x", headers: [Header("a")], listeners: 0b10), Route("public", "/x")];
        Assert.Equal("admin", MatchId(routes, "/x", listener: 1, headers: ("a", "1")));
        Assert.Equal("public", MatchId(routes, "/x", listener: 0, headers: ("a", "1")));
    }

    [Fact]
    public void InMatchOrder_SortsByPathThenHostThenPredicatesThenFile()
    {
        RouteModel[] routes = InFileOrder(
            Route("root"),
            Route("api-all", "/api/{**rest}"),
            Route("api-param", "/api/{id}"),
            Route("api-literal", "/api/users"),
            Route("api-literal-host", "/api/users", hosts: ["a.test"]),
            Route("api-literal-wild", "/api/users", hosts: ["*.a.test"]),
            Route("api-literal-method", "/api/users", methods: ["GET"]),
            Route("api-exact", "/api"));
        RouteTable table = RouteTable.Build(routes);
        string[] ids = table.InMatchOrder.Select(r => r.Id).ToArray();
        Assert.Equal(
            ["api-exact", "api-literal-host", "api-literal-wild", "api-literal-method", "api-literal", "api-param", "api-all", "root"],
            ids);
    }

    [Fact]
    public void TryMatch_Hit_ReturnsRoute()
    {
        RouteTable table = RouteTable.Build(InFileOrder(Route("r", "/x")));
        Assert.True(table.TryMatch(TestRequests.Create("GET", "/x", "h"), 0, out RouteModel? route));
        Assert.Equal("r", route.Id);
        Assert.False(table.TryMatch(TestRequests.Create("GET", "/y", "h"), 0, out _));
    }

    [Fact]
    public void Match_WarmTable_AllocatesNothing()
    {
        var routes = new List<RouteModel>();
        for (int i = 0; i < 50; i++)
        {
            routes.Add(Route($"svc{i}", $"/api/v1/service{i}/{{id}}", methods: ["GET"], headers: [Header("x-a", "1")], query: [Query("q")]));
            routes.Add(Route($"svc{i}-all", $"/api/v1/service{i}/{{**rest}}", hosts: ["*.example.org"]));
        }
        routes.Add(Route("fallback"));
        RouteTable table = RouteTable.Build(InFileOrder([.. routes]));
        RequestHead hit = TestRequests.Create("GET", "/api/v1/service42/7?q=1", "api.example.org:8443", ("X-A", "1"));
        RequestHead deep = TestRequests.Create("POST", "/api/v1/service42/7/x/y", "api.example.org");
        RequestHead miss = TestRequests.Create("GET", "/nothing/here", "h");

        Assert.Equal("svc42", table.Match(hit, 0)?.Id);
        Assert.Equal("svc42-all", table.Match(deep, 0)?.Id);
        Assert.Equal("fallback", table.Match(miss, 0)?.Id);

        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            table.Match(hit, 0);
            table.Match(deep, 0);
            table.Match(miss, 0);
        }, iterations: 1000);
        Assert.Equal(0, allocated);
    }
}
