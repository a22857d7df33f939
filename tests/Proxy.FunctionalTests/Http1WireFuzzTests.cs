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

    private static readonly string[] Inserts =
    [
        "\r\n", "\n", "\r", " ", "\t", ":", "\0", "0", "-", ",", ";ext=1", "chunked", "\x7f", "\xff", "\r\n\r\n",
        "Content-Length: 3\r\n", "Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: gzip\r\n",
        "Host: b\r\n", " HTTP/1.1", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "Expect: 100-continue\r\n", "Connection: close\r\n",
        "ffffffffffffffffff", "X: a\r\n b\r\n",
    ];

    [Fact]
    public async Task MutatedRequests_AnsweredWellFormedOrRefused_NothingSmuggled()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(),
            config => config with { HeaderTimeout = "2s", RequestTimeout = "3s" });
        var proxy = scenario.Proxy;
        var statuses = new SortedDictionary<int, int>();
        for (int i = 0; i < Cases; i++)
        {
            var random = new Random(Seed + i);
            byte[] request = Mutate(random, Encoding.Latin1.GetBytes(Requests[random.Next(Requests.Length)]));
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
            string sent = Encoding.Latin1.GetString(request).Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
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

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (proxy.Server.OpenConnections > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        Assert.True(proxy.Server.OpenConnections == 0, $"{proxy.Server.OpenConnections} connection(s) still open after every client left");
        Exception[] malformed = scenario.Upstream.Errors.Where(e => e is InvalidDataException or FormatException).ToArray();
        Assert.True(malformed.Length == 0, "upstream could not parse what the proxy sent: " + string.Join("; ", malformed.Select(e => e.Message)));
        // Both sides were exercised: requests went through, and the parser refused some.
        string seen = string.Join(", ", statuses.Select(s => $"{s.Key}: {s.Value}"));
        Assert.True(statuses.GetValueOrDefault(200) > 0, "nothing was answered 200: " + seen);
        Assert.True(statuses.GetValueOrDefault(400) > 0, "nothing was refused with 400: " + seen);
        using var http = Clients.CreateHttpClient();
        Assert.Equal("hello\n", await http.GetStringAsync(new Uri(proxy.PublicUri, "/hello")));
    }

    /// <summary>One to three edits: insert a token, delete a few bytes, repeat a line, or change one byte.</summary>
    private static byte[] Mutate(Random random, byte[] request)
    {
        var bytes = new List<byte>(request);
        int edits = random.Next(1, 4);
        for (int e = 0; e < edits && bytes.Count > 0; e++)
        {
            int at = random.Next(bytes.Count + 1);
            switch (random.Next(4))
            {
                case 0:
                case 1:
                    bytes.InsertRange(at, Encoding.Latin1.GetBytes(Inserts[random.Next(Inserts.Length)]));
                    break;
                case 2:
                    at = Math.Min(at, bytes.Count - 1);
                    bytes.RemoveRange(at, Math.Min(random.Next(1, 6), bytes.Count - at));
                    break;
                default:
                    bytes[Math.Min(at, bytes.Count - 1)] = (byte)random.Next(256);
                    break;
            }
        }
        return [.. bytes];
    }

    /// <summary>Everything the proxy sent must be a sequence of complete, well-formed responses.</summary>
    private static async Task<List<HttpMessage>> ParseResponsesAsync(byte[] bytes, int index, string sent)
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
            catch (Exception e) when (e is InvalidDataException or FormatException or EndOfStreamException)
            {
                Assert.Fail($"case {index} (seed {Seed + index}): malformed response ({e.Message}): {Encoding.Latin1.GetString(bytes)}; sent: {sent}");
            }
        }
    }

    private static int FromEnvironment(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int value) ? value : fallback;
}
