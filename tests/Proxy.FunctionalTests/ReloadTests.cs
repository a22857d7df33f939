using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Hosting;

namespace Proxy.FunctionalTests;

/// <summary>Hot reload (<see cref="ProxyServer.ReloadAsync()"/>, admin POST /reload, SIGHUP, file watch) over real sockets.</summary>
public sealed class ReloadTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-reload-tests-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string PathOf(string name) => Path.Combine(_directory, name);

    private static string Config(string routes, int backendPort = 1, string extraListeners = "", string admin = "", string server = "server: { watch_config: false }")
        => $$"""
        {{server}}
        {{admin}}
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        {{extraListeners}}
        routes:
        {{routes}}
        clusters:
          backend:
            destinations: [{ address: "http://127.0.0.1:{{backendPort.ToString(CultureInfo.InvariantCulture)}}" }]
        """;

    private const string HelloRoute = """
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
        """;

    private const string HelloAndByeRoutes = """
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
          - { id: bye, match: { path: /bye }, respond: { status: 200, body: "bye\n" } }
        """;

    private const string Invalid = """
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: r1, match: { path: /a }, cluster: missing_cluster }
        """;

    private async Task<ProxyServer> StartFromFileAsync(string yaml, string name = "proxy.yaml")
    {
        string path = PathOf(name);
        await File.WriteAllTextAsync(path, yaml);
        var server = ProxyServer.FromFile(path);
        await server.StartAsync();
        return server;
    }

    private static async Task<(int Status, string Body)> GetAsync(IPEndPoint endPoint, string path)
    {
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        using var response = await client.GetAsync($"http://127.0.0.1:{endPoint.Port}{path}");
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Reload_FileGainsRoute_NewRouteAnswers()
    {
        await using var server = await StartFromFileAsync(Config(HelloRoute));
        var endPoint = server.GetEndPoint("public");
        Assert.Equal(404, (await GetAsync(endPoint, "/bye")).Status);
        string before = server.ConfigVersion;

        await File.WriteAllTextAsync(PathOf("proxy.yaml"), Config(HelloAndByeRoutes));
        ConfigReloadResult result = await server.ReloadAsync();

        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.True(result.Changed);
        Assert.NotEqual(before, result.Version);
        Assert.Equal(result.Version, server.ConfigVersion);
        Assert.Equal((200, "bye\n"), await GetAsync(endPoint, "/bye"));
        // The listener kept its socket: same port.
        Assert.Equal(endPoint, server.GetEndPoint("public"));
    }

    [Fact]
    public async Task Reload_InvalidFile_KeepsOldRoutesAndReportsErrors()
    {
        const string admin = "admin: { address: 127.0.0.1:0 }";
        await using var server = await StartFromFileAsync(Config(HelloRoute, admin: admin));
        var endPoint = server.GetEndPoint("public");
        var adminEndPoint = server.GetEndPoint("admin");
        string version = server.ConfigVersion;

        await File.WriteAllTextAsync(PathOf("proxy.yaml"), Invalid);
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        using var reload = await client.PostAsync($"http://127.0.0.1:{adminEndPoint.Port}/reload", null);
        string reloadBody = await reload.Content.ReadAsStringAsync();

        Assert.Equal(422, (int)reload.StatusCode);
        using (var json = JsonDocument.Parse(reloadBody))
        {
            Assert.Equal("failure", json.RootElement.GetProperty("result").GetString());
            Assert.Equal(version, json.RootElement.GetProperty("version").GetString());
            var errors = json.RootElement.GetProperty("errors").EnumerateArray().Select(e => e.GetString()!).ToArray();
            Assert.Contains(errors, e => e.Contains("missing_cluster", StringComparison.Ordinal) && e.Contains("proxy.yaml:", StringComparison.Ordinal));
        }
        Assert.Equal((200, "hello\n"), await GetAsync(endPoint, "/hello"));
        Assert.Equal(version, server.ConfigVersion);

        string config = await client.GetStringAsync($"http://127.0.0.1:{adminEndPoint.Port}/config");
        using (var json = JsonDocument.Parse(config))
        {
            Assert.Equal(version, json.RootElement.GetProperty("version").GetString());
            var last = json.RootElement.GetProperty("last_reload");
            Assert.Equal("failure", last.GetProperty("result").GetString());
            Assert.NotEmpty(last.GetProperty("errors").EnumerateArray());
        }
        string metrics = await client.GetStringAsync($"http://127.0.0.1:{adminEndPoint.Port}/metrics");
        Assert.Contains("proxy_config_reloads_total{result=\"failure\"} 1", metrics, StringComparison.Ordinal);
        Assert.Contains("proxy_config_reloads_total{result=\"success\"} 0", metrics, StringComparison.Ordinal);

        // The file fixed: the same endpoint answers 200 with the new version.
        await File.WriteAllTextAsync(PathOf("proxy.yaml"), Config(HelloAndByeRoutes, admin: admin));
        using var fixedReload = await client.PostAsync($"http://127.0.0.1:{adminEndPoint.Port}/reload", null);
        Assert.Equal(200, (int)fixedReload.StatusCode);
        Assert.Equal(server.ConfigVersion, JsonDocument.Parse(await fixedReload.Content.ReadAsStringAsync()).RootElement.GetProperty("version").GetString());
        Assert.NotEqual(version, server.ConfigVersion);
    }

    /// <summary>
    /// A listener that cannot bind fails the reload with its error at the listener's address in the file
    /// (FILE:LINE:COL, as every other config error), not as a bare message.
    /// </summary>
    [Fact]
    public async Task Reload_ListenerAddressInUse_Answers422AtTheAddressLocation()
    {
        const string admin = "admin: { address: 127.0.0.1:0 }";
        await using var server = await StartFromFileAsync(Config(HelloRoute, admin: admin));
        var adminEndPoint = server.GetEndPoint("admin");
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        holder.Listen();
        int taken = ((IPEndPoint)holder.LocalEndPoint!).Port;

        string yaml = Config(HelloRoute, admin: admin,
            extraListeners: $"  - {{ name: taken, address: \"127.0.0.1:{taken.ToString(CultureInfo.InvariantCulture)}\" }}");
        await File.WriteAllTextAsync(PathOf("proxy.yaml"), yaml);
        string[] lines = yaml.Split('\n');
        int line = Array.FindIndex(lines, l => l.Contains("name: taken", StringComparison.Ordinal)) + 1;
        int column = lines[line - 1].IndexOf("\"127.0.0.1:", StringComparison.Ordinal) + 1;
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        using var reload = await client.PostAsync($"http://127.0.0.1:{adminEndPoint.Port}/reload", null);

        Assert.Equal(422, (int)reload.StatusCode);
        using var json = JsonDocument.Parse(await reload.Content.ReadAsStringAsync());
        string error = Assert.Single(json.RootElement.GetProperty("errors").EnumerateArray()).GetString()!;
        Assert.StartsWith($"{PathOf("proxy.yaml")}:{line}:{column}: listener 'taken' cannot bind 127.0.0.1:{taken}", error, StringComparison.Ordinal);
    }

    /// <summary>A file nested a hundred thousand levels deep overflowed the stack of the running proxy on reload.</summary>
    [Fact]
    public async Task Reload_NestedTooDeep_KeepsOldRoutesAndTheProcess()
    {
        const string admin = "admin: { address: 127.0.0.1:0 }";
        await using var server = await StartFromFileAsync(Config(HelloRoute, admin: admin));
        var endPoint = server.GetEndPoint("public");
        var adminEndPoint = server.GetEndPoint("admin");

        await File.WriteAllTextAsync(PathOf("proxy.yaml"), "listeners:\n  " + string.Concat(Enumerable.Repeat("- ", 100_000)) + "x\n");
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        using var reload = await client.PostAsync($"http://127.0.0.1:{adminEndPoint.Port}/reload", null);

        Assert.Equal(422, (int)reload.StatusCode);
        Assert.Contains("nested deeper than 64 levels", await reload.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal((200, "hello\n"), await GetAsync(endPoint, "/hello"));
    }

    [Fact]
    public async Task Reload_YamlServer_ReloadFromFileThrowsAndTextOverloadWorks()
    {
        await using var proxy = await TestProxy.StartAsync(Config(HelloRoute));

        await Assert.ThrowsAsync<InvalidOperationException>(() => proxy.Server.ReloadAsync());
        var result = await proxy.Server.ReloadAsync(Config(HelloAndByeRoutes));

        Assert.True(result.Success);
        Assert.Equal((200, "bye\n"), await GetAsync(proxy.Public, "/bye"));
    }

    [Fact]
    public async Task Reload_UnchangedCluster_UpstreamSeesNoNewConnection()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        const string routes = """
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            """;
        await using var server = await StartFromFileAsync(Config(routes, upstream.Port));
        var endPoint = server.GetEndPoint("public");
        var pool = server.Snapshot.Clusters["backend"].Destinations[0].Pool;
        Assert.Equal(200, (await GetAsync(endPoint, "/one")).Status);
        Assert.Equal(1, upstream.ConnectionCount);
        // The client can have the whole response a moment before the forwarder puts the connection back in the pool.
        for (int i = 0; i < 500 && pool!.IdleConnections == 0; i++)
        {
            await Task.Delay(10);
        }
        Assert.Equal(1, pool!.IdleConnections);

        var result = await server.ReloadAsync(Config(HelloRoute + "\n" + routes, upstream.Port));

        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.Same(pool, server.Snapshot.Clusters["backend"].Destinations[0].Pool);
        Assert.Equal(200, (await GetAsync(endPoint, "/two")).Status);
        Assert.Equal((200, "hello\n"), await GetAsync(endPoint, "/hello"));
        Assert.Equal(1, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Reload_ChangedCluster_NewPoolAndOldIdleConnectionsClosed()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        const string routes = """
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            """;
        await using var proxy = await TestProxy.StartAsync(Config(routes, upstream.Port));
        var oldPool = proxy.Server.Snapshot.Clusters["backend"].Destinations[0].Pool!;
        Assert.Equal(200, (await GetAsync(proxy.Public, "/one")).Status);

        var result = await proxy.Server.ReloadAsync(Config(routes, upstream.Port).Replace("destinations:", "connect_timeout: 3s\n    destinations:", StringComparison.Ordinal));

        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.NotSame(oldPool, proxy.Server.Snapshot.Clusters["backend"].Destinations[0].Pool);
        Assert.Equal(0, oldPool.IdleConnections);
        Assert.True(await upstream.Connections[0].WaitForPeerCloseAsync(TestDefaults.Timeout));
        Assert.Equal(200, (await GetAsync(proxy.Public, "/two")).Status);
        Assert.Equal(2, upstream.ConnectionCount);
    }

    private static string Versioned(int generation) => $$"""
        server: { watch_config: false }
        admin: { address: 127.0.0.1:0 }
        listeners:
          - { name: public, address: 127.0.0.1:0 }
          - { name: side-{{generation}}, address: 127.0.0.1:0 }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
          - { id: api-{{generation}}, match: { path: "/api/{**rest}" }, cluster: svc-{{generation}} }
        clusters:
          svc-{{generation}}:
            destinations: [ "http://127.0.0.1:1" ]
        """;

    /// <summary>
    /// A deploy pipeline that versions its route and cluster names renames them on every reload: the series of names
    /// gone from the config must not stay in /metrics for the life of the process. A removed name stays one more
    /// reload (requests still on the replaced config count into it), then goes; a name kept keeps counting.
    /// </summary>
    [Fact]
    public async Task Reload_RenamedRouteClusterListener_OldSeriesDroppedOneReloadLater()
    {
        await using var server = await StartFromFileAsync(Versioned(1));
        var admin = server.GetEndPoint("admin");
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        Assert.Equal((200, "hello\n"), await GetAsync(server.GetEndPoint("public"), "/hello"));
        Assert.Equal(404, (await GetAsync(server.GetEndPoint("side-1"), "/nothing-here")).Status);

        for (int generation = 2; generation <= 5; generation++)
        {
            var result = await server.ReloadAsync(Versioned(generation));
            Assert.True(result.Success, string.Join("\n", result.Errors));
        }
        string metrics = await client.GetStringAsync($"http://127.0.0.1:{admin.Port}/metrics");

        foreach (string gone in (string[])["api-1\"", "svc-1\"", "side-1\"", "api-3\"", "svc-3\"", "side-3\""])
        {
            Assert.DoesNotContain(gone, metrics, StringComparison.Ordinal);
        }
        // Generation 4 (replaced by the last reload) and 5 (running) are exported.
        Assert.Contains("proxy_upstream_connections_opened_total{cluster=\"svc-4\"} 0", metrics, StringComparison.Ordinal);
        Assert.Contains("proxy_upstream_connections_opened_total{cluster=\"svc-5\"} 0", metrics, StringComparison.Ordinal);
        Assert.Contains("proxy_request_duration_seconds_count{route=\"api-5\",cluster=\"svc-5\"} 0", metrics, StringComparison.Ordinal);
        Assert.Contains("proxy_connections_accepted_total{listener=\"side-4\"} 0", metrics, StringComparison.Ordinal);
        // The route kept by name kept its count through every reload.
        Assert.Contains("proxy_requests_total{route=\"hello\",cluster=\"\",method=\"GET\",status_class=\"2xx\"} 1", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Reload_ListenerAddedThenRemoved_AcceptsThenStops()
    {
        const string second = "  - { name: second, address: 127.0.0.1:0 }";
        await using var proxy = await TestProxy.StartAsync(Config(HelloRoute));
        Assert.Throws<ArgumentException>(() => proxy.Server.GetEndPoint("second"));

        Assert.True((await proxy.Server.ReloadAsync(Config(HelloRoute, extraListeners: second))).Success);
        var added = proxy.Server.GetEndPoint("second");
        Assert.Equal((200, "hello\n"), await GetAsync(added, "/hello"));
        // A keep-alive connection on the listener about to go away.
        await using var idle = await RawClient.ConnectAsync(added);
        await idle.SendAsync("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        Assert.Equal(200, (await idle.ReadResponseAsync()).Status);

        Assert.True((await proxy.Server.ReloadAsync(Config(HelloRoute))).Success);

        Assert.Throws<ArgumentException>(() => proxy.Server.GetEndPoint("second"));
        using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await Assert.ThrowsAsync<SocketException>(async () => await probe.ConnectAsync(added));
        await idle.AssertClosedAsync(); // the removed listener's idle connection is drained
        Assert.Equal((200, "hello\n"), await GetAsync(proxy.Public, "/hello"));
    }

    [Fact]
    public async Task Reload_ListenerRemoved_Http2ConnectionGetsGoAwayAfterInFlightRequestFinishes()
    {
        const string second = "  - { name: second, address: 127.0.0.1:0 }";
        const string routes = HelloRoute + "\n  - { id: slow, match: { path: /slow }, cluster: backend }";
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var upstream = RecordingUpstream.Start(async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                await release.Task.WaitAsync(ct);
                await connection.WriteAsync(Wire.Response(200, $"{request.Method} {request.Target}"), ct);
            }
        });
        await using var proxy = await TestProxy.StartAsync(Config(routes, upstream.Port, extraListeners: second));
        var added = proxy.Server.GetEndPoint("second");
        using var http = Http2.Http2ServerTests.CreateH2Client();
        using (var warm = await http.GetAsync($"http://127.0.0.1:{added.Port}/hello"))
        {
            Assert.Equal(HttpVersion.Version20, warm.Version); // h2c prior knowledge: an Http2ServerConnection
        }
        Task<HttpResponseMessage> inFlight = http.GetAsync($"http://127.0.0.1:{added.Port}/slow");
        await upstream.WaitForRequestAsync();

        Assert.True((await proxy.Server.ReloadAsync(Config(routes, upstream.Port))).Success);
        release.SetResult();

        // The stream open at the reload finishes on the old connection...
        using (var response = await inFlight)
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal("GET /slow", await response.Content.ReadAsStringAsync());
        }
        // ...but the connection got GOAWAY (it came before the response on the wire), so the client must open a new
        // one, which the removed listener refuses. Undrained, the old connection would have answered this with 200.
        await Assert.ThrowsAsync<HttpRequestException>(() => http.GetAsync($"http://127.0.0.1:{added.Port}/hello"));
        Assert.Equal((200, "hello\n"), await GetAsync(proxy.Public, "/hello"));
    }

    [Fact]
    public async Task Reload_FiftySwapsUnderLoad_NoFailedRequests()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        string routesA = """
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            """;
        string routesB = """
              - { id: hello2, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
              - { id: extra, match: { path: /extra }, respond: { status: 204 } }
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            """;
        await using var server = await StartFromFileAsync(Config(routesA, upstream.Port));
        var endPoint = server.GetEndPoint("public");
        using var stop = new CancellationTokenSource();
        long ok = 0;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();

        async Task LoopAsync(string path)
        {
            using var client = new HttpClient { Timeout = TestDefaults.Timeout };
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    using var response = await client.GetAsync($"http://127.0.0.1:{endPoint.Port}{path}");
                    _ = await response.Content.ReadAsStringAsync();
                    if (response.StatusCode == HttpStatusCode.OK)
                    {
                        Interlocked.Increment(ref ok);
                    }
                    else
                    {
                        failures.Enqueue($"{path}: {(int)response.StatusCode}");
                    }
                }
                catch (Exception e)
                {
                    failures.Enqueue($"{path}: {e.GetType().Name} {e.Message}");
                }
            }
        }

        var loops = new[] { LoopAsync("/hello"), LoopAsync("/hello"), LoopAsync("/api/x"), LoopAsync("/api/y") };
        int succeeded = 0, failed = 0;
        for (int i = 0; i < 50; i++)
        {
            string yaml = (i % 5) switch
            {
                4 => Invalid,
                _ when i % 2 == 0 => Config(routesB, upstream.Port),
                _ => Config(routesA, upstream.Port),
            };
            await File.WriteAllTextAsync(PathOf("proxy.yaml"), yaml);
            var result = await server.ReloadAsync();
            if (result.Success)
            {
                succeeded++;
            }
            else
            {
                failed++;
            }
            await Task.Delay(40);
        }
        stop.Cancel();
        await Task.WhenAll(loops);

        Assert.True(failures.IsEmpty, string.Join("\n", failures.Take(20)));
        Assert.Equal(10, failed);
        Assert.Equal(40, succeeded);
        Assert.True(Interlocked.Read(ref ok) > 100, $"only {ok} requests");
        // The backend cluster never changed: one pool throughout, a handful of connections at most.
        Assert.InRange(upstream.ConnectionCount, 1, 8);
    }

    /// <summary>
    /// A listener's handler changes (proxy, echo) while its address stays, and another listener is removed and added
    /// back, twenty times while four clients open new connections: every connection the proxy accepted is answered by
    /// the config it was sent for. The changed listener keeps its socket (never refused, never reset); the removed one
    /// serves what it accepted, including its queue, with its own route (not 404 no_route, not a reset or a silent
    /// close); only a connection attempted while it is gone may be refused.
    /// </summary>
    [Fact]
    public async Task Reload_HandlerSwappedAndListenerRemovedUnderLoad_EveryAcceptedConnectionAnswered()
    {
        // Even: "swap" proxies and "side" exists; odd: "swap" echoes and "side" is gone with its route.
        static string Yaml(bool odd) => odd
            ? """
              server: { watch_config: false }
              listeners:
                - { name: public, address: 127.0.0.1:0 }
                - { name: swap, address: 127.0.0.1:0, handler: echo }
              routes:
                - { id: main, listeners: [public], match: { path: "/{**rest}" }, respond: { status: 200, body: "main" } }
              """
            : """
              server: { watch_config: false }
              listeners:
                - { name: public, address: 127.0.0.1:0 }
                - { name: swap, address: 127.0.0.1:0 }
                - { name: side, address: 127.0.0.1:0 }
              routes:
                - { id: main, listeners: [public, swap], match: { path: "/{**rest}" }, respond: { status: 200, body: "main" } }
                - { id: side, listeners: [side], match: { path: "/{**rest}" }, respond: { status: 200, body: "side" } }
              """;
        await using var proxy = await TestProxy.StartAsync(Yaml(odd: false));
        IPEndPoint swap = proxy.Server.GetEndPoint("swap");
        using var stop = new CancellationTokenSource();
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        int answeredSwap = 0, answeredSide = 0;

        async Task ClientAsync(string listener)
        {
            while (!stop.IsCancellationRequested)
            {
                IPEndPoint endPoint;
                try
                {
                    endPoint = listener == "swap" ? swap : proxy.Server.GetEndPoint(listener);
                }
                catch (ArgumentException)
                {
                    await Task.Delay(1); // "side" is gone until the next reload
                    continue;
                }
                using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
                using var timeout = new CancellationTokenSource(TestDefaults.Timeout);
                try
                {
                    await socket.ConnectAsync(endPoint, timeout.Token);
                }
                catch (SocketException e) when (listener == "side" && e.SocketErrorCode == SocketError.ConnectionRefused)
                {
                    continue; // attempted while the listener was gone: never accepted, so nothing was dropped
                }
                catch (Exception e)
                {
                    failures.Enqueue($"{listener}: connect {e.GetType().Name} {e.Message}");
                    continue;
                }
                string answer;
                try
                {
                    await socket.SendAsync("GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"u8.ToArray(), timeout.Token);
                    var received = new MemoryStream();
                    var buffer = new byte[4096];
                    int n;
                    while ((n = await socket.ReceiveAsync(buffer, timeout.Token)) > 0)
                    {
                        received.Write(buffer, 0, n);
                    }
                    answer = System.Text.Encoding.Latin1.GetString(received.ToArray());
                }
                catch (Exception e)
                {
                    failures.Enqueue($"{listener}: accepted, then {e.GetType().Name} {e.Message}");
                    continue;
                }
                if (!answer.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal))
                {
                    failures.Enqueue($"{listener}: {(answer.Length == 0 ? "closed without an answer" : answer.Split("\r\n")[0])}");
                }
                else if (listener == "side" && !answer.EndsWith("\r\n\r\nside", StringComparison.Ordinal))
                {
                    failures.Enqueue($"side: answered by another route: {answer[(answer.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..]}");
                }
                else
                {
                    Interlocked.Increment(ref listener == "swap" ? ref answeredSwap : ref answeredSide);
                }
            }
        }

        Task[] clients = [ClientAsync("swap"), ClientAsync("swap"), ClientAsync("side"), ClientAsync("side")];
        try
        {
            for (int i = 1; i <= 20; i++)
            {
                ConfigReloadResult result = await proxy.Server.ReloadAsync(Yaml(odd: i % 2 == 1));
                Assert.True(result.Success, string.Join("\n", result.Errors));
                Assert.Equal(swap, proxy.Server.GetEndPoint("swap")); // the same socket throughout
                await Task.Delay(100);
            }
        }
        finally
        {
            stop.Cancel();
            await Task.WhenAll(clients);
        }

        Assert.True(failures.IsEmpty, $"{failures.Count} failed ({answeredSwap} + {answeredSide} answered):\n" + string.Join("\n", failures.Take(20)));
        Assert.True(answeredSwap > 0 && answeredSide > 0, $"answered: swap {answeredSwap}, side {answeredSide}");
    }

    /// <summary>
    /// A connection the removed listener accepted before the reload, whose request comes after it: answered by the
    /// listener's own route (the config it was sent for) with connection: close, not closed unanswered by the drain.
    /// </summary>
    [Fact]
    public async Task Reload_ListenerRemovedBeforeFirstRequestArrives_RequestAnsweredByItsRoute()
    {
        const string second = "  - { name: second, address: 127.0.0.1:0 }";
        const string routes = HelloRoute + """

              - { id: second, listeners: [second], match: { path: /second }, respond: { status: 200, body: "second\n" } }
            """;
        await using var proxy = await TestProxy.StartAsync(Config(routes, extraListeners: second));
        await using var client = await RawClient.ConnectAsync(proxy.Server.GetEndPoint("second"));
        await WaitUntilAsync(() => proxy.Server.OpenConnections == 1, "the connection accepted");

        Assert.True((await proxy.Server.ReloadAsync(Config(HelloRoute))).Success);
        await client.SendAsync("GET /second HTTP/1.1\r\nHost: x\r\n\r\n");

        var response = await client.ReadResponseAsync();
        Assert.Equal((200, "second\n"), (response.Status, response.BodyText));
        Assert.True(response.ConnectionHas("close"));
        await client.AssertClosedAsync();
    }

    /// <summary>A listener whose handler changes keeps its socket, and a keep-alive connection's next request gets the new handler.</summary>
    [Fact]
    public async Task Reload_ListenerHandlerChanged_SameSocketAndNextRequestUsesNewHandler()
    {
        const string echo = "  - { name: swap, address: 127.0.0.1:0, handler: echo }";
        const string proxied = "  - { name: swap, address: 127.0.0.1:0 }";
        await using var proxy = await TestProxy.StartAsync(Config(HelloRoute, extraListeners: proxied));
        IPEndPoint swap = proxy.Server.GetEndPoint("swap");
        await using var client = await RawClient.ConnectAsync(swap);
        await client.SendAsync("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        Assert.Equal("hello\n", (await client.ReadResponseAsync()).BodyText);

        Assert.True((await proxy.Server.ReloadAsync(Config(HelloRoute, extraListeners: echo))).Success);

        Assert.Equal(swap, proxy.Server.GetEndPoint("swap"));
        await client.SendAsync("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        var echoed = await client.ReadResponseAsync();
        Assert.Equal(200, echoed.Status);
        Assert.NotEqual("hello\n", echoed.BodyText); // the echo handler's answer, not the route's
    }

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        while (!condition())
        {
            if (cts.IsCancellationRequested)
            {
                Assert.Fail("Timed out waiting for " + what);
            }
            await Task.Delay(10);
        }
    }

    [Fact]
    public async Task Watch_FileChanged_ReloadsWithinAFewHundredMilliseconds()
    {
        await using var server = await StartFromFileAsync(Config(HelloRoute, server: "server: { watch_config: true }"));
        Assert.True(server.IsWatchingConfig);
        var endPoint = server.GetEndPoint("public");

        await File.WriteAllTextAsync(PathOf("proxy.yaml"), Config(HelloAndByeRoutes, server: "server: { watch_config: true }"));

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (server.LastReload is not { Success: true } && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        Assert.True(server.LastReload is { Success: true }, "the file watch did not reload");
        Assert.Equal((200, "bye\n"), await GetAsync(endPoint, "/bye"));
    }

    /// <summary>
    /// A Kubernetes ConfigMap volume: proxy.yaml is a symlink to ..data/proxy.yaml, ..data a symlink to a timestamped
    /// directory, and an update writes a new directory and swaps ..data by a rename. The file's own name sees no event.
    /// </summary>
    [Fact]
    public async Task Watch_ConfigMapStyleSymlinkSwap_Reloads()
    {
        const string watch = "server: { watch_config: true }";
        Directory.CreateDirectory(PathOf("..2026_11_29_v1"));
        await File.WriteAllTextAsync(PathOf("..2026_11_29_v1/proxy.yaml"), Config(HelloRoute, server: watch));
        File.CreateSymbolicLink(PathOf("..data"), "..2026_11_29_v1");
        File.CreateSymbolicLink(PathOf("proxy.yaml"), "..data/proxy.yaml");
        var server = ProxyServer.FromFile(PathOf("proxy.yaml"));
        await using var _ = server;
        await server.StartAsync();
        Assert.True(server.IsWatchingConfig);
        var endPoint = server.GetEndPoint("public");

        Directory.CreateDirectory(PathOf("..2026_11_29_v2"));
        await File.WriteAllTextAsync(PathOf("..2026_11_29_v2/proxy.yaml"), Config(HelloAndByeRoutes, server: watch));
        File.CreateSymbolicLink(PathOf("..data_tmp"), "..2026_11_29_v2");
        // rename(2), as the kubelet does: File.Move would follow the link to a directory and refuse.
        Assert.Equal(0, Rename(PathOf("..data_tmp"), PathOf("..data")));

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (server.LastReload is not { Success: true } && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        Assert.True(server.LastReload is { Success: true, Changed: true }, "the symlink swap was not seen");
        Assert.Equal((200, "bye\n"), await GetAsync(endPoint, "/bye"));
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "rename", SetLastError = true)]
    private static extern int Rename(string oldPath, string newPath);

    /// <summary>Other files in the config's directory (a log written next to it) do not make the proxy reload.</summary>
    [Fact]
    public async Task Watch_OtherFileInDirectoryChanges_NoReload()
    {
        await using var server = await StartFromFileAsync(Config(HelloRoute, server: "server: { watch_config: true }"));
        Assert.True(server.IsWatchingConfig);

        for (int i = 0; i < 5; i++)
        {
            await File.AppendAllTextAsync(PathOf("access.log"), $"line {i}\n");
            await Task.Delay(100);
        }
        await Task.Delay(1000);

        Assert.Null(server.LastReload);
    }

    [Fact]
    public async Task Watch_DisabledInFile_NotWatching()
    {
        await using var server = await StartFromFileAsync(Config(HelloRoute));

        Assert.False(server.IsWatchingConfig);
    }

    [Fact]
    public async Task Run_Sighup_ReloadsConfig()
    {
        int port = Ports.ClosedPort();
        string Yaml(string routes) => $$"""
            server: { watch_config: false }
            listeners:
              - { name: public, address: "127.0.0.1:{{port}}" }
            routes:
            {{routes}}
            """;
        string path = PathOf("run.yaml");
        await File.WriteAllTextAsync(path, Yaml(HelloRoute));
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var start = new System.Diagnostics.ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { ProxyBinary.DllPath(), "run", "--config", path })
        {
            start.ArgumentList.Add(a);
        }
        using var process = System.Diagnostics.Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            var endPoint = new IPEndPoint(IPAddress.Loopback, port);
            if (!await ProxyBinary.WaitUntilListeningAsync(port, process))
            {
                Assert.Fail($"proxy did not start (exit {(process.HasExited ? process.ExitCode : -1)}):\n{await stdout}\n{await stderr}");
            }
            Assert.Equal(404, (await GetAsync(endPoint, "/bye")).Status);

            await File.WriteAllTextAsync(path, Yaml(HelloAndByeRoutes));
            Assert.Equal(0, ProxyBinary.Kill(process.Id, 1)); // SIGHUP through libc: no kill(1) binary needed

            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            int status = 0;
            while (DateTime.UtcNow < deadline && !process.HasExited && (status = (await GetAsync(endPoint, "/bye")).Status) != 200)
            {
                await Task.Delay(50);
            }
            if (process.HasExited)
            {
                Assert.Fail($"proxy exited {process.ExitCode}:\n{await stdout}\n{await stderr}");
            }
            if (status != 200)
            {
                // Once seen under heavy parallel load and not reproduced: the proxy's own log says whether the signal
                // arrived and what the reload did, so a recurrence explains itself.
                process.Kill();
                Assert.Fail($"SIGHUP did not reload (last status {status}); proxy output:\n{await stdout}\n{await stderr}");
            }
            Assert.False(process.HasExited);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
        }
    }
}
