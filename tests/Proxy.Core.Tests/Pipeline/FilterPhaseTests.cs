using System.Text;
using Proxy.Configuration;
using Proxy.Http;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The phases after request headers: the compiled per-phase arrays, the context's edit APIs, the header rewrite kinds' config.</summary>
public class FilterPhaseTests
{
    private static string[] Errors(params string[] lines)
        => ConfigLoader.LoadText(string.Join('\n', lines) + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    private static string[] PolicyErrors(params string[] policyLines) => Errors(
    [
        "policies:", .. policyLines,
        "listeners:",
        "  - { name: public, address: \"127.0.0.1:8080\" }",
        "routes:",
        "  - { id: r, match: { path: /r }, respond: { status: 200 } }",
    ]);

    private sealed class RequestOnly : IRequestHeadersFilter
    {
        public FilterStatus OnRequestHeaders(RequestContext context) => FilterStatus.Continue;
    }

    private sealed class AllPhases : IRequestHeadersFilter, IUpstreamRequestFilter, IResponseHeadersFilter, IResponseCompleteFilter
    {
        public int Completed;

        public FilterStatus OnRequestHeaders(RequestContext context) => FilterStatus.Continue;

        public void OnUpstreamRequest(RequestContext context) => context.AddUpstreamHeader("x-try"u8, context.UpstreamTry == 0 ? "0"u8 : "1"u8);

        public void OnResponseHeaders(RequestContext context) => context.AddResponseHeader("x-seen"u8, "1"u8);

        public void OnResponseComplete(RequestContext context) => Completed++;
    }

    private sealed class LogOnly : IResponseCompleteFilter
    {
        public void OnResponseComplete(RequestContext context) => throw new InvalidOperationException("boom");
    }

    [Fact]
    public void Chain_FiltersOfSeveralPhases_AppearInEachPhaseInChainOrder()
    {
        var request = new RequestOnly();
        var all = new AllPhases();
        var log = new LogOnly();

        var chain = new FilterChain([request, all, log], ["a", "b", "c"]);

        Assert.Equal<IProxyFilter>([request, all], chain.RequestHeaders);
        Assert.Equal<IProxyFilter>([all], chain.UpstreamRequest);
        Assert.Equal<IProxyFilter>([all], chain.ResponseHeaders);
        Assert.Equal<IProxyFilter>([all, log], chain.ResponseComplete);
        Assert.False(chain.IsEmpty);
    }

    [Fact]
    public void Chain_RequestPhaseOnly_LaterPhasesEmpty()
    {
        var chain = new FilterChain([new RequestOnly()], ["a"]);

        Assert.Empty(chain.UpstreamRequest);
        Assert.Empty(chain.ResponseHeaders);
        Assert.Empty(chain.ResponseComplete);
    }

    [Fact]
    public void Chain_ResponseCompleteFilterThrows_CountedAndNextFilterRuns()
    {
        var (_, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        var all = new AllPhases();
        var chain = new FilterChain([new LogOnly(), all], ["a", "b"]);
        long before = FilterChain.PhaseFailures;

        chain.RunResponseComplete(context);

        Assert.Equal(1, all.Completed);
        Assert.True(FilterChain.PhaseFailures > before);
    }

    [Fact]
    public void UpstreamTry_Retry_DropsPreviousTrysEditsButKeepsRequestPhaseEdits()
    {
        var (_, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        context.AddUpstreamHeader("x-identity"u8, "alice"u8);
        context.MarkUpstreamEdits();
        var chain = new FilterChain([new AllPhases()], ["a"]);

        context.BeginUpstreamTry("http://a", 0);
        chain.RunUpstreamRequest(context);
        context.BeginUpstreamTry("http://b", 1);
        chain.RunUpstreamRequest(context);

        Assert.Equal("x-identity: alice\r\nx-try: 1\r\n", Encoding.ASCII.GetString(context.UpstreamAddedFields));
        Assert.Equal("http://b", context.UpstreamDestination);
        Assert.Equal(1, context.UpstreamTry);
    }

    private static ResponseHead Response(string raw)
    {
        var head = new ResponseHead();
        var bytes = new System.Buffers.ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(raw));
        Assert.Equal(Proxy.Http1.HeadStatus.Complete, Proxy.Http1.Http1ResponseReader.TryRead(bytes, head, 64 * 1024, out _, out _));
        return head;
    }

    [Fact]
    public void RemoveResponseHeader_UpstreamFields_MarkedNotForwardedAndHiddenFromLookup()
    {
        var (_, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        var response = Response("HTTP/1.1 200 OK\r\nServer: x\r\nX-A: 1\r\nserver: y\r\nContent-Length: 0\r\n\r\n");
        context.BeginResponse(response, 200);

        int removed = context.RemoveResponseHeader("SERVER"u8);
        context.SetResponseHeader("x-a"u8, "2"u8);

        Assert.Equal(2, removed);
        Assert.True(response.Fields[0].HopByHop && response.Fields[2].HopByHop);
        Assert.False(context.TryGetResponseHeader("server"u8, out _));
        Assert.Equal("x-a: 2\r\n", Encoding.ASCII.GetString(context.ReplyHeaders));
        Assert.Equal(200, context.ResponseStatus);
        Assert.False(context.IsLocalReply);
    }

    [Theory]
    [InlineData("content-length")]
    [InlineData("Transfer-Encoding")]
    [InlineData("connection")]
    public void ResponseFieldEdits_FramingField_Throws(string name)
    {
        var (_, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        context.BeginResponse(null, 404);

        Assert.Throws<ArgumentException>(() => context.RemoveResponseHeader(Encoding.ASCII.GetBytes(name)));
        Assert.Throws<ArgumentException>(() => context.AddResponseHeader(Encoding.ASCII.GetBytes(name), "1"u8));
    }

    [Fact]
    public void AddResponseHeader_AfterRespond_BodyKeptBehindTheFields()
    {
        var (_, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        context.AddResponseHeader("x-before"u8, "1"u8);
        context.Respond(403, "denied", "text/plain"u8, "forbidden body"u8);

        context.BeginResponse(null, 403);
        context.AddResponseHeader("x-after"u8, "2"u8);

        Assert.Equal("x-before: 1\r\nx-after: 2\r\n", Encoding.ASCII.GetString(context.ReplyHeaders));
        Assert.Equal("forbidden body", Encoding.ASCII.GetString(context.ReplyBody));
        Assert.Equal("x-after: 2\r\n", Encoding.ASCII.GetString(context.ResponsePhaseFields));
    }

    [Fact]
    public void RemoveResponseHeader_OutsideResponsePhase_Throws()
    {
        var (_, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\n\r\n");

        Assert.Throws<InvalidOperationException>(() => context.RemoveResponseHeader("server"u8));
    }

    [Fact]
    public void Compile_HeaderRewritePolicies_BuildPhaseFiltersWithEncodedEdits()
    {
        var result = ConfigLoader.LoadText("""
            policies:
              up: { request_headers: { add: { x-gateway: edge }, set: { x-env: prod }, remove: [x-debug] } }
              down: { response_headers: { remove: [Server], add: { x-frame-options: DENY } } }
            listeners:
              - { name: public, address: "127.0.0.1:8080" }
            routes:
              - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [up, down] }

            """, "t.yaml");
        Assert.Empty(result.Errors);
        var chain = result.Snapshot!.Routes.InMatchOrder.Single().Filters(0);

        Assert.Empty(chain.RequestHeaders);
        var up = Assert.IsType<UpstreamHeaderRewriteFilter>(Assert.Single(chain.UpstreamRequest));
        var down = Assert.IsType<ResponseHeaderRewriteFilter>(Assert.Single(chain.ResponseHeaders));
        Assert.Equal(["x-debug", "x-env"], up.Edits.Remove.Select(Encoding.ASCII.GetString));
        Assert.Equal(["x-gateway", "x-env"], up.Edits.AddNames.Select(Encoding.ASCII.GetString));
        Assert.Equal(["edge", "prod"], up.Edits.AddValues.Select(Encoding.ASCII.GetString));
        Assert.Equal(["server"], down.Edits.Remove.Select(Encoding.ASCII.GetString));
    }

    [Fact]
    public void Compile_ListenerWithLoggingPolicy_HasUnmatchedChain()
    {
        PhaseKinds.EnsureRegistered();
        var result = ConfigLoader.LoadText("""
            policies:
              log: { test_phase_log: {} }
              down: { response_headers: { add: { x-a: "1" } } }
              limit: { rate_limit: { rate: 10/s } }
            listeners:
              - { name: public, address: "127.0.0.1:8080", policies: [limit, log, down] }
              - { name: other, address: "127.0.0.1:8081", policies: [limit] }
            routes:
              - { id: r, match: { path: /r }, respond: { status: 200 } }

            """, "t.yaml");
        Assert.Empty(result.Errors);

        Assert.Equal(["log", "down"], result.Snapshot!.Listeners[0].Unmatched!.PolicyNames);
        Assert.Null(result.Snapshot.Listeners[1].Unmatched);
    }

    [Theory]
    [InlineData("response_headers: { add: { content-length: \"1\" } }", "t.yaml:3:32: response_headers cannot edit 'content-length'")]
    [InlineData("request_headers: { remove: [host] }", "t.yaml:3:33: request_headers cannot edit 'host'")]
    [InlineData("response_headers: { remove: [\"bad name\"] }", "t.yaml:3:34: invalid header name 'bad name'")]
    [InlineData("response_headers: { add: [x-a] }", "t.yaml:3:25: expected a map of header names to values for 'add'")]
    [InlineData("response_headers: { remove: x-a }", "t.yaml:3:33: expected a list of header names for 'remove'")]
    [InlineData("response_headers: { add: { x-a: \"a\\nb\" } }", "t.yaml:3:37: invalid value for header 'x-a'")]
    [InlineData("response_headers: { ad: { x-a: b } }", "t.yaml:3:25: unknown key 'ad' in response_headers; did you mean 'add'?")]
    [InlineData("response_headers: {}", "t.yaml:3:5: response_headers policy 'p' has nothing to do")]
    public void Validate_BadHeaderRewrite_ReportsPosition(string policy, string message)
    {
        var errors = PolicyErrors("  p:", "    " + policy);

        Assert.Single(errors);
        Assert.StartsWith(message, errors[0]);
    }
}

/// <summary>Test policy kinds for the phases, registered once per process (registration cannot be undone).</summary>
internal static class PhaseKinds
{
    private static readonly Lazy<bool> s_registered = new(() =>
    {
        PolicyKinds.Register("test_phase_log", _ => new NoopLog());
        return true;
    });

    public static void EnsureRegistered() => _ = s_registered.Value;

    private sealed class NoopLog : IResponseCompleteFilter
    {
        public void OnResponseComplete(RequestContext context)
        {
        }
    }
}
