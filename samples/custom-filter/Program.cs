// Custom policy kinds: a filter that rejects requests without a given header (request-headers phase), and one that
// takes part in two later phases (response headers: adds the time the upstream took; logging: reports slow
// requests), and a request-body filter that refuses bodies containing a word. Registered before the config loads,
// then used from YAML like the built-in kinds.
//   dotnet run --project samples/custom-filter
using System.Buffers;
using System.Buffers.Text;
using System.Text;
using Proxy.Hosting;
using Proxy.Pipeline;

// The factory runs when the config is validated and compiled: check settings here and throw ArgumentException with a
// message for the user; it is reported as a config error at the policy's line.
PolicyKinds.Register("require_header", definition =>
{
    if (!definition.Settings.TryGetValue("name", out var name) || name.Length == 0)
    {
        throw new ArgumentException("'name' is required: the header every request must carry");
    }
    return new RequireHeaderFilter(definition.Name, name);
});

PolicyKinds.Register("upstream_timing", definition =>
{
    int slowMs = 100;
    if (definition.Settings.TryGetValue("slow_ms", out var text) && (!int.TryParse(text, out slowMs) || slowMs < 0))
    {
        throw new ArgumentException($"'slow_ms' must be a whole number of milliseconds, got '{text}'");
    }
    return new UpstreamTimingFilter(TimeSpan.FromMilliseconds(slowMs));
});

PolicyKinds.Register("forbid_word", definition =>
{
    if (!definition.Settings.TryGetValue("word", out var word) || word.Length == 0)
    {
        throw new ArgumentException("'word' is required: the text a request body must not contain");
    }
    return new ForbidWordFilter(word);
});

// An origin to forward to: another embedded server answering from its own route, so the sample needs no network.
await using var origin = ProxyServer.FromYaml("""
    listeners:
      - { name: origin, address: 127.0.0.1:0 }
    routes:
      - { id: origin, match: { path: "/{**rest}" }, respond: { status: 200, body: "from the origin\n" } }
    """, "origin.yaml");
await origin.StartAsync();

string yaml = $$"""
    policies:
      tenant-required:
        require_header: { name: x-tenant }
      timing:
        upstream_timing: { slow_ms: 0 }
      no-secrets:
        forbid_word: { word: secret }
    listeners:
      - { name: public, address: 127.0.0.1:0 }
    routes:
      - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello, tenant\n" }, policies: [tenant-required] }
      - { id: api, match: { path: "/api/{**rest}" }, cluster: origin, policies: [timing] }
      - { id: notes, match: { path: /notes }, cluster: origin, policies: [no-secrets] }
    clusters:
      origin: { destinations: ["http://{{origin.GetEndPoint("origin")}}"] }
    """;

await using var server = ProxyServer.FromYaml(yaml, "custom-filter.yaml");
await server.StartAsync();
var url = $"http://{server.GetEndPoint("public")}/hello";

using var client = new HttpClient();
using (var rejected = await client.GetAsync(url))
{
    Console.Write($"without x-tenant: {(int)rejected.StatusCode} {await rejected.Content.ReadAsStringAsync()}");
}
using (var request = new HttpRequestMessage(HttpMethod.Get, url) { Headers = { { "x-tenant", "acme" } } })
using (var accepted = await client.SendAsync(request))
{
    Console.Write($"with x-tenant:    {(int)accepted.StatusCode} {await accepted.Content.ReadAsStringAsync()}");
}
using (var timed = await client.GetAsync($"http://{server.GetEndPoint("public")}/api/items"))
{
    Console.Write($"through /api:     {(int)timed.StatusCode} x-upstream-ms: {string.Join(",", timed.Headers.GetValues("x-upstream-ms"))}, "
        + await timed.Content.ReadAsStringAsync());
}
foreach (string note in new[] { "a public note", "my secret note" })
{
    using var posted = await client.PostAsync($"http://{server.GetEndPoint("public")}/notes", new StringContent(note));
    Console.Write($"POST \"{note}\": {(int)posted.StatusCode} {await posted.Content.ReadAsStringAsync()}");
}
await server.StopAsync(TimeSpan.FromSeconds(5));
await origin.StopAsync(TimeSpan.FromSeconds(5));

/// <summary>
/// Built once per policy and shared by every connection: immutable, and it allocates nothing per request (the header
/// name is converted to bytes once, the answer body is a constant).
/// </summary>
internal sealed class RequireHeaderFilter(string policyName, string headerName) : IRequestHeadersFilter
{
    private readonly byte[] _name = Encoding.ASCII.GetBytes(headerName);
    private readonly byte[] _body = Encoding.UTF8.GetBytes($"missing header '{headerName}' (policy {policyName})\n");

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        if (context.TryGetHeader(_name, out var value) && !value.IsEmpty)
        {
            return FilterStatus.Continue;
        }
        return context.Respond(400, "missing_required_header", "text/plain; charset=utf-8"u8, _body);
    }
}

/// <summary>
/// Two phases in one filter: the response-headers phase adds <c>x-upstream-ms</c> (how long the upstream took to send
/// its response head, formatted into a stack buffer: no allocation), and the logging phase reports requests slower than
/// the threshold (the slow path may allocate: it is rare by definition). It must not throw there: a logging filter
/// that throws is caught and counted, but its report is lost.
/// </summary>
internal sealed class UpstreamTimingFilter(TimeSpan slow) : IResponseHeadersFilter, IResponseCompleteFilter
{
    public void OnResponseHeaders(RequestContext context)
    {
        if (context.IsLocalReply)
        {
            return;
        }
        Span<byte> value = stackalloc byte[32];
        Utf8Formatter.TryFormat(context.UpstreamDuration.TotalMilliseconds, value, out int written, new System.Buffers.StandardFormat('F', 1));
        context.AddResponseHeader("x-upstream-ms"u8, value[..written]);
    }

    public void OnResponseComplete(RequestContext context)
    {
        if (context.Duration >= slow)
        {
            Console.WriteLine($"slow request: route {context.RouteId}, status {context.ResponseStatus} ({context.Outcome}), "
                + $"{context.Duration.TotalMilliseconds:F1} ms total, {context.UpstreamDuration.TotalMilliseconds:F1} ms upstream, "
                + $"{context.RequestBytes} bytes in, {context.ResponseBytes} bytes of body out");
        }
    }
}

/// <summary>
/// A request-body phase filter: the route buffers each body (up to <see cref="MaxBodyBytes"/>; larger bodies get 413
/// before this runs) and hands it over whole. The body is a sequence over pooled blocks, valid only during the call; the
/// search runs over it in place, so a word split across two blocks (or two chunks on the wire) is still found.
/// </summary>
internal sealed class ForbidWordFilter(string word) : IRequestBodyFilter
{
    private readonly byte[] _word = Encoding.UTF8.GetBytes(word);

    public long MaxBodyBytes => 64 * 1024;

    public FilterStatus OnRequestBody(RequestContext context, ReadOnlySequence<byte> body)
    {
        var reader = new SequenceReader<byte>(body);
        while (reader.TryAdvanceTo(_word[0], advancePastDelimiter: false))
        {
            if (reader.IsNext(_word, advancePast: false))
            {
                return context.Respond(422, "forbidden_word", "text/plain"u8, "the body contains a forbidden word\n"u8);
            }
            reader.Advance(1);
        }
        return FilterStatus.Continue;
    }
}
