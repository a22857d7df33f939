using System.Net;
using Proxy.Configuration;

namespace Proxy.Core.Tests.Configuration;

public class ConfigSyntaxTests
{
    [Theory]
    [InlineData("127.0.0.1:8080", "127.0.0.1:8080")]
    [InlineData("0.0.0.0:0", "0.0.0.0:0")]
    [InlineData("*:80", "0.0.0.0:80")]
    [InlineData("[::1]:8080", "[::1]:8080")]
    [InlineData("[::]:65535", "[::]:65535")]
    public void TryParseListenerAddress_Valid_ReturnsEndPoint(string text, string expected)
    {
        Assert.True(ConfigSyntax.TryParseListenerAddress(text, out var endPoint, out var error), error);
        Assert.Equal(IPEndPoint.Parse(expected), endPoint);
    }

    [Theory]
    [InlineData("127.0.0.1", "missing ':port'")]
    [InlineData("127.0.0.1:", "missing port")]
    [InlineData("127.0.0.1:65536", "out of range")]
    [InlineData("127.0.0.1:123456", "out of range")]
    [InlineData("127.0.0.1:http", "not a number")]
    [InlineData("localhost:80", "not an IP address")]
    [InlineData("127.1:80", "not an IP address")]
    [InlineData("::1:80", "brackets")]
    [InlineData("[::1:80", "missing ']'")]
    [InlineData("[::1]", "missing ':port'")]
    [InlineData("[10.0.0.1]:80", "not an IPv6 address")]
    public void TryParseListenerAddress_Invalid_ExplainsWhy(string text, string reason)
    {
        Assert.False(ConfigSyntax.TryParseListenerAddress(text, out _, out var error));
        Assert.Contains(reason, error);
    }

    [Theory]
    [InlineData("http://127.0.0.1:9000", "127.0.0.1", 9000)]
    [InlineData("http://backend", "backend", 80)]
    [InlineData("http://Backend.Example.com/", "backend.example.com", 80)]
    [InlineData("http://[::1]:9000", "[::1]", 9000)]
    [InlineData("https://127.0.0.1:9443", "127.0.0.1", 9443)]
    [InlineData("https://api.example.com", "api.example.com", 443)]
    public void TryParseDestination_Valid_ReturnsHostAndPort(string text, string host, int port)
    {
        Assert.True(ConfigSyntax.TryParseDestination(text, out var h, out var p, out var error), error);
        Assert.Equal(host, h);
        Assert.Equal(port, p);
    }

    [Theory]
    [InlineData("127.0.0.1:9000", "absolute http:// or https:// URL")]
    [InlineData("ftp://host", "absolute http:// or https:// URL")]
    [InlineData("http://host:9000/api", "path")]
    [InlineData("http://host?x=1", "path, query")]
    [InlineData("http://user:pw@host", "credentials")]
    [InlineData("http://host:0", "port")]
    public void TryParseDestination_Invalid_ExplainsWhy(string text, string reason)
    {
        Assert.False(ConfigSyntax.TryParseDestination(text, out _, out _, out var error));
        Assert.Contains(reason, error);
    }

    [Theory]
    [InlineData("10.0.0.0/8", "10.0.0.0/8")]
    [InlineData("::1/128", "::1/128")]
    [InlineData("192.168.1.7", "192.168.1.7/32")]
    [InlineData("0.0.0.0/0", "0.0.0.0/0")]
    public void TryParseCidr_Valid_ReturnsNetwork(string text, string expected)
    {
        Assert.True(ConfigSyntax.TryParseCidr(text, out var network, out var error), error);
        Assert.Equal(expected, network.ToString());
    }

    [Theory]
    [InlineData("10.0.0.0/33", "prefix length")]
    [InlineData("10.0.0.0/", "prefix length")]
    [InlineData("10.0.0/8", "not an IP address")]
    [InlineData("example.com/8", "not an IP address")]
    [InlineData("10.1.0.0/8", "did you mean 10.0.0.0/8")]
    public void TryParseCidr_Invalid_ExplainsWhy(string text, string reason)
    {
        Assert.False(ConfigSyntax.TryParseCidr(text, out _, out var error));
        Assert.Contains(reason, error);
    }

    [Theory]
    [InlineData("/")]
    [InlineData("/hello")]
    [InlineData("/api/{**rest}")]
    [InlineData("/{**rest}")]
    [InlineData("/users/{id}/posts/{post_id}")]
    [InlineData("/a/")]
    [InlineData("/a%2Fb/%20")]
    [InlineData("/api/{*rest}")]
    [InlineData("/caf%c3%a9")]
    [InlineData("/a%25")]
    [InlineData("/.well-known/x")]
    [InlineData("/files/..x/...")]
    public void CheckPathTemplate_Valid_ReturnsNull(string template)
    {
        Assert.Null(ConfigSyntax.CheckPathTemplate(template));
    }

    [Theory]
    [InlineData("api", "must start with '/'")]
    [InlineData("/api/{**rest}/more", "must be the last segment")]
    [InlineData("/users/x{id}", "whole segment")]
    [InlineData("/users/{id", "whole segment")]
    [InlineData("/users/id}", "whole segment")]
    [InlineData("/users/{}", "name is empty")]
    [InlineData("/files/{**}", "name is empty")]
    [InlineData("/a/{id}/b/{id}", "appears twice")]
    [InlineData("/a/{***rest}", "is not supported; use '{**rest}'")]
    [InlineData("/a/{*rest}/b", "must be the last segment")]
    [InlineData("/a/{*}", "name is empty")]
    [InlineData("/a/{my-id}", "only letters")]
    [InlineData("/a?b=1", "cannot appear")]
    [InlineData("/a b", "cannot appear")]
    public void CheckPathTemplate_Invalid_ExplainsWhy(string template, string reason)
    {
        Assert.Contains(reason, ConfigSyntax.CheckPathTemplate(template));
    }

    /// <summary>
    /// The request parser refuses dot segments and malformed escapes, takes only visible ASCII and decodes escaped
    /// unreserved characters before routing: a template spelt so was accepted and made a route that never matched.
    /// </summary>
    [Theory]
    [InlineData("/a/../b", "path '/a/../b' has the dot segment '..': requests with one are refused (400), so the route could never match")]
    [InlineData("/p/./q", "path '/p/./q' has the dot segment '.': requests with one are refused (400), so the route could never match")]
    [InlineData("/x/%2e%2E/y", "path '/x/%2e%2E/y' has the dot segment '%2e%2E': requests with one are refused (400), so the route could never match")]
    [InlineData("/x/{id}/..", "path '/x/{id}/..' has the dot segment '..': requests with one are refused (400), so the route could never match")]
    [InlineData("/a%zz", "path '/a%zz' has a '%' not followed by two hex digits: requests with one are refused (400); write '%25' for a literal '%'")]
    [InlineData("/a%4", "path '/a%4' has a '%' not followed by two hex digits: requests with one are refused (400); write '%25' for a literal '%'")]
    [InlineData("/t%41", "path '/t%41' escapes 'A' as '%41': requests are routed with escaped unreserved characters decoded, so the route could never match; write '/tA'")]
    [InlineData("/%7Euser/%2f", "path '/%7Euser/%2f' escapes '~' as '%7E': requests are routed with escaped unreserved characters decoded, so the route could never match; write '/~user/%2F'")]
    [InlineData("/caf\u00e9/{**rest}", "path '/caf\u00e9/{**rest}' contains '\u00e9', which a request can only send percent-encoded (raw bytes above 0x7E are refused); write '/caf%C3%A9/{**rest}'")]
    public void CheckPathTemplate_NoRequestCanMatch_ExplainsAndSuggests(string template, string error)
    {
        Assert.Equal(error, ConfigSyntax.CheckPathTemplate(template));
    }

    /// <summary>Matching recurses once per template segment: a 200,000-segment template overflowed the stack on a match.</summary>
    [Fact]
    public void CheckPathTemplate_MoreThan128Segments_Refused()
    {
        Assert.Null(ConfigSyntax.CheckPathTemplate(string.Concat(Enumerable.Repeat("/a", 127)) + "/{**rest}"));
        Assert.Equal(
            "path '" + string.Concat(Enumerable.Repeat("/a", 50)) + "...' has 200001 segments; at most 128 are supported",
            ConfigSyntax.CheckPathTemplate(string.Concat(Enumerable.Repeat("/a", 200_000)) + "/{**rest}"));
        Assert.Contains("has 129 segments", ConfigSyntax.CheckPathTemplate(string.Concat(Enumerable.Repeat("/a", 129))));
    }

    [Theory]
    [InlineData("/a%2fb/%c3%a9", "/a%2Fb/%C3%A9")]
    [InlineData("/%41%2d%7e", "/A-~")]
    [InlineData("/caf\u00e9/\U0001F600", "/caf%C3%A9/%F0%9F%98%80")]
    [InlineData("/users/{id}/{**rest}", "/users/{id}/{**rest}")]
    public void CanonicalPathTemplate_SpellsTheTemplateAsRoutedRequestsDo(string template, string canonical)
    {
        Assert.Equal(canonical, ConfigSyntax.CanonicalPathTemplate(template));
    }

    [Theory]
    [InlineData("api.example.com")]
    [InlineData("API.Example.com")]
    [InlineData("*.example.org")]
    [InlineData("localhost")]
    [InlineData("10.0.0.1")]
    [InlineData("[::1]")]
    public void CheckHostPattern_Valid_ReturnsNull(string pattern)
    {
        Assert.Null(ConfigSyntax.CheckHostPattern(pattern));
    }

    [Theory]
    [InlineData("*", "leave 'hosts' out")]
    [InlineData("api.example.com:8080", "port")]
    [InlineData("a.*.example.org", "wildcard")]
    [InlineData("*example.org", "wildcard")]
    [InlineData("a..b", "empty")]
    [InlineData("exa mple.com", "not allowed")]
    [InlineData("[::1", "IPv6")]
    [InlineData("::1", "host '::1' is an IPv6 address: write it in brackets, '[::1]'")]
    [InlineData("2001:db8::1", "write it in brackets, '[2001:db8::1]'")]
    public void CheckHostPattern_Invalid_ExplainsWhy(string pattern, string reason)
    {
        Assert.Contains(reason, ConfigSyntax.CheckHostPattern(pattern));
    }

    [Theory]
    [InlineData("GET", true)]
    [InlineData("M-SEARCH", true)]
    [InlineData("", false)]
    [InlineData("GE T", false)]
    [InlineData("GET/", false)]
    public void IsToken_Text_ReportsTokenness(string text, bool expected)
    {
        Assert.Equal(expected, ConfigSyntax.IsToken(text));
    }
}
