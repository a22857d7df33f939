using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary><c>server.max_connections</c> caps open client connections across listeners.</summary>
public sealed class ConnectionLimitTests
{
    [Fact]
    public async Task Accept_AtMaxConnections_NextConnectionWaitsUntilOneCloses()
    {
        string yaml = "server: { max_connections: 2 }\n" + new ProxyConfig { BackendPort = Ports.ClosedPort() }.Render();
        await using var proxy = await TestProxy.StartAsync(yaml);
        var first = await RawClient.ConnectAsync(proxy.Public);
        await using var second = await RawClient.ConnectAsync(proxy.Public);
        await first.SendAsync(Wire.Get("/hello"));
        Assert.Equal(200, (await first.ReadResponseAsync()).Status);
        await second.SendAsync(Wire.Get("/hello"));
        Assert.Equal(200, (await second.ReadResponseAsync()).Status);

        // The third connection is left in the backlog: its request is not answered while two are open.
        await using var third = await RawClient.ConnectAsync(proxy.Public);
        await third.SendAsync(Wire.Get("/hello"));
        var early = third.ReadResponseAsync(timeout: TimeSpan.FromSeconds(10));
        await Task.Delay(500);
        Assert.False(early.IsCompleted, "A connection over the cap was served.");
        Assert.Equal(2, proxy.Server.OpenConnections);

        await first.DisposeAsync();

        Assert.Equal(200, (await early).Status);
    }

    [Fact]
    public async Task Accept_IdleAdminConnectionsPastMaxConnections_PublicListenerStillServes()
    {
        string yaml = "server: { max_connections: 2 }\nadmin: { address: \"127.0.0.1:0\", token: tok }\n"
            + new ProxyConfig { BackendPort = Ports.ClosedPort(), HeaderTimeout = "120s" }.Render();
        await using var proxy = await TestProxy.StartAsync(yaml);
        var admin = proxy.Server.GetEndPoint("admin");
        var idle = new List<RawClient>();
        try
        {
            for (int i = 0; i < 5; i++)
            {
                idle.Add(await RawClient.ConnectAsync(admin));
            }
            await WaitForAsync(() => proxy.Server.OpenConnections == 5);

            // Admin connections are not counted against server.max_connections: both public ones are served. (Before,
            // the second one waited in the backlog until the idle admin connections left, here at header_timeout.)
            await using var first = await RawClient.ConnectAsync(proxy.Public);
            await using var second = await RawClient.ConnectAsync(proxy.Public);
            await first.SendAsync(Wire.Get("/hello"));
            Assert.Equal(200, (await first.ReadResponseAsync(timeout: TimeSpan.FromSeconds(20))).Status);
            await second.SendAsync(Wire.Get("/hello"));
            Assert.Equal(200, (await second.ReadResponseAsync(timeout: TimeSpan.FromSeconds(20))).Status);
        }
        finally
        {
            foreach (var c in idle)
            {
                await c.DisposeAsync();
            }
        }
    }

    /// <summary>The admin listener's own cap (AdminModel.MaxConnections, documented in configuration.md#admin).</summary>
    private const int AdminCap = 64;

    [Fact]
    public async Task Accept_AdminConnectionsPastAdminCap_ClosedAtAccept()
    {
        // The idle connections must outlive the test: a header_timeout far beyond it.
        string yaml = "admin: { address: \"127.0.0.1:0\" }\n" + new ProxyConfig { BackendPort = Ports.ClosedPort(), HeaderTimeout = "120s" }.Render();
        await using var proxy = await TestProxy.StartAsync(yaml);
        var admin = proxy.Server.GetEndPoint("admin");
        var idle = new List<RawClient>();
        try
        {
            for (int i = 0; i < AdminCap; i++)
            {
                idle.Add(await RawClient.ConnectAsync(admin));
            }
            await WaitForAsync(() => proxy.Server.OpenConnections == AdminCap);

            // One more is accepted and closed unanswered; the cap holds.
            await using var extra = await RawClient.ConnectAsync(admin);
            await extra.SendAsync(Wire.Get("/healthz"));
            var refused = await extra.ReadToCloseAsync(TimeSpan.FromSeconds(20));
            Assert.True(refused.Closed, "The admin connection past the cap stayed open.");
            Assert.Empty(refused.Bytes);
            Assert.Equal(AdminCap, proxy.Server.OpenConnections);

            // The public listener is unaffected, and once an admin connection leaves a new one is served.
            var pub = await RawClient.ConnectAsync(proxy.Public);
            await pub.SendAsync(Wire.Get("/hello"));
            Assert.Equal(200, (await pub.ReadResponseAsync(timeout: TimeSpan.FromSeconds(20))).Status);
            await pub.DisposeAsync();
            await idle[0].DisposeAsync();
            idle.RemoveAt(0);
            await WaitForAsync(() => proxy.Server.OpenConnections < AdminCap);
            await using var next = await RawClient.ConnectAsync(admin);
            await next.SendAsync(Wire.Get("/healthz"));
            Assert.Equal(200, (await next.ReadResponseAsync(timeout: TimeSpan.FromSeconds(20))).Status);
        }
        finally
        {
            foreach (var c in idle)
            {
                await c.DisposeAsync();
            }
        }
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "The condition did not hold within 20 s.");
            await Task.Delay(20);
        }
    }
}
