using System.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// <c>listeners[].defer_accept</c> (Linux TCP_DEFER_ACCEPT, nginx's <c>listen ... deferred</c>): the kernel hands a
/// connection over only once its first bytes arrived, so a handshake alone costs the proxy nothing. Linux only, as
/// the suite is.
/// </summary>
public sealed class DeferAcceptTests
{
    private static string Yaml(bool deferAccept) => $$"""
        server: { watch_config: false }
        listeners:
          - { name: public, address: 127.0.0.1:0, defer_accept: {{(deferAccept ? "true" : "false")}} }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
        """;

    private static async Task WaitForAsync(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(clock.Elapsed < TestDefaults.Timeout, "Timed out waiting for " + what);
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task DeferAccept_ConnectionSendsNothing_NotHandedOverUntilItsRequestArrives()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml(deferAccept: true));
        await using var client = await RawClient.ConnectAsync(proxy.Public);

        await Task.Delay(400);
        Assert.Equal(0, proxy.Server.OpenConnections); // the handshake completed in the kernel; nothing reached us

        await client.SendAsync(Wire.Get("/hello"));
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        Assert.Equal(1, proxy.Server.OpenConnections);
    }

    [Fact]
    public async Task NoDeferAccept_ConnectionSendsNothing_AcceptedAtOnce()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml(deferAccept: false));
        await using var client = await RawClient.ConnectAsync(proxy.Public);

        await WaitForAsync(() => proxy.Server.OpenConnections == 1, "the idle connection to be accepted");
    }

    [Fact]
    public async Task Reload_TurnsDeferAcceptOn_NewConnectionsWaitForTheirBytes()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml(deferAccept: false));
        var result = await proxy.Server.ReloadAsync(Yaml(deferAccept: true));
        Assert.True(result.Success);

        await using var client = await RawClient.ConnectAsync(proxy.Public);
        await Task.Delay(400);
        Assert.Equal(0, proxy.Server.OpenConnections);
        await client.SendAsync(Wire.Get("/hello"));
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
    }
}
