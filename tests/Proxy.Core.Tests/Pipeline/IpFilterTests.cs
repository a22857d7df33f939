using System.Net;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

public class IpFilterTests
{
    private static IPNetwork[] Nets(params string[] cidrs) => cidrs.Select(IPNetwork.Parse).ToArray();

    [Theory]
    [InlineData("10.0.0.0/8", "10.255.1.2", true)]
    [InlineData("10.0.0.0/8", "11.0.0.1", false)]
    [InlineData("10.1.2.3/32", "10.1.2.3", true)]
    [InlineData("10.1.2.3/32", "10.1.2.4", false)]
    [InlineData("0.0.0.0/0", "203.0.113.9", true)]
    [InlineData("192.168.0.0/23", "192.168.1.255", true)]
    [InlineData("192.168.0.0/23", "192.168.2.0", false)]
    [InlineData("::1/128", "::1", true)]
    [InlineData("::1/128", "::2", false)]
    [InlineData("2001:db8::/32", "2001:db8:ffff::1", true)]
    [InlineData("2001:db8::/32", "2001:db9::1", false)]
    [InlineData("::/0", "fe80::1", true)]
    [InlineData("::/0", "127.0.0.1", false)]
    [InlineData("127.0.0.0/8", "::ffff:127.0.0.1", true)]
    [InlineData("2001:db8::/127", "2001:db8::1", true)]
    [InlineData("2001:db8::/127", "2001:db8::2", false)]
    public void CidrSet_Contains_MatchesPrefix(string cidr, string address, bool expected)
    {
        Assert.Equal(expected, new CidrSet(Nets(cidr)).Contains(IPAddress.Parse(address)));
    }

    [Fact]
    public void IsAllowed_DenyInsideAllow_DenyWins()
    {
        var filter = new IpFilter("office-only", Nets("10.0.0.0/8", "::1/128"), Nets("10.1.2.3/32"));
        Assert.True(filter.IsAllowed(IPAddress.Parse("10.1.2.4")));
        Assert.False(filter.IsAllowed(IPAddress.Parse("10.1.2.3")));
        Assert.True(filter.IsAllowed(IPAddress.IPv6Loopback));
        Assert.False(filter.IsAllowed(IPAddress.Parse("192.0.2.1")));
    }

    [Fact]
    public void IsAllowed_EmptyAllowList_AllowsAllNotDenied()
    {
        var filter = new IpFilter("p", [], Nets("192.0.2.0/24"));
        Assert.True(filter.IsAllowed(IPAddress.Parse("198.51.100.1")));
        Assert.True(filter.IsAllowed(IPAddress.Parse("2001:db8::1")));
        Assert.False(filter.IsAllowed(IPAddress.Parse("192.0.2.77")));
    }

    [Fact]
    public void OnRequestHeaders_Denied_Responds403ProblemJson()
    {
        var filter = new IpFilter("office-only", Nets("10.0.0.0/8"), []);
        var context = RateLimitTests.Context("GET / HTTP/1.1\r\nHost: a\r\n\r\n", IPAddress.Loopback);
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(403, context.ReplyStatus);
        Assert.Equal("ip_denied", context.ReplyDetails);
        var body = System.Text.Json.JsonDocument.Parse(context.ReplyBody.ToArray()).RootElement;
        Assert.Equal(403, body.GetProperty("status").GetInt32());
        Assert.Contains("office-only", body.GetProperty("detail").GetString());
        Assert.Equal(1, filter.DeniedCount);
    }

    [Theory]
    [InlineData(new[] { "10.0.0.0/8" }, new[] { "10.0.0.0/8" }, true)]
    [InlineData(new[] { "10.0.0.0/8" }, new[] { "0.0.0.0/0" }, true)]
    [InlineData(new[] { "10.0.0.0/8" }, new[] { "10.0.0.0/9", "10.128.0.0/9" }, true)]
    [InlineData(new[] { "10.0.0.0/8" }, new[] { "10.0.0.0/9" }, false)]
    [InlineData(new[] { "10.0.0.0/8", "::1/128" }, new[] { "10.0.0.0/8" }, false)]
    [InlineData(new[] { "::1/128" }, new[] { "::/0" }, true)]
    [InlineData(new[] { "::1/128" }, new[] { "0.0.0.0/0" }, false)]
    public void CidrSet_Covers_MergesRanges(string[] allow, string[] deny, bool expected)
    {
        Assert.Equal(expected, CidrSet.Covers(Nets(deny), Nets(allow)));
    }

    [Fact]
    public void IsAllowed_SteadyState_AllocatesNothing()
    {
        var filter = new IpFilter("p", Nets("10.0.0.0/8", "2001:db8::/32"), Nets("10.1.2.3/32"));
        var v4 = IPAddress.Parse("10.9.9.9");
        var v6 = IPAddress.Parse("2001:db8::5");
        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            Assert.True(filter.IsAllowed(v4));
            Assert.True(filter.IsAllowed(v6));
        }, iterations: 10_000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over the loop (best of three rounds)");
    }
}
