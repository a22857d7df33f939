using System.Collections.Concurrent;
using System.Net;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// A pooled HTTP/2 stream carries many requests in turn and keeps its bridge (and the bridge's forwarder) across
/// them when an exchange ends cleanly. These tests mix clean exchanges with every way one can end early (the client
/// resets the stream, the upstream resets its connection, the request times out) on a few multiplexed
/// connections, and check that no answer reaches the wrong stream and that the proxy keeps serving.
/// </summary>
public sealed class Http2StreamReuseTests
{
    /// <summary>
    /// Only /hang runs into request_timeout (its own route's, 1 s): every other kind has the cluster's 30 s, so a CPU-starved
    /// run (the suite on a loaded machine, where the in-test upstream or the proxy may not run for a second) cannot turn
    /// a /slow answer into a 504, while a request that is lost (sent where nobody answers, or left waiting for a connection)
    /// still fails: it gets no answer within the client's 10 s. The loop runs for 3 s and then on (up to 30 s) until the mix
    /// has exercised every outcome, so a slow run does not fail the coverage checks either.
    /// </summary>
    [Fact]
    public async Task MixedOutcomes_ManyStreamsOnFewConnections_EveryAnswerMatchesItsRequest()
    {
        long origin = Environment.TickCount64;
        var upstreamLog = new ConcurrentQueue<(long Ms, int Connection, string What, string Target)>();
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                string target = request.Target;
                upstreamLog.Enqueue((Environment.TickCount64 - origin, connection.Index, "read", target));
                if (target.StartsWith("/reset", StringComparison.Ordinal))
                {
                    connection.Reset();
                    return;
                }
                if (target.StartsWith("/hang", StringComparison.Ordinal))
                {
                    await Task.Delay(Timeout.Infinite, ct); // the proxy's request_timeout answers 504
                }
                if (target.StartsWith("/slow", StringComparison.Ordinal))
                {
                    await Task.Delay(20, ct);
                }
                await connection.WriteAsync(Wire.Response(200, $"{request.Method} {target}", ("content-type", "text/plain")), ct);
                upstreamLog.Enqueue((Environment.TickCount64 - origin, connection.Index, "answered", target));
            }
        }, config => config with
        {
            RequestTimeout = "30s",
            Routes = """
                  - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n", headers: { content-type: text/plain } } }
                  - { id: hang, match: { path: "/hang/{**rest}" }, cluster: backend, request_timeout: 1s }
                  - { id: all, match: { path: "/{**rest}" }, cluster: backend }
                """,
        });

        using HttpClient client = Http2ServerTests.CreateH2Client();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(3);
        var hardDeadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        long answered = 0, mismatched = 0, cancelled = 0, failed = 0;
        bool KeepGoing()
        {
            DateTime now = DateTime.UtcNow;
            return now < deadline
                || (now < hardDeadline && (Interlocked.Read(ref answered) <= 100 || Interlocked.Read(ref cancelled) == 0 || Interlocked.Read(ref failed) == 0));
        }
        // On an unexpected outcome: what the upstream saw of that request, and what came before it on its connection.
        string UpstreamView(string target, long started)
        {
            (long Ms, int Connection, string What, string Target)[] events = [.. upstreamLog];
            int connection = -1;
            foreach (var e in events)
            {
                if (e.Target == target)
                {
                    connection = e.Connection;
                }
            }
            return connection < 0
                ? $"sent at {started - origin} ms, never read by the upstream"
                : $"sent at {started - origin} ms; upstream connection {connection}: "
                    + string.Join(", ", events.Where(e => e.Connection == connection).Select(e => $"{e.What} {e.Target} at {e.Ms} ms"));
        }
        async Task WorkerAsync(int worker)
        {
            var random = new Random(worker);
            for (int i = 0; KeepGoing(); i++)
            {
                int pick = random.Next(20);
                string kind = pick switch { < 6 => "ok", < 10 => "hello", < 13 => "slow", < 15 => "reset", 15 => "hang", _ => "cancel" };
                string target = $"/{kind}/{worker}/{i}";
                long started = Environment.TickCount64;
                using var cts = new CancellationTokenSource(kind == "cancel" ? TimeSpan.FromMilliseconds(random.Next(1, 15)) : TestDefaults.Timeout);
                try
                {
                    using HttpResponseMessage response = await client.GetAsync(
                        kind switch { "cancel" => $"{scenario.Proxy.PublicUri}slow/{worker}/{i}", "hello" => $"{scenario.Proxy.PublicUri}hello", _ => $"{scenario.Proxy.PublicUri}{target[1..]}" }, cts.Token);
                    string body = await response.Content.ReadAsStringAsync(cts.Token);
                    if (response.StatusCode == HttpStatusCode.OK)
                    {
                        Interlocked.Increment(ref answered);
                        string expected = kind switch { "cancel" => $"GET /slow/{worker}/{i}", "hello" => "hello\n", _ => $"GET {target}" };
                        if (body != expected)
                        {
                            Interlocked.Increment(ref mismatched);
                        }
                    }
                    else
                    {
                        Assert.True(kind is "reset" or "hang",
                            $"{target}: {(int)response.StatusCode} {body} after {Environment.TickCount64 - started} ms; {UpstreamView(target, started)}");
                        Interlocked.Increment(ref failed);
                    }
                }
                catch (OperationCanceledException) when (kind == "cancel")
                {
                    Interlocked.Increment(ref cancelled);
                }
                catch (OperationCanceledException)
                {
                    Assert.Fail($"{target}: no answer after {Environment.TickCount64 - started} ms; {UpstreamView(target, started)}");
                }
            }
        }

        var workers = new Task[12];
        for (int w = 0; w < workers.Length; w++)
        {
            workers[w] = WorkerAsync(w);
        }
        await Task.WhenAll(workers);

        Assert.Equal(0, mismatched);
        Assert.True(answered > 100, $"answered {answered}");
        Assert.True(cancelled > 0 && failed > 0, $"cancelled {cancelled}, failed {failed}: the mix did not exercise early ends");
        // Still serving, on the same connections (their pooled streams carried the early ends).
        for (int i = 0; i < 20; i++)
        {
            Assert.Equal($"GET /after/{i}", await client.GetStringAsync($"{scenario.Proxy.PublicUri}after/{i}"));
        }
    }
    /// <summary>
    /// A pooled stream serves a request without a body from its own buffer and one with a body through its request
    /// pipe: alternating the two on the same streams (and resetting some mid-way), every answer must still carry its
    /// own request's method, target and body.
    /// </summary>
    [Fact]
    public async Task BodylessAndBodyRequests_AlternateOnPooledStreams_EachAnswerEchoesItsRequest()
    {
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                if (request.Target.StartsWith("/slow", StringComparison.Ordinal))
                {
                    await Task.Delay(20, ct);
                }
                await connection.WriteAsync(Wire.Response(200, $"{request.Method} {request.Target} {request.BodyText}", ("content-type", "text/plain")), ct);
            }
        });

        using HttpClient client = Http2ServerTests.CreateH2Client();
        long answered = 0, mismatched = 0;
        async Task WorkerAsync(int worker)
        {
            var random = new Random(worker);
            for (int i = 0; i < 60; i++)
            {
                int pick = random.Next(6);
                string target = $"/{(pick == 5 ? "slow" : "echo")}/{worker}/{i}";
                using var cts = new CancellationTokenSource(pick == 5 ? TimeSpan.FromMilliseconds(random.Next(1, 10)) : TestDefaults.Timeout);
                try
                {
                    string body = pick % 2 == 0 ? "" : new string((char)('a' + worker), random.Next(1, 3000));
                    using HttpResponseMessage response = body.Length == 0
                        ? await client.GetAsync($"{scenario.Proxy.PublicUri}{target[1..]}", cts.Token)
                        : await client.PostAsync($"{scenario.Proxy.PublicUri}{target[1..]}", new StringContent(body), cts.Token);
                    string text = await response.Content.ReadAsStringAsync(cts.Token);
                    Interlocked.Increment(ref answered);
                    if (text != $"{(body.Length == 0 ? "GET" : "POST")} {target} {body}")
                    {
                        Interlocked.Increment(ref mismatched);
                    }
                }
                catch (OperationCanceledException) when (pick == 5)
                {
                }
            }
        }

        var workers = new Task[8];
        for (int w = 0; w < workers.Length; w++)
        {
            workers[w] = WorkerAsync(w);
        }
        await Task.WhenAll(workers);

        Assert.Equal(0, mismatched);
        Assert.True(answered > 300, $"answered {answered}");
    }
}
