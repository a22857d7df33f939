using System.Net;
using System.Text;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>ip_filter behind trusted proxies: X-Forwarded-For parsing and the right-most untrusted address.</summary>
public class TrustedProxyTests
{
    private static IPNetwork[] Nets(params string[] cidrs) => cidrs.Select(IPNetwork.Parse).ToArray();

    [Theory]
    [InlineData("10.1.2.3")]
    [InlineData("0.0.0.0")]
    [InlineData("255.255.255.255")]
    [InlineData("::")]
    [InlineData("::1")]
    [InlineData("2001:db8::1")]
    [InlineData("2001:db8:0:0:1:0:0:1")]
    [InlineData("fe80::")]
    [InlineData("1:2:3:4:5:6:7:8")]
    [InlineData("::ffff:192.0.2.1")]
    [InlineData("64:ff9b::192.0.2.33")]
    [InlineData("1::8")]
    public void TryParse_ValidAddress_MatchesIPAddressParse(string text)
    {
        Assert.True(IpText.TryParse(Encoding.ASCII.GetBytes(text), out UInt128 value, out bool isV4));
        var expected = IPAddress.Parse(text);
        Span<byte> bytes = stackalloc byte[16];
        expected.TryWriteBytes(bytes, out int written);
        Assert.Equal(written == 4, isV4);
        UInt128 want = written == 4 ? System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(bytes) : System.Buffers.Binary.BinaryPrimitives.ReadUInt128BigEndian(bytes);
        Assert.Equal(want, value);
    }

    [Theory]
    [InlineData("10.1.2.3:8080", "10.1.2.3")]
    [InlineData("[2001:db8::1]:443", "2001:db8::1")]
    [InlineData("[::1]", "::1")]
    public void TryParse_WithPortOrBrackets_ParsesAddress(string text, string address)
    {
        Assert.True(IpText.TryParse(Encoding.ASCII.GetBytes(text), out UInt128 a, out bool v4a));
        Assert.True(IpText.TryParse(Encoding.ASCII.GetBytes(address), out UInt128 b, out bool v4b));
        Assert.Equal(b, a);
        Assert.Equal(v4b, v4a);
    }

    [Theory]
    [InlineData("")]
    [InlineData("unknown")]
    [InlineData("10.1.2")]
    [InlineData("10.1.2.3.4")]
    [InlineData("10.1.2.256")]
    [InlineData("010.1.2.3")]
    [InlineData("1:2:3:4:5:6:7:8:9")]
    [InlineData("1::2::3")]
    [InlineData("12345::")]
    [InlineData("fe80::1%eth0")]
    [InlineData("1:2:3:4:5:6:7:")]
    [InlineData("[::1")]
    [InlineData("_hidden")]
    public void TryParse_Invalid_ReturnsFalse(string text)
    {
        Assert.False(IpText.TryParse(Encoding.ASCII.GetBytes(text), out _, out _));
    }

    private static IpFilter Filter(string[] allow, string[] deny)
        => new("edge", Nets(allow), Nets(deny), Nets("10.0.0.0/8", "::1/128"));

    private static FilterStatus Run(IpFilter filter, string peer, params string[] xff)
    {
        string fields = string.Concat(xff.Select(x => $"X-Forwarded-For: {x}\r\n"));
        var (_, context) = FilterContexts.Create($"GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n", IPAddress.Parse(peer));
        return filter.OnRequestHeaders(context);
    }

    [Fact]
    public void OnRequestHeaders_UntrustedPeer_IgnoresForwardedFor()
    {
        var filter = Filter(["203.0.113.0/24"], []);
        Assert.Equal(FilterStatus.Respond, Run(filter, "198.51.100.7", "203.0.113.5"));
    }

    [Fact]
    public void OnRequestHeaders_TrustedPeer_UsesRightMostUntrustedEntry()
    {
        var filter = Filter(["203.0.113.0/24"], []);
        // The client forged "203.0.113.5" on the left; the proxy chain saw 198.51.100.7.
        Assert.Equal(FilterStatus.Respond, Run(filter, "10.0.0.1", "203.0.113.5, 198.51.100.7, 10.0.0.2"));
        Assert.Equal(FilterStatus.Continue, Run(filter, "10.0.0.1", "198.51.100.7, 203.0.113.5, 10.0.0.2"));
    }

    [Fact]
    public void OnRequestHeaders_RepeatedFields_ReadAsOneListInOrder()
    {
        var filter = Filter([], ["198.51.100.0/24"]);
        Assert.Equal(FilterStatus.Respond, Run(filter, "::1", "203.0.113.5", "198.51.100.7"));
        Assert.Equal(FilterStatus.Continue, Run(filter, "::1", "198.51.100.7", "203.0.113.5, 10.9.9.9"));
    }

    [Theory]
    // RFC 9110 section 5.6.1: OWS is any run of SP and HTAB around the comma, in any order.
    [InlineData("198.51.100.7,\t 10.0.0.2")]
    [InlineData("198.51.100.7 \t, \t10.0.0.2\t ")]
    [InlineData("198.51.100.7 \t,10.0.0.2")]
    public void OnRequestHeaders_MixedSpacesAndTabsAroundEntries_Trimmed(string xff)
    {
        var filter = Filter(["198.51.100.0/24"], []);
        var (_, context) = FilterContexts.Create($"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {xff}\r\n\r\n", IPAddress.Parse("10.0.0.1"));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
    }

    [Fact]
    public void OnRequestHeaders_AllTrustedOrNone_UsesLeftMostOrPeer()
    {
        var filter = Filter(["10.0.0.0/8"], ["10.0.0.1/32"]);
        Assert.Equal(FilterStatus.Continue, Run(filter, "10.0.0.1", "10.0.0.3, 10.0.0.2"));
        // No X-Forwarded-For: the trusted peer itself, which is denied.
        Assert.Equal(FilterStatus.Respond, Run(filter, "10.0.0.1"));
    }

    [Fact]
    public void OnRequestHeaders_GarbageRightOfClient_Refused403()
    {
        var filter = Filter([], []);
        var (_, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.5, bogus\r\n\r\n", IPAddress.Parse("10.0.0.1"));
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(403, context.ReplyStatus);
        Assert.Equal("ip_forwarded_for_invalid", context.ReplyDetails);
        // Garbage left of the client is never read.
        Assert.Equal(FilterStatus.Continue, Run(filter, "10.0.0.1", "bogus, 203.0.113.5"));
    }

    [Fact]
    public void OnRequestHeaders_ForwardedFor_AllocatesNothing()
    {
        var filter = Filter(["198.51.100.0/24"], []);
        var (head, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.5, 2001:db8::7, 198.51.100.7, 10.0.0.2\r\n\r\n", IPAddress.Parse("10.0.0.1"));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.OnRequestHeaders(context), iterations: 1000);
        Assert.True(allocated < 100, $"{allocated} bytes allocated over the loop (best of three rounds)");
    }

    private static string[] Errors(string policy) => ConfigLoader.LoadText(string.Join('\n',
        "policies:", "  edge:", $"    ip_filter: {policy}",
        "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }",
        "routes:", "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [edge] }") + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    [Fact]
    public void Validate_TrustedProxies_Accepted()
    {
        Assert.Empty(Errors("{ allow: [203.0.113.0/24], trusted_proxies: [10.0.0.0/8, \"::1/128\"] }"));
    }

    [Fact]
    public void Validate_EmptyAllowList_Reported()
    {
        var errors = Errors("{ allow: [], deny: [10.0.0.0/8] }");
        Assert.Single(errors);
        Assert.StartsWith("t.yaml:3:18: ip_filter policy 'edge' has an empty 'allow' list", errors[0]);
    }

    [Fact]
    public void Validate_DenyEverything_ReportedNeverPasses()
    {
        Assert.Equal(["t.yaml:3:5: ip_filter policy 'edge' can never pass: its deny list covers every IPv4 and IPv6 address"],
            Errors("{ deny: [0.0.0.0/0, \"::/0\"] }"));
        Assert.Empty(Errors("{ deny: [0.0.0.0/0] }"));
    }
}
