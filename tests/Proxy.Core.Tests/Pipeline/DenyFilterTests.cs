using System.Text;
using System.Text.Json;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The <c>deny</c> policy (a small WAF): signatures over decoded path, query and headers; method allow list.</summary>
public class DenyFilterTests
{
    private static readonly DenyFilter s_all = new(new DenyOptions
    {
        PolicyName = "waf",
        PathTraversal = true,
        SqlInjection = true,
        Xss = true,
        Methods = ["GET", "POST"],
        Patterns = ["wp-login", "/.git/"],
    });

    private static DenyRule Check(string target, string headers = "", string method = "GET")
    {
        var (_, context) = FilterContexts.Create($"{method} {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
        return s_all.Check(context);
    }

    [Theory]
    [InlineData("/orders/42")]
    [InlineData("/orders/42?expand=items&sort=-date")]
    [InlineData("/search?q=rock+and+roll")]
    [InlineData("/search?q=o%27reilly")]
    [InlineData("/files/a.b/c..d/e")]
    [InlineData("/docs/select-union-guide")]
    [InlineData("/search?q=union")]
    [InlineData("/redirect?next=https%3A%2F%2Fexample.com%2Fa")]
    [InlineData("/a?email=x%40example.com&on=1")]
    public void Check_OrdinaryRequests_Pass(string target)
    {
        Assert.Equal(DenyRule.None, Check(target, "User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\nCookie: a=1; b='x'\r\n"));
    }

    [Theory]
    // The request parser already refuses dot segments in the path ("/../", "/%2e%2e/"); these get past it.
    [InlineData("/download?file=%2e%2e%2f%2e%2e%2fsecret")]
    [InlineData("/static/..%2fsecret")]
    [InlineData("/static/%252e%252e/secret")]
    [InlineData("/download?file=..")]
    [InlineData("/static/..%5cwin.ini")]
    [InlineData("/download?file=../../etc/shadow")]
    [InlineData("/a%00.jpg")]
    public void Check_PathTraversal_Refused(string target)
    {
        Assert.Equal(DenyRule.PathTraversal, Check(target));
    }

    [Theory]
    [InlineData("/items?id=1%20UNION%20SELECT%20password%20FROM%20users")]
    [InlineData("/items?id=1+union++all+select+1")]
    [InlineData("/login?user=admin%27%20or%20%271%27%3D%271")]
    [InlineData("/login?user=admin'--")]
    [InlineData("/items?id=1;%20DROP%20TABLE%20users")]
    [InlineData("/items?id=sleep(5)")]
    [InlineData("/items?id=1/**/union/**/select")]
    public void Check_SqlInjection_Refused(string target)
    {
        Assert.Equal(DenyRule.SqlInjection, Check(target));
    }

    [Theory]
    [InlineData("/search?q=%3Cscript%3Ealert(1)%3C/script%3E")]
    [InlineData("/search?q=<img src=x onerror=alert(1)>")]
    [InlineData("/go?url=javascript:alert(document.cookie)")]
    [InlineData("/p/%3CsVg/onload=x%3E")]
    public void Check_Xss_Refused(string target)
    {
        Assert.Equal(DenyRule.Xss, Check(target.Replace(" ", "%20")));
    }

    [Fact]
    public void Check_SignatureInHeader_Refused()
    {
        Assert.Equal(DenyRule.Xss, Check("/", "Referer: https://x.test/?q=%3Cscript%3E\r\n"));
        Assert.Equal(DenyRule.SqlInjection, Check("/", "User-Agent: ' OR 1=1 --\r\n"));
    }

    [Fact]
    public void Check_AuthorizationHeader_NotScanned()
    {
        Assert.Equal(DenyRule.None, Check("/", "Authorization: Basic ' or '1'='1 <script>\r\n"));
    }

    [Theory]
    [InlineData("GET", true)]
    [InlineData("POST", true)]
    [InlineData("DELETE", false)]
    [InlineData("PUT", false)]
    public void Check_MethodAllowList(string method, bool allowed)
    {
        Assert.Equal(allowed ? DenyRule.None : DenyRule.Method, Check("/", method: method));
    }

    [Theory]
    [InlineData("/WP-LOGIN.php")]
    [InlineData("/repo/.git/config")]
    public void Check_Patterns_CaseInsensitive(string target)
    {
        Assert.Equal(DenyRule.Pattern, Check(target));
    }

    [Fact]
    public void Check_LongQuery_UsesPooledBufferAndStillFinds()
    {
        string filler = new('a', 5000);
        Assert.Equal(DenyRule.SqlInjection, Check($"/x?a={filler}&id=1%20union%20select%201"));
        Assert.Equal(DenyRule.None, Check($"/x?a={filler}"));
    }

    [Fact]
    public void OnRequestHeaders_Refused_Responds403ProblemNamingRule()
    {
        var (_, context) = FilterContexts.Create("GET /a?f=../b HTTP/1.1\r\nHost: a\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, s_all.OnRequestHeaders(context));
        Assert.Equal(403, context.ReplyStatus);
        Assert.Equal("waf_path_traversal", context.ReplyDetails);
        var body = JsonDocument.Parse(context.ReplyBody.ToArray()).RootElement;
        Assert.Equal("path_traversal", body.GetProperty("rule").GetString());
        Assert.Equal(403, body.GetProperty("status").GetInt32());
        Assert.Contains("'waf'", body.GetProperty("detail").GetString());
    }

    /// <summary>A request trailer field is screened as a header value is: same rules, Authorization excepted, no allocation.</summary>
    [Theory]
    [InlineData("X-Search", "1%20UNION%20SELECT password", true)]
    [InlineData("X-Note", "<script>alert(1)</script>", true)]
    [InlineData("X-Path", "/wp-login.php", true)]
    [InlineData("Authorization", "Basic ' or '1'='1 <script>", false)]
    [InlineData("grpc-status", "0", false)]
    [InlineData("X-Checksum", "sha256=abc", false)]
    public void Refuses_TrailerField_ScreenedLikeAHeaderValue(string name, string value, bool refused)
    {
        byte[] n = System.Text.Encoding.ASCII.GetBytes(name), v = System.Text.Encoding.ASCII.GetBytes(value);
        var filter = new DenyFilter(s_all.Options);

        Assert.Equal(refused, filter.Refuses(n, v));
        Assert.Equal(refused ? 1 : 0, filter.DroppedTrailerCount);
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.Refuses(n, v), iterations: 1000);
        Assert.True(allocated < 100, $"{allocated} bytes allocated over the loop (best of three rounds)");
    }

    [Fact]
    public void Refuses_MethodsOnlyPolicy_RefusesNoTrailer()
    {
        var methodsOnly = new DenyFilter(new DenyOptions { PolicyName = "m", Methods = ["GET"] });
        Assert.False(methodsOnly.Refuses("X-Search"u8, "1 union select 2"u8));
    }

    [Fact]
    public void OnRequestHeaders_SteadyState_AllocatesNothing()
    {
        var (_, context) = FilterContexts.Create("GET /orders/42?expand=items&q=hello+world HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\n"
            + "Accept: application/json\r\nReferer: " + new string('r', 400) + "\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, s_all.OnRequestHeaders(context));
        long allocated = SteadyStateAllocation.BestOfRounds(() => s_all.OnRequestHeaders(context), iterations: 1000);
        Assert.True(allocated < 100, $"{allocated} bytes allocated over the loop (best of three rounds)");
    }

    private static string[] Errors(string policy, string routeMethods = "") => ConfigLoader.LoadText(string.Join('\n',
        "policies:", "  waf:", $"    deny: {policy}",
        "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }",
        "routes:", $"  - {{ id: r, match: {{ path: /r{routeMethods} }}, respond: {{ status: 200 }}, policies: [waf] }}") + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    [Fact]
    public void Validate_FullPolicy_NoErrors()
    {
        Assert.Empty(Errors("{ path_traversal: true, sql_injection: true, xss: false, methods: [GET, POST], patterns: [wp-login] }"));
    }

    [Fact]
    public void Validate_BadSettings_ReportPositions()
    {
        var errors = Errors("{ path_traversal: yes, methods: [get], patterns: [\"\"] }");
        Assert.Equal(3, errors.Length);
        Assert.StartsWith("t.yaml:3:29: expected true or false for 'path_traversal', got 'yes'", errors[0]);
        Assert.StartsWith("t.yaml:3:44: methods are case-sensitive (RFC 9110 section 9.1); did you mean 'GET'?", errors[1]);
        Assert.StartsWith("t.yaml:3:61: a deny pattern is a non-empty string", errors[2]);
    }

    [Fact]
    public void Validate_NothingEnabledOrEmptyMethods_Reported()
    {
        Assert.Equal(["t.yaml:3:5: deny policy 'waf' checks nothing: enable path_traversal, sql_injection or xss, or list methods or patterns"],
            Errors("{ xss: false }"));
        Assert.Equal(["t.yaml:3:13: deny policy 'waf' can never pass: its 'methods' list (the methods let through) is empty"],
            Errors("{ methods: [] }"));
    }
}
