using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Proxy.Benchmarks.EndToEnd;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Pipeline;

namespace Proxy.FunctionalTests;

/// <summary>
/// The phases after request headers over real sockets: upstream request (per try), response headers (upstream and local
/// answers), logging (success, no route, upstream failure, a throwing filter).
/// </summary>
public sealed class FilterPhaseTests
{
    private static async Task<TestProxy> StartAsync(string policies, string listenerPolicies, string routePolicies, string destinations, string clusterExtra = "")
        => await TestProxy.StartAsync($$"""
            policies:
            {{policies}}
            listeners:
              - { name: public, address: 127.0.0.1:0, policies: [{{listenerPolicies}}] }
            routes:
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" }, policies: [{{routePolicies}}] }
              - { id: api, match: { path: "/api/{**rest}" }, cluster: backend, policies: [{{routePolicies}}] }
            clusters:
              backend:
                destinations: [{{destinations}}]
                connect_timeout: 2s
            {{clusterExtra}}

            """);

    private static async Task<HttpMessage> GetAsync(RawClient client, string target, params string[] headers)
    {
        await client.SendAsync(Wire.Get(target, "example.test", headers));
        return await client.ReadResponseAsync();
    }

    [Fact]
    public async Task UpstreamRequest_ProbeFilter_UpstreamSeesFieldWithDestination()
    {
        PhaseProbe.EnsureRegistered();
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string policy = PhaseProbe.NewName();
        await using var proxy = await StartAsync($"  {policy}: {{ test_phase_probe: {{}} }}", "", policy, $"\"{upstream.Address}\"");
        await using var client = await proxy.ConnectAsync();

        Assert.Equal(200, (await GetAsync(client, "/api/a")).Status);

        var request = await upstream.WaitForRequestAsync();
        Assert.Equal(["0"], request.HeaderValues("x-phase-try"));
        Assert.Equal(upstream.Address, request.Header("x-phase-destination"));
    }

    [Fact]
    public async Task UpstreamRequest_RetriedAfter503_EachTryGetsItsFieldOnce()
    {
        PhaseProbe.EnsureRegistered();
        int seen = 0;
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Respond((_, _) =>
            Interlocked.Increment(ref seen) == 1 ? Wire.Response(503, "busy") : Wire.Response(200, "ok")));
        string policy = PhaseProbe.NewName();
        await using var proxy = await StartAsync($"  {policy}: {{ test_phase_probe: {{}} }}", "", policy, $"\"{upstream.Address}\"",
            "    retry: { attempts: 1, on: [503], backoff: { base: 1ms, max: 5ms } }");
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/api/a");

        Assert.Equal(200, response.Status);
        await upstream.WaitForRequestAsync(2);
        var requests = upstream.Requests;
        Assert.Equal(["0"], requests[0].HeaderValues("x-phase-try"));
        Assert.Equal(["1"], requests[1].HeaderValues("x-phase-try"));
    }

    [Fact]
    public async Task HeaderPolicies_UpstreamAnswer_RequestAndResponseFieldsRewritten()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Respond((_, _) =>
            Wire.Response(200, "ok", ("server", "origin/1.0"), ("x-powered-by", "php"), ("x-version", "old"), ("x-keep", "1"))));
        await using var proxy = await StartAsync("""
              up: { request_headers: { add: { x-gateway: edge }, remove: [x-debug] } }
              down: { response_headers: { remove: [server, X-Powered-By], set: { x-version: new }, add: { x-frame-options: DENY } } }
            """, "", "up, down", $"\"{upstream.Address}\"");
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/api/a", "X-Debug: 1", "X-Other: 2");

        Assert.Equal(200, response.Status);
        Assert.Null(response.Header("server"));
        Assert.Null(response.Header("x-powered-by"));
        Assert.Equal(["new"], response.HeaderValues("x-version"));
        Assert.Equal("DENY", response.Header("x-frame-options"));
        Assert.Equal("1", response.Header("x-keep"));
        Assert.Equal("ok", response.BodyText);
        var request = await upstream.WaitForRequestAsync();
        Assert.Null(request.Header("x-debug"));
        Assert.Equal("2", request.Header("x-other"));
        Assert.Equal("edge", request.Header("x-gateway"));
        // The connection goes on: the next exchange is clean.
        Assert.Equal(200, (await GetAsync(client, "/api/b")).Status);
    }

    [Fact]
    public async Task ResponseHeaders_LocalAnswers_GetAddedFields()
    {
        await using var proxy = await StartAsync("""
              down: { response_headers: { add: { x-frame-options: DENY } } }
              waf: { deny: { methods: [GET] } }
            """, "", "down, waf", "\"http://127.0.0.1:1\"");
        await using var client = await proxy.ConnectAsync();

        var direct = await GetAsync(client, "/hello");
        var failed = await GetAsync(client, "/api/a");
        await client.SendAsync("DELETE /hello HTTP/1.1\r\nHost: example.test\r\n\r\n");
        var denied = await client.ReadResponseAsync();

        Assert.Equal((200, "DENY"), (direct.Status, direct.Header("x-frame-options")));
        Assert.Equal("hello\n", direct.BodyText);
        Assert.Equal((502, "DENY"), (failed.Status, failed.Header("x-frame-options")));
        Assert.Equal((403, "DENY"), (denied.Status, denied.Header("x-frame-options")));
        // The filter's body survives fields added after Respond stored it.
        Assert.Contains("\"status\":403", denied.BodyText);
    }

    [Fact]
    public async Task UpstreamRequest_FilterThrows_500FilterFailedAndNothingSent()
    {
        PhaseProbe.EnsureRegistered();
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync("  bad: { test_phase_upstream_throw: {} }", "", "bad", $"\"{upstream.Address}\"");
        await using var client = await proxy.ConnectAsync();

        var response = await GetAsync(client, "/api/a");

        Assert.Equal(500, response.Status);
        Assert.Contains("filter_failed", response.BodyText);
        Assert.Empty(upstream.Requests);
        Assert.Equal(200, (await GetAsync(client, "/hello")).Status);
    }

    [Fact]
    public async Task ResponseComplete_SuccessNoRouteAndUpstreamFailure_SeeStatusBytesAndDetails()
    {
        PhaseProbe.EnsureRegistered();
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Respond((_, _) => Wire.Response(200, "0123456789")));
        string policy = PhaseProbe.NewName();
        string port = upstream.Port.ToString(CultureInfo.InvariantCulture);
        await using var proxy = await TestProxy.StartAsync($$"""
            policies:
              {{policy}}: { test_phase_probe: {} }
            listeners:
              - { name: public, address: 127.0.0.1:0, policies: [{{policy}}] }
            routes:
              - { id: api, match: { path: "/api/{**rest}" }, cluster: backend }
              - { id: down, match: { path: "/down/{**rest}" }, cluster: dead }
            clusters:
              backend: { destinations: ["http://127.0.0.1:{{port}}"] }
              dead: { destinations: ["http://127.0.0.1:1"], connect_timeout: 2s }

            """);
        await using var client = await proxy.ConnectAsync();

        var ok = await GetAsync(client, "/api/a");
        var missing = await GetAsync(client, "/nowhere");
        var failed = await GetAsync(client, "/down/x");

        Assert.Equal((200, 404, 502), (ok.Status, missing.Status, failed.Status));
        var records = await PhaseProbe.WaitForRecordsAsync(policy, 3);
        var success = records[0];
        Assert.Equal((200, RequestOutcome.Relayed, "", "api"), (success.Status, success.Outcome, success.Details, success.Route));
        Assert.Equal(10, success.ResponseBytes);
        Assert.True(success.RequestBytes > 20, $"request bytes {success.RequestBytes}");
        Assert.True(success.Duration > TimeSpan.Zero && success.UpstreamDuration > TimeSpan.Zero);
        var noRoute = records[1];
        Assert.Equal((404, RequestOutcome.LocalReply, "no_route", ""), (noRoute.Status, noRoute.Outcome, noRoute.Details, noRoute.Route));
        Assert.Equal(missing.Body.Length, noRoute.ResponseBytes);
        var failure = records[2];
        Assert.Equal((502, RequestOutcome.LocalReply, "upstream_connect_failed", "down"), (failure.Status, failure.Outcome, failure.Details, failure.Route));
        Assert.Equal(failed.Body.Length, failure.ResponseBytes);
        Assert.Equal(TimeSpan.Zero, failure.UpstreamDuration);
        // The response-headers phase ran on all three: the upstream's answer and both local answers.
        Assert.Equal(("200", "404", "502"), (ok.Header("x-phase-status"), missing.Header("x-phase-status"), failed.Header("x-phase-status")));
    }

    [Fact]
    public async Task ResponseComplete_FilterThrows_ConnectionKeepsServing()
    {
        PhaseProbe.EnsureRegistered();
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync("  boom: { test_phase_throw: {} }", "", "boom", $"\"{upstream.Address}\"");
        await using var client = await proxy.ConnectAsync();
        long before = FilterChain.PhaseFailures;

        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(200, (await GetAsync(client, "/api/a")).Status);
        }

        Assert.True(FilterChain.PhaseFailures >= before + 2, "the first two requests' logging phases ran and were counted");
        Assert.Equal(3, upstream.Requests.Length);
    }
}

/// <summary>
/// The log lines of a filter that throws, in every phase: <c>filter_failed</c> names the phase, and the <c>local_reply</c>
/// that answers a failed request names the route, as the other local replies of a routed request do.
/// </summary>
[Collection(ProcessLogCollection.Name)]
public sealed class FilterFailedLogTests
{
    private static async Task<(JsonElement Failed, JsonElement Reply)> FailAsync(string kind, string method = "GET")
    {
        PhaseProbe.EnsureRegistered();
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string route = $"r{Guid.NewGuid():N}";
        string target = $"/api/{route}";
        await using var proxy = await TestProxy.StartAsync($$"""
            policies:
              bad: { {{kind}}: {} }
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: {{route}}, match: { path: "/api/{**rest}" }, cluster: backend, policies: [bad] }
            clusters:
              backend: { destinations: ["{{upstream.Address}}"], connect_timeout: 2s }

            """);
        await using var capture = LogCapture.Start();
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync($"{method} {target} HTTP/1.1\r\nHost: example.test\r\ncontent-length: 7\r\n\r\npayload");
        var response = await client.ReadResponseAsync();

        Assert.Equal(500, response.Status);
        Assert.Empty(upstream.Requests);
        JsonElement failed = await capture.WaitForEventAsync("filter_failed", l => RouteOf(l) == route);
        // The answer's line: found by its route, or by its target when it lacks the route.
        JsonElement reply = await capture.WaitForEventAsync("local_reply", l => RouteOf(l) == route
            || (l.TryGetProperty("target", out JsonElement t) && t.GetString() == target));
        Assert.Equal("filter_failed", reply.GetProperty("details").GetString());
        // The same fields as every other local reply (docs/forwarding.md, "Local answers").
        Assert.Equal((method, target), (reply.GetProperty("method").GetString(), reply.GetProperty("target").GetString()));
        return (failed, reply);
    }

    private static string? RouteOf(JsonElement line)
        => line.TryGetProperty("route", out JsonElement route) && route.ValueKind == JsonValueKind.String ? route.GetString() : null;

    private static string? PhaseOf(JsonElement line)
        => line.TryGetProperty("phase", out JsonElement phase) ? phase.GetString() : null;

    [Fact]
    public async Task RequestHeaders_FilterThrows_FilterFailedLineNamesThePhase()
    {
        var (failed, reply) = await FailAsync("test_phase_headers_throw");

        Assert.Equal("request_headers", PhaseOf(failed));
        Assert.Equal(RouteOf(failed), RouteOf(reply));
    }

    [Fact]
    public async Task RequestHeaders_PausedFilterThrowsOnResume_FilterFailedLineNamesThePhase()
    {
        var (failed, reply) = await FailAsync("test_phase_paused_throw");

        Assert.Equal("request_headers", PhaseOf(failed));
        Assert.Equal(RouteOf(failed), RouteOf(reply));
    }

    [Fact]
    public async Task RequestBody_FilterThrows_FilterFailedLineNamesThePhase()
    {
        var (failed, reply) = await FailAsync("test_phase_body_throw", "POST");

        Assert.Equal("request_body", PhaseOf(failed));
        Assert.Equal(RouteOf(failed), RouteOf(reply));
    }

    [Fact]
    public async Task UpstreamRequest_FilterThrows_LocalReplyLineNamesTheRoute()
    {
        var (failed, reply) = await FailAsync("test_phase_upstream_throw");

        Assert.Equal("upstream_request", PhaseOf(failed));
        Assert.NotNull(RouteOf(reply));
        Assert.Equal(RouteOf(failed), RouteOf(reply));
    }
}

/// <summary>Test filters for every phase, registered once per process (registration cannot be undone).</summary>
internal static class PhaseProbe
{
    public sealed record Record(string Route, int Status, RequestOutcome Outcome, string Details, long RequestBytes, long ResponseBytes,
        TimeSpan Duration, TimeSpan UpstreamDuration);

    private static readonly ConcurrentDictionary<string, ConcurrentQueue<Record>> s_records = new();
    private static int s_names;

    private static readonly Lazy<bool> s_registered = new(() =>
    {
        PolicyKinds.Register("test_phase_probe", d => new Probe(s_records.GetOrAdd(d.Name, _ => new())));
        PolicyKinds.Register("test_phase_throw", _ => new Throwing());
        PolicyKinds.Register("test_phase_counter", _ => new Counter());
        PolicyKinds.Register("test_phase_upstream_throw", _ => new UpstreamThrowing());
        PolicyKinds.Register("test_phase_headers_throw", _ => new HeadersThrowing());
        PolicyKinds.Register("test_phase_paused_throw", _ => new PausedThrowing());
        PolicyKinds.Register("test_phase_body_throw", _ => new BodyThrowing());
        return true;
    });

    public static void EnsureRegistered() => _ = s_registered.Value;

    public static string NewName() => $"probe{Interlocked.Increment(ref s_names)}";

    public static async Task<Record[]> WaitForRecordsAsync(string policy, int count)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var records = s_records.GetOrAdd(policy, _ => new()).ToArray();
            if (records.Length >= count || clock.Elapsed > TimeSpan.FromSeconds(10))
            {
                Assert.True(records.Length >= count, $"{records.Length} logging records, expected {count}");
                return records;
            }
            await Task.Delay(10);
        }
    }

    private sealed class Probe(ConcurrentQueue<Record> records) : IUpstreamRequestFilter, IResponseHeadersFilter, IResponseCompleteFilter
    {
        public void OnUpstreamRequest(RequestContext context)
        {
            context.AddUpstreamHeader("x-phase-try"u8, Encoding.ASCII.GetBytes(context.UpstreamTry.ToString(CultureInfo.InvariantCulture)));
            context.AddUpstreamHeader("x-phase-destination"u8, Encoding.ASCII.GetBytes(context.UpstreamDestination));
        }

        public void OnResponseHeaders(RequestContext context)
            => context.AddResponseHeader("x-phase-status"u8, Encoding.ASCII.GetBytes(context.ResponseStatus.ToString(CultureInfo.InvariantCulture)));

        public void OnResponseComplete(RequestContext context)
            => records.Enqueue(new Record(context.RouteId, context.ResponseStatus, context.Outcome, context.ResponseDetails, context.RequestBytes,
                context.ResponseBytes, context.Duration, context.UpstreamDuration));
    }

    private sealed class UpstreamThrowing : IUpstreamRequestFilter
    {
        public void OnUpstreamRequest(RequestContext context) => throw new InvalidOperationException("upstream filter bug");
    }

    private sealed class HeadersThrowing : IRequestHeadersFilter
    {
        public FilterStatus OnRequestHeaders(RequestContext context) => throw new InvalidOperationException("headers filter bug");
    }

    /// <summary>Pauses, then throws on resume: the asynchronous end of the request-headers phase.</summary>
    private sealed class PausedThrowing : IAsyncRequestHeadersFilter
    {
        public FilterStatus OnRequestHeaders(RequestContext context) => FilterStatus.Pause;

        public async ValueTask<FilterStatus> ResumeRequestHeadersAsync(RequestContext context)
        {
            await Task.Yield();
            throw new InvalidOperationException("paused filter bug");
        }
    }

    private sealed class BodyThrowing : IRequestBodyFilter
    {
        public long MaxBodyBytes => 1024;

        public FilterStatus OnRequestBody(RequestContext context, System.Buffers.ReadOnlySequence<byte> body)
            => throw new InvalidOperationException("body filter bug");
    }

    private sealed class Throwing : IResponseCompleteFilter
    {
        public void OnResponseComplete(RequestContext context) => throw new InvalidOperationException("logging filter bug");
    }

    /// <summary>One of each phase and nothing allocated: constant fields, a counter.</summary>
    public sealed class Counter : IUpstreamRequestFilter, IResponseHeadersFilter, IResponseCompleteFilter
    {
        public static long Completed;

        public void OnUpstreamRequest(RequestContext context) => context.AddUpstreamHeader("x-phase"u8, "upstream"u8);

        public void OnResponseHeaders(RequestContext context)
        {
            context.RemoveResponseHeader("x-internal"u8);
            context.AddResponseHeader("x-phase"u8, "response"u8);
        }

        public void OnResponseComplete(RequestContext context)
        {
            if (context.ResponseStatus == 200 && context.ResponseBytes > 0)
            {
                Interlocked.Increment(ref Completed);
            }
        }
    }
}

/// <summary>A request through a route with a filter in every phase allocates nothing once warm.</summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class FilterPhaseAllocationTests
{
    [Fact]
    public async Task ProxiedRequests_FilterInEveryPhase_AllocateUnder100BytesEach()
    {
        PhaseProbe.EnsureRegistered();
        using var upstream = new FixedResponseUpstream(SteadyStateAllocationTests.FixedResponse);
        string port = upstream.Port.ToString(CultureInfo.InvariantCulture);
        await using var proxy = await TestProxy.StartAsync($$"""
            policies:
              phases: { test_phase_counter: {} }
              up: { request_headers: { add: { x-gateway: edge }, remove: [user-agent] } }
              down: { response_headers: { remove: [content-type], add: { x-frame-options: DENY } } }
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: api, match: { path: "/api/{**rest}" }, cluster: backend, policies: [phases, up, down] }
            clusters:
              backend: { destinations: ["http://127.0.0.1:{{port}}"] }

            """);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.ReceiveTimeout = 5000;
        client.Connect(proxy.Public);
        byte[] request = Encoding.ASCII.GetBytes("GET /api/items?page=2 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n");
        byte[] receive = new byte[16 * 1024];
        int length = SteadyStateAllocationTests.RoundTrip(client, request, receive, expected: 0);
        string head = Encoding.ASCII.GetString(receive, 0, length);
        Assert.Contains("x-phase: response\r\n", head);
        Assert.Contains("x-frame-options: DENY\r\n", head);
        Assert.DoesNotContain("content-type", head, StringComparison.OrdinalIgnoreCase);

        for (int i = 0; i < 3000; i++)
        {
            SteadyStateAllocationTests.RoundTrip(client, request, receive, length);
        }
        const int Requests = 5000;
        long completedBefore = Interlocked.Read(ref PhaseProbe.Counter.Completed);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        for (int i = 0; i < Requests; i++)
        {
            SteadyStateAllocationTests.RoundTrip(client, request, receive, length);
        }
        long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / Requests;

        Assert.True(perRequest < 100, $"{perRequest} bytes allocated per proxied request with a filter in every phase");
        // The logging phase ran for (nearly) every measured request: the last one may still be finishing.
        Assert.True(Interlocked.Read(ref PhaseProbe.Counter.Completed) - completedBefore >= Requests - 1);
    }
}
