using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// Seeded random mutations of valid HTTP/1.1 requests (single, pipelined, with a length, chunked, HTTP/1.0) sent to a
/// live proxy, each on its own connection, which the client then half-closes. Whatever the bytes, the proxy answers
/// with well-formed responses and closes within seconds (never a hang), the upstream parses everything it receives
/// with the tests' strict reader, every request the upstream saw was answered to the client (nothing smuggled in
/// behind an answered request), every connection is released, and the proxy keeps serving. The parser's own rules
/// are unit-tested one by one (Http1RequestReaderTests, its property tests); this drives the whole connection.
/// </summary>
public sealed class Http1WireFuzzTests
{
    // A longer campaign with other seeds: PROXY_FUZZ_CASES=5000 PROXY_FUZZ_SEED=7 (the suite runs the fixed 300).
    private static readonly int Cases = FromEnvironment("PROXY_FUZZ_CASES", 300);
    private static readonly int Seed = FromEnvironment("PROXY_FUZZ_SEED", 20261128);

    private static readonly string[] Requests =
    [
        "GET /fuzz HTTP/1.1\r\nHost: a\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
        "POST /fuzz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "POST /fuzz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /fuzz HTTP/1.1\r\nHost: a\r\n\r\nPOST /fuzz HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /fuzz HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
    ];

    [Fact]
    public async Task MutatedRequests_AnsweredWellFormedOrRefused_NothingSmuggled()
    {
        // Each case half-closes after its bytes and reads the answers: ignore_client_abort keeps the proxy from ending an
        // exchange whose upstream wait a heartbeat happens to look at (the client's FIN would read as a client gone).
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(),
            config => config with
            {
                HeaderTimeout = "2s",
                RequestTimeout = "3s",
                Routes = config.Routes.Replace("cluster: backend }", "cluster: backend, ignore_client_abort: true }", StringComparison.Ordinal),
            });
        var proxy = scenario.Proxy;
        var statuses = new SortedDictionary<int, int>();
        for (int i = 0; i < Cases; i++)
        {
            var random = new Random(Seed + i);
            byte[] request = WireMutator.Mutate(random, Requests[random.Next(Requests.Length)]);
            int upstreamBefore = scenario.Upstream.Requests.Length;

            await using var client = await proxy.ConnectAsync();
            try
            {
                await client.SendAsync(request);
                client.ShutdownSend();
            }
            catch (IOException)
            {
                // The proxy refused early and closed while we were still writing: what it sent is read below.
            }
            var result = await client.ReadToCloseAsync(TimeSpan.FromSeconds(10));
            string sent = WireMutator.Show(request);
            Assert.True(result.Closed, $"case {i} (seed {Seed + i}): connection still open 10 s after the client's FIN; sent: {sent}");

            var responses = await ParseResponsesAsync(result.Bytes, i, sent);
            foreach (var response in responses)
            {
                statuses[response.Status] = statuses.GetValueOrDefault(response.Status) + 1;
            }
            int answeredByUpstream = responses.Count(r => r.HasHeader("x-upstream-connection"));
            int upstreamSaw = scenario.Upstream.Requests.Length - upstreamBefore;
            Assert.True(upstreamSaw <= answeredByUpstream,
                $"case {i} (seed {Seed + i}): the upstream parsed {upstreamSaw} request(s), the client got {answeredByUpstream} upstream answer(s); sent: {sent}");
        }

        await FuzzAssert.AllConnectionsReleasedAsync(proxy);
        Exception[] malformed = scenario.Upstream.Errors.Where(e => e is InvalidDataException or FormatException).ToArray();
        Assert.True(malformed.Length == 0, "upstream could not parse what the proxy sent: " + string.Join("; ", malformed.Select(e => e.Message)));
        // Both sides were exercised: requests went through, and the parser refused some.
        string seen = string.Join(", ", statuses.Select(s => $"{s.Key}: {s.Value}"));
        Assert.True(statuses.GetValueOrDefault(200) > 0, "nothing was answered 200: " + seen);
        Assert.True(statuses.GetValueOrDefault(400) > 0, "nothing was refused with 400: " + seen);
        using var http = Clients.CreateHttpClient();
        Assert.Equal("hello\n", await http.GetStringAsync(new Uri(proxy.PublicUri, "/hello")));
    }

    private static readonly string[] Responses =
    [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the close",
    ];

    /// <summary>
    /// The other direction: the upstream answers with a mutated response and closes. The client gets a well-formed
    /// answer (the relayed response, or 502), possibly cut short when the upstream's body ended early; and the next
    /// request through the pool gets its own answer: bytes left over from a malformed response are never read as the
    /// response to another request (response desync).
    /// </summary>
    [Fact]
    public async Task MutatedUpstreamResponses_RelayedOr502_NextRequestGetsItsOwnAnswer()
    {
        int cases = Cases * 2 / 3;
        UpstreamHandler handler = async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                if (request.Target.StartsWith("/fuzz/", StringComparison.Ordinal))
                {
                    int i = int.Parse(request.Target.AsSpan("/fuzz/".Length), System.Globalization.CultureInfo.InvariantCulture);
                    await connection.WriteAsync(MutatedResponse(i), ct);
                    return;
                }
                await connection.WriteAsync(Wire.Response(200, "answer to " + request.Target), ct);
            }
        };
        await using var scenario = await ProxyScenario.StartAsync(handler, config => config with { RequestTimeout = "3s" });
        var proxy = scenario.Proxy;
        var statuses = new SortedDictionary<int, int>();
        for (int i = 0; i < cases; i++)
        {
            byte[] sent = MutatedResponse(i);
            await using (var client = await proxy.ConnectAsync())
            {
                await client.SendAsync($"GET /fuzz/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
                var result = await client.ReadToCloseAsync(TimeSpan.FromSeconds(10));
                Assert.True(result.Closed, $"case {i} (seed {Seed + i}): client connection still open 10 s later; upstream sent: {WireMutator.Show(sent)}");
                foreach (var response in await ParseResponsesAsync(result.Bytes, i, WireMutator.Show(sent), allowCutShort: true))
                {
                    statuses[response.Status] = statuses.GetValueOrDefault(response.Status) + 1;
                }
            }
            // Keep-alive upstream connections stay pooled between cases: this request may well reuse one.
            await FuzzAssert.ControlAnsweredAsync(proxy, i, Seed, WireMutator.Show(sent));
        }

        await FuzzAssert.AllConnectionsReleasedAsync(proxy);
        string seen = string.Join(", ", statuses.Select(s => $"{s.Key}: {s.Value}"));
        Assert.True(statuses.GetValueOrDefault(200) > 0, "nothing was relayed: " + seen);
        Assert.True(statuses.GetValueOrDefault(502) > 0, "nothing was refused with 502: " + seen);
    }

    private static byte[] MutatedResponse(int index)
    {
        var random = new Random(Seed + index);
        return WireMutator.Mutate(random, Responses[random.Next(Responses.Length)]);
    }

    /// <summary>
    /// Everything the proxy sent must be a sequence of well-formed responses; with <paramref name="allowCutShort"/>,
    /// the last one may end early after its head (a relayed body the upstream cut short: the proxy can only close).
    /// </summary>
    private static async Task<List<HttpMessage>> ParseResponsesAsync(byte[] bytes, int index, string sent, bool allowCutShort = false)
    {
        var responses = new List<HttpMessage>();
        var reader = new WireReader(new MemoryStream(bytes));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        while (true)
        {
            if (reader.Buffered == 0 && !await reader.FillAsync(cts.Token))
            {
                return responses;
            }
            try
            {
                // The fuzz never sends HEAD, so every response has the body its framing says.
                responses.Add(await Http1Wire.ReadResponseAsync(reader, "GET", null, cts.Token));
            }
            catch (EndOfStreamException) when (allowCutShort && Encoding.Latin1.GetString(bytes).Contains("\r\n\r\n", StringComparison.Ordinal))
            {
                return responses;
            }
            catch (Exception e) when (e is InvalidDataException or FormatException or EndOfStreamException)
            {
                Assert.Fail($"case {index} (seed {Seed + index}): malformed response ({e.Message}): {Encoding.Latin1.GetString(bytes)}; sent: {sent}");
            }
        }
    }

    private static int FromEnvironment(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int value) ? value : fallback;
}
