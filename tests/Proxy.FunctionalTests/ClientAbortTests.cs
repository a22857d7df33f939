using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using Grpc.Core;
using Grpc.Net.Client;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Grpc;
using Proxy.FunctionalTests.Http2;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.FunctionalTests.Tls;
using Proxy.Http2;

namespace Proxy.FunctionalTests;

/// <summary>
/// A client that leaves while the upstream still works on its request: the upstream's work is cut (its HTTP/1.1
/// connection closed, its HTTP/2 stream reset), so a slow backend is not kept busy for nobody, and the exchange is
/// logged as 499 <c>client_aborted</c>. An HTTP/1.1 client's close is noticed within the heartbeat's second; an HTTP/2
/// client's RST_STREAM at once. A route with <c>ignore_client_abort: true</c> keeps serving half-closed clients.
/// </summary>
public sealed class ClientAbortTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-client-abort-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static string Yaml(string destination, string protocol = "http1", string route = "", string top = "", string cluster = "") => $$"""
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: all, match: { path: "/{**rest}" }, cluster: backend{{route}} }
        clusters:
          backend:
            protocol: {{protocol}}
            destinations: [{ address: "{{destination}}" }]
            {{cluster}}
        {{top}}
        """;

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(clock.Elapsed < TestDefaults.Timeout, "Timed out waiting until " + what);
            await Task.Delay(20);
        }
    }

    /// <summary>An HTTP/1.1 upstream that takes a request, then waits up to 8 s for the proxy to close the connection.</summary>
    private sealed class HoldingUpstream : IAsyncDisposable
    {
        private readonly RecordingUpstream _upstream;
        private readonly TaskCompletionSource<TimeSpan?> _closedAfter = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _received = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public HoldingUpstream(TimeSpan hold)
        {
            _upstream = RecordingUpstream.Start(async (connection, ct) =>
            {
                if (await connection.ReadRequestAsync(ct) is null)
                {
                    return;
                }
                var clock = Stopwatch.StartNew();
                _received.TrySetResult();
                if (await connection.WaitForPeerCloseAsync(hold))
                {
                    _closedAfter.TrySetResult(clock.Elapsed);
                    return;
                }
                _closedAfter.TrySetResult(null);
                await connection.WriteAsync(Wire.Response(200, "late"), ct);
            });
        }

        public string Address => _upstream.Address;
        public Task Received => _received.Task;

        /// <summary>How long after the request the proxy closed the connection; null when it had not after the hold.</summary>
        public Task<TimeSpan?> ClosedAfter => _closedAfter.Task;

        public ValueTask DisposeAsync() => _upstream.DisposeAsync();
    }

    [Fact]
    public async Task Http1Client_ClosesWhileHttp1UpstreamWorks_UpstreamConnectionCutAndLogged499()
    {
        await using var upstream = new HoldingUpstream(TimeSpan.FromSeconds(8));
        string log = Path.Combine(_directory, "access.log");
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, top: $$"""access_log: { path: "{{log}}" }"""));

        var client = await proxy.ConnectAsync();
        await client.SendAsync(Wire.Get("/work"));
        await upstream.Received.WaitAsync(TestDefaults.Timeout);
        var clock = Stopwatch.StartNew();
        await client.DisposeAsync(); // close(): FIN, as a client that gives up does

        TimeSpan? closedAfter = await upstream.ClosedAfter.WaitAsync(TestDefaults.Timeout);
        Assert.NotNull(closedAfter); // on the old proxy: the upstream kept the request for all 8 s, then answered nobody
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"the upstream connection was cut {clock.Elapsed} after the client left");

        string line = (await WaitForLinesAsync(log)).Single();
        using var entry = JsonDocument.Parse(line);
        Assert.Equal(499, entry.RootElement.GetProperty("status").GetInt32());
        Assert.Equal("/work", entry.RootElement.GetProperty("path").GetString());
    }

    /// <summary>
    /// docs/observability.md: spans end with status Error for 5xx and for requests the client left before a response.
    /// A client abort (499 client_aborted) left both the server and the client span Unset.
    /// </summary>
    [Fact]
    public async Task Http1Client_ClosesWhileUpstreamWorks_SpansEndWithStatusError()
    {
        const string Trace = "49949949949949949949949949949949";
        var stopped = new List<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == Proxy.Diagnostics.Tracing.ProxyTracing.SourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a =>
            {
                if (a.TraceId.ToHexString() == Trace)
                {
                    lock (stopped)
                    {
                        stopped.Add(a);
                    }
                }
            },
        };
        ActivitySource.AddActivityListener(listener);
        await using var upstream = new HoldingUpstream(TimeSpan.FromSeconds(8));
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, top: "tracing: { sampling: 1 }"));

        var client = await proxy.ConnectAsync();
        await client.SendAsync(Wire.Get("/work", "example.test", $"traceparent: 00-{Trace}-00f067aa0ba902b7-01"));
        await upstream.Received.WaitAsync(TestDefaults.Timeout);
        await client.DisposeAsync();

        await WaitUntilAsync(() => { lock (stopped) { return stopped.Any(a => a.Kind == ActivityKind.Server); } }, "the server span ended");
        lock (stopped)
        {
            var server = Assert.Single(stopped, a => a.Kind == ActivityKind.Server);
            Assert.Equal(499, server.GetTagItem("http.response.status_code"));
            Assert.Equal(ActivityStatusCode.Error, server.Status);
            Assert.Equal(ActivityStatusCode.Error, Assert.Single(stopped, a => a.Kind == ActivityKind.Client).Status);
        }
    }

    [Fact]
    public async Task Http1Client_ClosesWhileTheResponseBodyStalls_UpstreamConnectionCut()
    {
        var closedAfter = new TaskCompletionSource<TimeSpan?>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var upstream = RecordingUpstream.Start(async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is null)
            {
                return;
            }
            // Half a body, then nothing (a stream that has no news yet): only the client's close can end this.
            await connection.WriteAsync("HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n" + new string('a', 32), ct);
            var clock = Stopwatch.StartNew();
            closedAfter.TrySetResult(await connection.WaitForPeerCloseAsync(TimeSpan.FromSeconds(8)) ? clock.Elapsed : null);
        });
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address));

        var client = await proxy.ConnectAsync();
        await client.SendAsync(Wire.Get("/events"));
        Assert.Equal(200, (await client.ReadResponseHeadAsync()).Status);
        await client.DisposeAsync();

        TimeSpan? after = await closedAfter.Task.WaitAsync(TestDefaults.Timeout);
        Assert.NotNull(after); // before, the upstream connection stayed until its body resumed or stream_idle_timeout
        Assert.True(after < TimeSpan.FromSeconds(4), $"the upstream connection was cut {after} after the stall began");
    }

    [Fact]
    public async Task HttpsClient_CancelsRequest_UpstreamConnectionCut()
    {
        using var pki = new TestPki();
        var ca = TestPki.CreateCa();
        var (cert, key) = pki.Write(TestPki.Issue(ca, "example.test", ["example.test"]), "example", ca);
        await using var upstream = new HoldingUpstream(TimeSpan.FromSeconds(8));
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address).Replace(
            "  - { name: public, address: 127.0.0.1:0 }",
            $$"""  - { name: public, address: 127.0.0.1:0, tls: { certificates: [{ cert: "{{cert}}", key: "{{key}}" }] } }""",
            StringComparison.Ordinal));
        using var client = TlsClients.Create(proxy.Public.Port, ca);

        using var cancel = new CancellationTokenSource();
        var call = client.GetAsync($"https://example.test:{proxy.Public.Port}/work", cancel.Token);
        await upstream.Received.WaitAsync(TestDefaults.Timeout);
        var clock = Stopwatch.StartNew();
        cancel.Cancel(); // HttpClient drops the connection: close_notify (unread by us) ahead of the FIN

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call);
        Assert.NotNull(await upstream.ClosedAfter.WaitAsync(TestDefaults.Timeout));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"the upstream connection was cut {clock.Elapsed} after the client left");
    }

    [Fact]
    public async Task Http1Client_HalfClosesOnIgnoreClientAbortRoute_StillGetsItsAnswer()
    {
        await using var upstream = new HoldingUpstream(TimeSpan.FromSeconds(2.5));
        await using var proxy = await TestProxy.StartAsync(Yaml(upstream.Address, route: ", ignore_client_abort: true"));

        await using var client = await proxy.ConnectAsync();
        await client.SendAsync(Wire.Get("/work"));
        await upstream.Received.WaitAsync(TestDefaults.Timeout);
        client.ShutdownSend(); // done sending, still reading: HAProxy's default keeps such a client

        Assert.Null(await upstream.ClosedAfter.WaitAsync(TestDefaults.Timeout)); // held on for the whole 2.5 s
        var response = await client.ReadResponseAsync();
        Assert.Equal(200, response.Status);
        Assert.Equal("late", response.BodyText);
    }

    [Fact]
    public async Task Http1Client_ClosesWhileHttp2UpstreamWorks_UpstreamStreamReset()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(Yaml($"http://127.0.0.1:{upstream.Port}", protocol: "h2c"));

        var client = await proxy.ConnectAsync();
        await client.SendAsync(Wire.Get("/hold"));
        await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.HoldStarted) == 1, "the upstream holds the request");
        var clock = Stopwatch.StartNew();
        client.Socket.LingerState = new LingerOption(true, 0);
        await client.DisposeAsync(); // RST

        await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.HoldCancelled) == 1, "the upstream's request is cancelled");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"the upstream stream was reset {clock.Elapsed} after the client left");

        // The shared upstream connection serves on.
        await using var next = await proxy.ConnectAsync();
        await next.SendAsync(Wire.Get("/info"));
        Assert.Equal(200, (await next.ReadResponseAsync()).Status);
    }

    [Fact]
    public async Task GrpcClient_CancelsCall_UpstreamCallCancelledAtOnce()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(Yaml($"http://127.0.0.1:{upstream.Port}", protocol: "h2c"));
        using var channel = GrpcChannel.ForAddress(proxy.PublicUri,
            new GrpcChannelOptions { HttpHandler = new SocketsHttpHandler { EnableMultipleHttp2Connections = false } });
        var client = new Greeter.GreeterClient(channel);

        using var cancel = new CancellationTokenSource();
        var call = client.SayHelloAsync(new HelloRequest { Name = "slow" }, cancellationToken: cancel.Token);
        await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.SlowCallsStarted) == 1, "the upstream runs the call");
        var clock = Stopwatch.StartNew();
        cancel.Cancel(); // the client sends RST_STREAM (CANCEL)

        var error = await Assert.ThrowsAsync<RpcException>(async () => await call);
        Assert.Equal(StatusCode.Cancelled, error.StatusCode);
        await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.SlowCallsCancelled) == 1, "the upstream's call is cancelled");
        // At once, not at the end of the upstream's 5 s (on the old proxy the call ran on for nobody).
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"the upstream call was cancelled {clock.Elapsed} after the client's");

        Assert.Equal("Hello again", (await client.SayHelloAsync(new HelloRequest { Name = "again" })).Message);
    }

    /// <summary>
    /// Round after round on one HTTP/2 connection: a request waits on an h2c upstream, the client resets it, and the
    /// next request goes out at once. Every next request gets its answer. Before, the reset could end the stream's whole
    /// exchange inline (the upstream abort resumed the forwarder, the bridge and the stream's loop on the read loop's
    /// thread), so the stream object was pooled while the bridge's abort was still running, and that abort's late wake
    /// of the stream (a cancelled response read) was left on the reset pipe: the next stream on that object read it as
    /// "the bridge ended without an answer" and was reset REFUSED_STREAM: 3 to 9 rounds in 30 on the runtime engine
    /// (the gRPC client retries REFUSED_STREAM, which hid it from GrpcClient_CancelsCall_UpstreamCallCancelledAtOnce).
    /// </summary>
    [Fact]
    public async Task Http2Client_ResetsStreamsWaitingOnHttp2Upstream_EachNextRequestAnswered()
    {
        const int Rounds = 30;
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(Yaml($"http://127.0.0.1:{upstream.Port}", protocol: "h2c"));
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        var failures = new List<string>();
        int id = 1;
        for (int round = 1; round <= Rounds; round++, id += 4)
        {
            await client.SendHeadersAsync(id, endStream: true, Http2TestClient.Get("/hold"));
            await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.HoldStarted) == round, "the upstream holds the request");
            await client.SendRstAsync(id);
            await client.SendHeadersAsync(id + 2, endStream: true, Http2TestClient.Get("/info"));
            try
            {
                var next = await client.ReadResponseAsync(id + 2);
                if (next.Status != 200)
                {
                    failures.Add($"round {round}: {next.Status}");
                }
            }
            catch (InvalidOperationException e)
            {
                failures.Add($"round {round}: {e.Message}");
            }
        }

        Assert.True(failures.Count == 0, string.Join("; ", failures));
        await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.HoldCancelled) == Rounds, "every held request is cancelled");
    }

    /// <summary>
    /// Waves of requests on one HTTP/2 connection whose response_timeout (1 s) runs out on an h2c upstream while the
    /// client resets them one by one, and sends a new request with each reset, across the second in which the
    /// heartbeat's tick fires those timeouts: some resets meet their stream's timeout. The connection keeps answering
    /// (a PING and every new request, within a bound), and no timeout of a reset stream reaches the new request its
    /// pooled stream object (or upstream stream) carries next: every new request gets its 200. A change that moved the
    /// heartbeat's timeout checks out of the connection's lock (to undo a lock-order inversion with the reset path,
    /// not seen to deadlock) failed this on a loaded CI run: new requests sent just before the tick got 504, the old
    /// exchange's timeout cancelling a read the new one had taken over. It was not kept.
    /// <para>A new request's 504 is that leak only when it came sooner than its own response_timeout: its access-log
    /// line's duration_ms is under 1 s (less the coarse clock's few milliseconds). One that waited the whole second is
    /// the process stalling (a loaded CI run showed every thread, the heartbeat's timer included, idle for a second
    /// while the upstream's answer waited), which the proxy rightly answers 504.</para>
    /// </summary>
    [Fact]
    public async Task Http2Client_ResetsStreamsAsTheirResponseTimeoutFires_ConnectionKeepsAnswering()
    {
        const int Waves = 4;
        const int PerWave = 40;
        await using var upstream = await H2Upstream.StartAsync();
        string log = Path.Combine(_directory, "access.log");
        await using var proxy = await TestProxy.StartAsync(Yaml($"http://127.0.0.1:{upstream.Port}", protocol: "h2c",
            cluster: "response_timeout: 1s", top: $$"""access_log: { path: "{{log}}" }"""));
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        client.AutoWindowUpdate = false; // small answers only; the reads below run after the sends, never beside them
        int infosTimedOut = 0;

        int id = 1;
        long held = 0;
        int timedOut = 0;
        var failures = new List<string>();
        for (int wave = 1; wave <= Waves; wave++)
        {
            var holds = new List<int>();
            for (int i = 0; i < PerWave; i++, id += 2)
            {
                await client.SendHeadersAsync(id, endStream: true, Http2TestClient.Get("/hold"));
                holds.Add(id);
            }
            held += PerWave;
            await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.HoldStarted) == held, "the upstream holds the wave");
            // The timeouts were armed about now and fire on a heartbeat tick 1 to 2 s later: one reset (and one new
            // request) every 35 ms from 0.8 s to 2.2 s puts a reset near that tick whatever its phase.
            var clock = Stopwatch.StartNew();
            var infos = new List<int>();
            foreach (int hold in holds)
            {
                TimeSpan at = TimeSpan.FromMilliseconds(800 + 35 * infos.Count);
                if (clock.Elapsed < at)
                {
                    await Task.Delay(at - clock.Elapsed);
                }
                await client.SendRstAsync(hold);
                await client.SendHeadersAsync(id, endStream: true, Http2TestClient.Get("/info"));
                infos.Add(id);
                id += 2;
            }
            byte[] ping = [1, 2, 3, 4, 5, 6, 7, (byte)wave];
            await client.SendFrameAsync(Http2FrameType.PING, Http2Flags.None, 0, ping);

            // Every frame read and every header block decoded (HPACK state), until the PING's ACK and every new request's end.
            var pending = new HashSet<int>(infos);
            var statuses = new Dictionary<int, int>();
            bool pinged = false;
            var deadline = Stopwatch.StartNew();
            while (!pinged || pending.Count > 0)
            {
                TimeSpan left = TimeSpan.FromSeconds(15) - deadline.Elapsed;
                Http2Frame? frame = left > TimeSpan.Zero ? await ReadFrameOrNullAsync(client, left) : null;
                if (frame is null)
                {
                    failures.Add($"wave {wave}: no answer (ping {(pinged ? "answered" : "not answered")}, {pending.Count} requests open): the connection hangs or closed");
                    Assert.Fail(string.Join("; ", failures));
                }
                if (frame.Type == Http2FrameType.PING && frame.Has(Http2Flags.ACK) && frame.Payload.AsSpan().SequenceEqual(ping))
                {
                    pinged = true;
                }
                else if (frame.Type == Http2FrameType.HEADERS)
                {
                    foreach (var (name, value) in client.DecodeHeaders(frame))
                    {
                        if (name == ":status" && pending.Contains(frame.StreamId))
                        {
                            statuses[frame.StreamId] = int.Parse(value);
                        }
                        else if (name == ":status" && value == "504")
                        {
                            timedOut++;
                        }
                    }
                }
                else if (frame.Type == Http2FrameType.RST_STREAM && pending.Remove(frame.StreamId))
                {
                    failures.Add($"wave {wave}: /info on stream {frame.StreamId} reset {frame.ErrorCode}");
                }
                else if (frame.Type == Http2FrameType.GOAWAY)
                {
                    failures.Add($"wave {wave}: GOAWAY {frame.ErrorCode}");
                    Assert.Fail(string.Join("; ", failures));
                }
                if (frame.Type is Http2FrameType.HEADERS or Http2FrameType.DATA && frame.Has(Http2Flags.END_STREAM) && pending.Remove(frame.StreamId))
                {
                    int status = statuses.GetValueOrDefault(frame.StreamId);
                    if (status == 504)
                    {
                        infosTimedOut++; // judged by its duration below
                    }
                    else if (status != 200)
                    {
                        failures.Add($"wave {wave}: /info on stream {frame.StreamId} answered {status}");
                    }
                }
            }
        }

        if (infosTimedOut > 0)
        {
            var clock = Stopwatch.StartNew();
            List<double> durations;
            do
            {
                await Task.Delay(20);
                durations = [.. (File.Exists(log) ? File.ReadAllLines(log) : [])
                    .Select(line => JsonDocument.Parse(line).RootElement)
                    .Where(e => e.GetProperty("path").GetString() == "/info" && e.GetProperty("status").GetInt32() == 504)
                    .Select(e => e.GetProperty("duration_ms").GetDouble())];
            }
            while (durations.Count < infosTimedOut && clock.Elapsed < TestDefaults.Timeout);
            Assert.Equal(infosTimedOut, durations.Count);
            failures.AddRange(durations.Where(ms => ms < 990).Select(ms => $"/info answered 504 after {ms} ms, within its response_timeout"));
        }
        Assert.True(failures.Count == 0, string.Join("; ", failures));
        Assert.True(timedOut > 0, "no held request ran out of its response_timeout before its reset");
    }

    private static async Task<Http2Frame?> ReadFrameOrNullAsync(Http2TestClient client, TimeSpan timeout)
    {
        try
        {
            return await client.ReadFrameAsync(timeout);
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    [Fact]
    public async Task Http2Client_ResetsStreamWhileWaitingForAnUpstreamConnection_NothingGoesUp()
    {
        await using var slow = FaultyUpstream.Start("slow");
        slow.Delay = TimeSpan.FromSeconds(1.5);
        await using var proxy = await TestProxy.StartAsync(Yaml(slow.Address, cluster: "max_connections: 1\n    connect_timeout: 5s"));

        // The only upstream connection is busy for 1.5 s ...
        var first = Task.Run(async () =>
        {
            await using var client = await proxy.ConnectAsync();
            await client.SendAsync(Wire.Get("/first"));
            return await client.ReadResponseAsync();
        });
        await WaitUntilAsync(() => slow.TrafficCount == 1, "the upstream has the first request");
        // ... so the HTTP/2 client's request waits for it, and is reset meanwhile.
        await using (var h2 = await Http2TestClient.ConnectAsync(proxy.Public))
        {
            await h2.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/second"));
            await Task.Delay(300);
            await h2.SendRstAsync(1);
            await h2.FlushAsync();
            await Task.Delay(100);
        }
        Assert.Equal(200, (await first).Status);
        slow.Delay = TimeSpan.Zero;
        await Task.Delay(500);

        // On the previous proxy the reset request went up once the connection was free, for nobody.
        Assert.Equal(1, slow.TrafficCount);
        await using var third = await proxy.ConnectAsync();
        await third.SendAsync(Wire.Get("/third"));
        Assert.Equal(200, (await third.ReadResponseAsync()).Status);
        Assert.Equal(2, slow.TrafficCount);
    }

    /// <summary>
    /// An HTTP/1.1 request queued at the pool's max_connections cap whose client closes: the heartbeat's client-close
    /// check covers the wait for a connection too, so the request is dropped (499) when a connection frees up, instead
    /// of going up for nobody seconds later.
    /// </summary>
    [Fact]
    public async Task Http1Client_ClosesWhileWaitingForAnUpstreamConnection_NothingGoesUp()
    {
        await using var slow = FaultyUpstream.Start("slow");
        slow.Delay = TimeSpan.FromSeconds(4);
        await using var proxy = await TestProxy.StartAsync(Yaml(slow.Address, cluster: "max_connections: 1\n    connect_timeout: 10s"));

        // The only upstream connection is busy for 4 s ...
        var first = Task.Run(async () =>
        {
            await using var client = await proxy.ConnectAsync();
            await client.SendAsync(Wire.Get("/first"));
            return await client.ReadResponseAsync(timeout: TimeSpan.FromSeconds(20));
        });
        await WaitUntilAsync(() => slow.TrafficCount == 1, "the upstream has the first request");
        // ... so this POST waits for it, and its client leaves meanwhile.
        await using (var second = await proxy.ConnectAsync())
        {
            await second.SendAsync("POST /second HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello");
            await Task.Delay(300);
        }
        Assert.Equal(200, (await first).Status);
        slow.Delay = TimeSpan.Zero;
        await Task.Delay(500);

        // On the previous proxy the abandoned POST went up once the connection was free, for nobody.
        Assert.Equal(1, slow.TrafficCount);
        await using var third = await proxy.ConnectAsync();
        await third.SendAsync(Wire.Get("/third"));
        Assert.Equal(200, (await third.ReadResponseAsync()).Status);
        Assert.Equal(2, slow.TrafficCount);
    }

    private static async Task<string[]> WaitForLinesAsync(string path)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            string[] lines = File.Exists(path) ? File.ReadAllLines(path) : [];
            if (lines.Length > 0 || clock.Elapsed > TestDefaults.Timeout)
            {
                Assert.NotEmpty(lines);
                return lines;
            }
            await Task.Delay(20);
        }
    }
}
