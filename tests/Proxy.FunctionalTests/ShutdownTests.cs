using System.Diagnostics;
using System.Net.Sockets;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Graceful stop: in-flight requests finish, new connections are refused, idle connections close.</summary>
public sealed class ShutdownTests
{
    [Fact]
    public async Task StopAsync_RequestInFlight_ClientGetsFullResponse()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Delayed(TimeSpan.FromSeconds(1)));
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Wire.Get("/slow"));
        await scenario.Upstream.WaitForRequestAsync();

        var stopping = scenario.Proxy.StopAsync(TimeSpan.FromSeconds(5));
        var response = await client.ReadResponseAsync();
        await stopping;

        Assert.Equal(200, response.Status);
        Assert.Equal("GET /slow", response.BodyText);
        // The connection does not outlive the stop: after its request, it is closed rather than kept alive.
        var rest = await client.ReadToCloseAsync(TimeSpan.FromSeconds(2));
        Assert.True(rest.Closed, "Connection still open after StopAsync completed.");
        Assert.Equal(0, scenario.Proxy.Server.OpenConnections);
    }

    [Fact]
    public async Task StopAsync_WhileStopping_NewConnectionsAreRefused()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Delayed(TimeSpan.FromSeconds(1)));
        var endPoint = scenario.Proxy.Public;
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Wire.Get("/slow"));
        await scenario.Upstream.WaitForRequestAsync();

        var stopping = scenario.Proxy.StopAsync(TimeSpan.FromSeconds(5));
        await Task.Delay(100);

        // Refused outright, or (if the kernel completed the handshake before the listener closed) closed unanswered.
        try
        {
            await using var late = await RawClient.ConnectAsync(endPoint, TimeSpan.FromSeconds(2));
            try
            {
                await late.SendAsync(Wire.Get("/late"));
            }
            catch (IOException)
            {
            }
            var result = await late.ReadToCloseAsync(TimeSpan.FromSeconds(3));
            Assert.True(result.Closed && result.Bytes.Length == 0, "A connection made during shutdown was served: " + result.Text);
        }
        catch (SocketException ex)
        {
            Assert.Equal(SocketError.ConnectionRefused, ex.SocketErrorCode);
        }

        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        await stopping;
        Assert.DoesNotContain(scenario.Upstream.Requests, r => r.Target == "/late");
    }

    [Fact]
    public async Task StopAsync_IdleKeepAliveConnections_AreClosedPromptly()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var idle = new List<RawClient>();
        try
        {
            for (var i = 0; i < 3; i++)
            {
                var client = await scenario.ConnectAsync();
                idle.Add(client);
                await client.SendAsync(Wire.Get($"/idle{i}"));
                Assert.Equal(200, (await client.ReadResponseAsync()).Status);
            }
            await WaitForAsync(() => scenario.Proxy.Server.OpenConnections == 3, "3 open connections");
            var clock = Stopwatch.StartNew();

            await scenario.Proxy.StopAsync(TimeSpan.FromSeconds(5));

            // Idle connections are not waited for: the stop does not run into its timeout.
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"StopAsync took {clock.Elapsed} with only idle connections.");
            foreach (var client in idle)
            {
                Assert.True((await client.ReadToCloseAsync(TimeSpan.FromSeconds(3))).Closed);
            }
            Assert.Equal(0, scenario.Proxy.Server.OpenConnections);
        }
        finally
        {
            foreach (var client in idle)
            {
                await client.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// A connection accepted before the stop whose request arrives after it began is served, with connection: close,
    /// as nginx's old workers serve the connections they accepted; only idle keep-alive connections close at once.
    /// </summary>
    [Fact]
    public async Task StopAsync_ConnectionAcceptedBeforeItsFirstRequest_IsServed()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var endPoint = scenario.Proxy.Public;
        await using var client = await scenario.ConnectAsync();
        await WaitForAsync(() => scenario.Proxy.Server.OpenConnections == 1, "the connection accepted");

        var stopping = scenario.Proxy.StopAsync(TimeSpan.FromSeconds(5));
        // The listener closes before the open connections are told to drain: wait until it refuses, then a little more.
        await WaitForRefusedAsync(endPoint);
        await Task.Delay(100);
        await client.SendAsync(Wire.Get("/late-request"));

        var response = await client.ReadResponseAsync();
        Assert.Equal(200, response.Status);
        Assert.True(response.ConnectionHas("close"));
        Assert.True((await client.ReadToCloseAsync(TimeSpan.FromSeconds(3))).Closed);
        await stopping;
        Assert.Contains(scenario.Upstream.Requests, r => r.Target == "/late-request");
    }

    /// <summary>A 404 no_route answered while draining says "connection: close" and closes, like every other answer then.</summary>
    [Fact]
    public async Task StopAsync_NoRouteRequestWhileDraining_404SaysCloseAndCloses()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok(), c => c with
        {
            Routes = """
                  - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
                """,
        });
        var endPoint = scenario.Proxy.Public;
        await using var client = await scenario.ConnectAsync();
        await WaitForAsync(() => scenario.Proxy.Server.OpenConnections == 1, "the connection accepted");

        var stopping = scenario.Proxy.StopAsync(TimeSpan.FromSeconds(5));
        await WaitForRefusedAsync(endPoint);
        await Task.Delay(100);
        await client.SendAsync(Wire.Get("/nowhere"));

        var response = await client.ReadResponseAsync();
        Assert.Equal(404, response.Status);
        Assert.True(response.ConnectionHas("close"));
        Assert.True((await client.ReadToCloseAsync(TimeSpan.FromSeconds(3))).Closed);
        await stopping;
    }

    private static async Task WaitForRefusedAsync(System.Net.IPEndPoint endPoint)
    {
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        while (true)
        {
            using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await probe.ConnectAsync(endPoint, cts.Token);
            }
            catch (SocketException)
            {
                return;
            }
            await Task.Delay(10, cts.Token);
        }
    }

    [Fact]
    public async Task StopAsync_RequestOutlivesTimeout_ConnectionIsAborted()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Hang());
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Wire.Get("/forever"));
        await scenario.Upstream.WaitForRequestAsync();
        var clock = Stopwatch.StartNew();

        await scenario.Proxy.StopAsync(TimeSpan.FromSeconds(1));

        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(900), TimeSpan.FromSeconds(4));
        var rest = await client.ReadToCloseAsync(TimeSpan.FromSeconds(3));
        Assert.True(rest.Closed, "The stuck connection was left open after the stop timeout.");
        Assert.Equal(0, scenario.Proxy.Server.OpenConnections);
    }

    /// <summary>
    /// DisposeAsync during a graceful stop (an embedder's <c>await using</c> around a StopAsync it started) stops the
    /// wait at once and returns only once the stop has ended: not while connections are still open.
    /// </summary>
    [Fact]
    public async Task DisposeAsync_DuringGracefulStop_AbortsAndReturnsWhenStopped()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Hang());
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Wire.Get("/forever"));
        await scenario.Upstream.WaitForRequestAsync();
        var stopping = scenario.Proxy.Server.StopAsync(TimeSpan.FromSeconds(60));

        await scenario.Proxy.Server.DisposeAsync().AsTask().WaitAsync(TestDefaults.Timeout);

        Assert.True(stopping.IsCompleted, "DisposeAsync returned while the stop was still running.");
        Assert.Equal(0, scenario.Proxy.Server.OpenConnections);
        Assert.True((await client.ReadToCloseAsync(TimeSpan.FromSeconds(3))).Closed);
    }

    /// <summary>A second StopAsync while the first runs completes when the stop has ended, not at once.</summary>
    [Fact]
    public async Task StopAsync_CalledWhileStopping_CompletesWhenTheStopHas()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Delayed(TimeSpan.FromSeconds(1)));
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Wire.Get("/slow"));
        await scenario.Upstream.WaitForRequestAsync();
        var first = scenario.Proxy.Server.StopAsync(TimeSpan.FromSeconds(30));

        await scenario.Proxy.Server.StopAsync(TimeSpan.FromSeconds(30)).WaitAsync(TestDefaults.Timeout);

        Assert.True(first.IsCompleted, "The second StopAsync returned while the first was still running.");
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        Assert.Equal(0, scenario.Proxy.Server.OpenConnections);
    }

    /// <summary>A second caller's abort token cuts the running graceful stop short, as the first caller's would.</summary>
    [Fact]
    public async Task StopAsync_SecondCallerAborts_RunningStopEndsItsWait()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Hang());
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Wire.Get("/forever"));
        await scenario.Upstream.WaitForRequestAsync();
        var first = scenario.Proxy.Server.StopAsync(TimeSpan.FromSeconds(60));
        using var abort = new CancellationTokenSource();
        var second = scenario.Proxy.Server.StopAsync(TimeSpan.FromSeconds(60), abort.Token);

        abort.Cancel();

        await Task.WhenAll(first, second).WaitAsync(TestDefaults.Timeout);
        Assert.True((await client.ReadToCloseAsync(TimeSpan.FromSeconds(3))).Closed);
    }

    [Fact]
    public async Task OpenConnections_ClientsConnectAndLeave_CountFollows()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        Assert.Equal(0, scenario.Proxy.Server.OpenConnections);

        var a = await scenario.ConnectAsync();
        var b = await scenario.ConnectAsync();
        await a.SendAsync(Wire.Get("/a"));
        await b.SendAsync(Wire.Get("/b"));
        await a.ReadResponseAsync();
        await b.ReadResponseAsync();
        await WaitForAsync(() => scenario.Proxy.Server.OpenConnections == 2, "2 open connections");

        await a.DisposeAsync();
        await b.DisposeAsync();
        await WaitForAsync(() => scenario.Proxy.Server.OpenConnections == 0, "0 open connections");
    }

    private static async Task WaitForAsync(Func<bool> condition, string what)
    {
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        while (!condition())
        {
            try
            {
                await Task.Delay(20, cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException("Timed out waiting for " + what);
            }
        }
    }
}
