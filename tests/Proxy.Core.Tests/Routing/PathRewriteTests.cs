using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Text;
using Proxy.Configuration;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Model;
using Proxy.Routing;
using Proxy.Upstream;

namespace Proxy.Core.Tests.Routing;

/// <summary>
/// A route's <c>rewrite: { path }</c>: compiled against the route's match template at load (errors with their
/// position, as <c>proxy validate</c> prints them), captures cut from the forwarded path, the target written upstream.
/// </summary>
public sealed class PathRewriteTests
{
    private const string Listener = "  - { name: public, address: \"127.0.0.1:8080\" }";
    private static readonly DestinationState s_destination = new("http://127.0.0.1:9", "127.0.0.1", 9, 1);

    /// <summary>Route lines start on line 6.</summary>
    private static ConfigLoadResult Load(params string[] routeLines)
        => ConfigLoader.LoadText(string.Join('\n', ["listeners:", Listener, "clusters:", "  backend: { destinations: [\"http://127.0.0.1:9000\"] }", "routes:", .. routeLines]) + "\n", "t.yaml");

    private static string[] Errors(params string[] routeLines) => Load(routeLines).Errors.Select(e => e.ToString()).ToArray();

    // ---- validation: every error at the rewrite's position

    [Fact]
    public void Validate_UnknownPlaceholder_ErrorAtTheRewritePath()
    {
        Assert.Equal(
            ["t.yaml:6:67: route 'api': rewrite path '/v2/{tail}': unknown placeholder '{tail}'; match.path '/api/{**rest}' captures {rest}"],
            Errors("  - { id: api, match: { path: \"/api/{**rest}\" }, rewrite: { path: \"/v2/{tail}\" }, cluster: backend }"));
    }

    [Fact]
    public void Validate_PlaceholderWithoutMatchParameters_ErrorSaysThereIsNothingToCapture()
    {
        Assert.Equal(
            ["t.yaml:9:13: route 'api': rewrite path '/v2/{id}' uses placeholder '{id}' but the route's match path '/api' has no parameters, so there is nothing to substitute; capture it in match.path (like '/api/{**rest}') or write a fixed path",
             "t.yaml:11:51: route 'all': rewrite path '/x/{rest}' uses placeholder '{rest}' but the route's match path is not set, so there is nothing to substitute; capture it in match.path (like '/api/{**rest}') or write a fixed path"],
            Errors(
                "  - id: api",
                "    match: { path: /api }",
                "    rewrite:",
                "      path: /v2/{id}",
                "    cluster: backend",
                "  - { id: all, cluster: backend, rewrite: { path: \"/x/{rest}\" } }"));
    }

    [Theory]
    [InlineData("v2/{rest}", "path 'v2/{rest}' must start with '/'")]
    [InlineData("/v2/{rest", "path '/v2/{rest' has a '{' without its '}' at offset 4")]
    [InlineData("/v2/{re{st}", "path '/v2/{re{st}' has a '{' without its '}' at offset 4")]
    [InlineData("/v2/rest}", "path '/v2/rest}' has a '}' without its '{' at offset 8")]
    [InlineData("/v2/{}", "path '/v2/{}': placeholder '{}' has no name")]
    [InlineData("/v2?x={rest}", "path '/v2?x={rest}' contains '?': the rewrite sets the path only, and the client's query is appended unchanged")]
    [InlineData("/v2 x", "path '/v2 x' contains '\\x20', which cannot appear in a request target; percent-encode it (RFC 3986 section 2.1)")]
    [InlineData("/caf\u00e9", "path '/caf\u00e9' contains '\u00e9', which cannot appear in a request target; percent-encode it (RFC 3986 section 2.1)")]
    [InlineData("/v2/%zz", "path '/v2/%zz' has a '%' not followed by two hex digits; write '%25' for a literal '%'")]
    [InlineData("/v2/../{rest}", "path '/v2/../{rest}' has the dot segment '..', which the upstream would resolve against the path; write the path it stands for")]
    public void Validate_MalformedTemplate_ErrorAtTheRewritePath(string template, string message)
    {
        Assert.Equal(
            [$"t.yaml:6:67: route 'api': rewrite {message}"],
            Errors($"  - {{ id: api, match: {{ path: \"/api/{{**rest}}\" }}, rewrite: {{ path: \"{template}\" }}, cluster: backend }}"));
    }

    [Fact]
    public void Validate_RewriteOnRespondRoute_Refused()
    {
        Assert.Equal(
            ["t.yaml:6:51: route 'r' has 'rewrite' and 'respond'; a route that answers itself forwards nothing, so there is no path to rewrite"],
            Errors("  - { id: r, match: { path: \"/a/{id}\" }, rewrite: { path: \"/b/{id}\" }, respond: { status: 204 } }"));
    }

    [Fact]
    public void Validate_UnknownOrMissingKeyInRewrite_Refused()
    {
        Assert.Equal(
            ["t.yaml:6:53: unknown key 'prefix' in 'rewrite' (expected one of: path)",
             "t.yaml:7:46: 'rewrite' is missing required key 'path'"],
            Errors(
                "  - { id: a, match: { path: \"/a/{id}\" }, rewrite: { prefix: \"/b\", path: \"/b/{id}\" }, cluster: backend }",
                "  - { id: b, match: { path: \"/b\" }, rewrite: { }, cluster: backend }"));
    }

    [Fact]
    public void Validate_GoodTemplates_NoErrorsAndCompiledIntoTheRoute()
    {
        var result = Load(
            "  - { id: api, match: { path: \"/api/{**rest}\" }, rewrite: { path: \"/v2/{rest}\" }, cluster: backend }",
            "  - { id: user, match: { path: \"/users/{ID}/profile\" }, rewrite: { path: \"/p/{id}-{id}.json\" }, cluster: backend }",
            "  - { id: star, match: { path: \"/s/{*rest}\" }, rewrite: { path: \"/t/{**rest}\" }, cluster: backend }",
            "  - { id: fixed, match: { path: \"/f\" }, rewrite: { path: \"/internal/%C3%A9\" }, cluster: backend }",
            "  - { id: plain, match: { path: \"/plain\" }, cluster: backend }");

        Assert.Empty(result.Errors);
        var routes = result.Snapshot!.Routes.InMatchOrder.ToDictionary(r => r.Id);
        Assert.Equal("/v2/{rest}", routes["api"].Rewrite!.Source);
        Assert.Equal("/internal/%C3%A9", routes["fixed"].Rewrite!.Source);
        Assert.Null(routes["plain"].Rewrite);
    }

    // ---- captures and the written target

    [Theory]
    [InlineData("/api/{**rest}", "/v2/{rest}", "/api/a/b", "/v2/a/b")]
    [InlineData("/api/{**rest}", "/v2/{rest}", "/api/a/b/", "/v2/a/b/")]
    [InlineData("/api/{**rest}", "/v2/{rest}", "/api", "/v2/")]
    [InlineData("/api/{**rest}", "/v2/{rest}", "/api/", "/v2/")]
    [InlineData("/api/{**rest}", "/v2/{rest}", "/api//x", "/v2//x")]
    [InlineData("/api/{**rest}", "/v2/{rest}", "/api/a%2Fb%20c?q=%41&r", "/v2/a%2Fb%20c?q=%41&r")]
    [InlineData("/api/{**rest}", "/v2{rest}", "/api/x", "/v2x")]
    [InlineData("/{**rest}", "/root/{rest}", "/", "/root/")]
    [InlineData("/{**rest}", "/root/{rest}", "/a/b?c", "/root/a/b?c")]
    [InlineData("/users/{id}/profile", "/profiles/{id}", "/users/42/profile", "/profiles/42")]
    [InlineData("/users/{id}/profile", "/profiles/{id}", "/users/42/profile?x=1", "/profiles/42?x=1")]
    [InlineData("/{a}/{b}/{**rest}", "/{b}/{a}/{rest}/{a}", "/one/two/three/four", "/two/one/three/four/one")]
    [InlineData("/{a}/{b}/{**rest}", "/{b}/{a}/{rest}", "/one/two", "/two/one/")]
    [InlineData("/x", "/fixed", "/x?keep=1", "/fixed?keep=1")]
    [InlineData("/x", "/fixed", "/x?", "/fixed?")]
    public void WriteTarget_MatchedPath_CapturesSubstitutedQueryKept(string match, string template, string target, string expected)
    {
        var rewrite = PathRewrite.Compile(template, match);
        Assert.True(RouteTemplate.Parse(match).Matches(Encoding.ASCII.GetBytes(target.Split('?')[0])));
        RequestHead head = TestRequests.Create("GET", target, "example.test");

        Assert.Equal(expected.Length, rewrite.TargetLength(head));
        var copy = new byte[expected.Length];
        Assert.Equal(expected.Length, rewrite.CopyTarget(head, copy));
        Assert.Equal(expected, Encoding.ASCII.GetString(copy));
        Assert.StartsWith($"GET {expected} HTTP/1.1\r\n", WriteUpstreamHead(head, rewrite), StringComparison.Ordinal);
        Assert.Equal(target, Encoding.ASCII.GetString(head.Target)); // the head keeps the client's target
    }

    [Theory]
    [InlineData("/a/b/c", 0, false, "a")]
    [InlineData("/a/b/c", 1, false, "b")]
    [InlineData("/a/b/c", 2, false, "c")]
    [InlineData("/a/b/c", 1, true, "b/c")]
    [InlineData("/a/b/c", 3, true, "")]
    [InlineData("/a/b/", 2, true, "")]
    [InlineData("/", 0, true, "")]
    public void Capture_SegmentIndex_CutsThatSegmentOrTheRest(string path, int segment, bool catchAll, string expected)
    {
        Assert.Equal(expected, Encoding.ASCII.GetString(PathRewrite.Capture(Encoding.ASCII.GetBytes(path), segment, catchAll)));
    }

    [Fact]
    public void WriteHead_AsteriskTarget_ForwardedAsItCame()
    {
        var rewrite = PathRewrite.Compile("/v2/{rest}", "/{**rest}");
        RequestHead head = TestRequests.Create("OPTIONS", "*", "example.test");

        Assert.False(PathRewrite.AppliesTo(head));
        Assert.StartsWith("OPTIONS * HTTP/1.1\r\n", WriteUpstreamHead(head, rewrite), StringComparison.Ordinal);
    }

    [Fact]
    public void WriteHead_Rewrite_AllocatesNothing()
    {
        var rewrite = PathRewrite.Compile("/v2/{id}/{rest}", "/api/{id}/{**rest}");
        RequestHead head = TestRequests.Create("GET", "/api/7/a/b?q=1", "example.test");
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
        var buffer = new byte[64];
        void Once()
        {
            UpstreamRequestWriter.WriteHead(pipe.Writer, head, ForwardedModel.Default, IPAddress.Loopback, s_destination, rewrite: rewrite);
            pipe.Writer.FlushAsync().GetAwaiter().GetResult();
            pipe.Reader.TryRead(out ReadResult result);
            pipe.Reader.AdvanceTo(result.Buffer.End);
            rewrite.CopyTarget(head, buffer.AsSpan(0, rewrite.TargetLength(head)));
        }
        for (int i = 0; i < 10; i++)
        {
            Once();
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            Once();
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    private static string WriteUpstreamHead(RequestHead head, PathRewrite rewrite)
    {
        var pipe = new Pipe();
        UpstreamRequestWriter.WriteHead(pipe.Writer, head, ForwardedModel.Default, IPAddress.Loopback, s_destination, rewrite: rewrite);
        pipe.Writer.FlushAsync().AsTask().GetAwaiter().GetResult();
        pipe.Writer.Complete();
        pipe.Reader.TryRead(out var result);
        return Encoding.Latin1.GetString(result.Buffer.ToArray());
    }
}
