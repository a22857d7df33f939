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
}
