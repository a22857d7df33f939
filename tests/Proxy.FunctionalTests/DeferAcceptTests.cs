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

    /// <summary>
    /// No connection reached the proxy 300 ms after the connect. The kernel defers a silent connection for one SYN-ACK
    /// retransmission (about a second), then hands it over anyway, so the look must come well before that. A blocking
    /// sleep, not Task.Delay: in a busy test run the thread pool resumed a 400 ms delay over a second late (seen in CI),
    /// after the kernel had handed the connection over. Should even this look come after 900 ms, it proves nothing either
    /// way and is skipped.
    /// </summary>
    private static void AssertNotHandedOver(TestProxy proxy, Stopwatch connected)
    {
        Thread.Sleep(300);
        int open = proxy.Server.OpenConnections;
        if (connected.Elapsed < TimeSpan.FromMilliseconds(900))
        {
            Assert.Equal(0, open);
        }
    }

    [Fact]
    public async Task DeferAccept_ConnectionSendsNothing_NotHandedOverUntilItsRequestArrives()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml(deferAccept: true));
        var connected = Stopwatch.StartNew();
        await using var client = await RawClient.ConnectAsync(proxy.Public);

        // The handshake completed in the kernel; nothing reached us.
        AssertNotHandedOver(proxy, connected);

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

        var connected = Stopwatch.StartNew();
        await using var client = await RawClient.ConnectAsync(proxy.Public);
        AssertNotHandedOver(proxy, connected);
        await client.SendAsync(Wire.Get("/hello"));
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
    }
}
