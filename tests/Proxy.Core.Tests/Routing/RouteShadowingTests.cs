using Proxy.Model;
using Proxy.Routing;
using static Proxy.Core.Tests.Routing.TestRoutes;

namespace Proxy.Core.Tests.Routing;

public class RouteShadowingTests
{
    private static string[] Find(params RouteModel[] routes)
        => RouteShadowing.Find(InFileOrder(routes)).Select(p => $"{p.Shadowed.Id}<{p.By.Id}").ToArray();

    [Fact]
    public void Find_DuplicateRoutes_ReportsTheLaterOne()
        => Assert.Equal(["b<a"], Find(Route("a", "/x", hosts: ["h.test"]), Route("b", "/x", hosts: ["h.test"])));

    [Fact]
    public void Find_ThreeDuplicates_NamesTheFirstAsShadower()
        => Assert.Equal(["b<a", "c<a"], Find(Route("a", "/x/{id}"), Route("b", "/x/{name}"), Route("c", "/x/{other}")));

    [Fact]
    public void Find_CatchAllBeforeSameCatchAllOnSubsetOfHosts_Reported()
        => Assert.Equal(
            ["b<a"],
            Find(Route("a", "/{**rest}", hosts: ["api.test", "www.test"]), Route("b", path: null, hosts: ["api.test"])));

    [Fact]
    public void Find_CatchAllBeforeNarrowerMethods_Reported()
        => Assert.Equal(
            ["b<a"],
            Find(Route("a", "/api/{**rest}", hosts: ["h.test"], methods: ["GET", "POST"]), Route("b", "/api/{**rest}", hosts: ["h.test"], methods: ["GET"])));

    [Fact]
    public void Find_NarrowerPathOnSameHostWinsByPrecedence_NotReported()
        => Assert.Empty(Find(Route("all", "/{**rest}", hosts: ["h.test"]), Route("users", "/users", hosts: ["h.test"])));

    [Fact]
    public void Find_ParameterBeforeLiteralInFile_NotReported()
        => Assert.Empty(Find(Route("param", "/users/{id}"), Route("me", "/users/me")));

    [Fact]
    public void Find_LaterRouteWithMorePredicates_WinsByPrecedenceAndIsNotReported()
        => Assert.Empty(Find(Route("plain", "/x"), Route("header", "/x", headers: [Header("x-a")])));

    [Fact]
    public void Find_ExactHostLaterThanWildcard_WinsByPrecedenceAndIsNotReported()
        => Assert.Empty(Find(Route("wild", "/x", hosts: ["*.test"]), Route("exact", "/x", hosts: ["a.test"])));

    [Fact]
    public void Find_WildcardCoversNarrowerWildcard_Reported()
        => Assert.Equal(["b<a"], Find(Route("a", "/x", hosts: ["*.example.org"]), Route("b", "/x", hosts: ["*.api.example.org"])));

    [Fact]
    public void Find_WildcardDoesNotCoverItsApex_NotReported()
        => Assert.Empty(Find(Route("a", "/x", hosts: ["*.example.org", "x.test"]), Route("b", "/x", hosts: ["example.org", "*.y.test"])));

    [Fact]
    public void Find_DifferentHeaderValues_NotReported()
        => Assert.Empty(Find(Route("a", "/x", headers: [Header("x-a", "1")]), Route("b", "/x", headers: [Header("x-a", "2")])));

    [Fact]
    public void Find_SameHeaderAndQueryPredicates_Reported()
        => Assert.Equal(
            ["b<a"],
            Find(
                Route("a", "/x", headers: [Header("X-A", "1")], query: [Query("q", present: false)]),
                Route("b", "/x", headers: [Header("x-a", "1")], query: [Query("q", present: false)])));

    [Fact]
    public void Find_DisjointMethods_NotReported()
        => Assert.Empty(Find(Route("a", "/x", methods: ["GET"]), Route("b", "/x", methods: ["POST"])));

    [Fact]
    public void Find_UnionOfEarlierRoutesCovers_NotReportedBecauseConservative()
        => Assert.Empty(Find(Route("get", "/x", methods: ["GET"]), Route("post", "/x", methods: ["POST"]), Route("both", "/x", methods: ["GET", "POST"])));

    [Theory]
    [InlineData(0b11UL, 0b01UL, true)]
    [InlineData(0UL, 0b01UL, true)]
    [InlineData(0b01UL, 0b11UL, false)]
    [InlineData(0b01UL, 0UL, false)]
    [InlineData(0b01UL, 0b10UL, false)]
    public void Find_ListenerMasks_ReportedOnlyWhenCovered(ulong first, ulong second, bool reported)
        => Assert.Equal(reported, Find(Route("a", "/x", listeners: first), Route("b", "/x", listeners: second)).Length == 1);

    [Fact]
    public void Find_NoRoutes_ReturnsEmpty()
        => Assert.Empty(RouteShadowing.Find([]));

    [Theory]
    [InlineData("/x/{**r}", "/x", true)]
    [InlineData("/x/{**r}", "/x/{id}/y", true)]
    [InlineData("/{id}", "/x", true)]
    [InlineData("/{id}", "/", false)]
    [InlineData("/x", "/x/{**r}", false)]
    [InlineData("/x/{id}", "/x/{**r}", false)]
    [InlineData("/x", "/y", false)]
    [InlineData("/x", "/x/", false)]
    [InlineData("/{**r}", "/{**r}", true)]
    public void Covers_Templates_MatchesSubsetRelation(string by, string shadowed, bool expected)
        => Assert.Equal(expected, RouteTemplate.Parse(by).Covers(RouteTemplate.Parse(shadowed)));
}
