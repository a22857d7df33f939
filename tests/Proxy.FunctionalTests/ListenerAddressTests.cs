using System.Net;
using System.Net.Sockets;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Hosting;

namespace Proxy.FunctionalTests;

/// <summary>
/// One address, one listening socket: a server (or a reload) that binds an address another one listens on fails, as a
/// second process does (exit 1, CliTests.Run_PortInUse_Exits1NamingTheListener), instead of sharing the port (SO_REUSEPORT) and taking
/// part of its connections.
/// </summary>
public sealed class ListenerAddressTests
{
    private static string Yaml(string listeners) => $$"""
        server: { watch_config: false }
        listeners:
        {{listeners}}
        routes:
          - { id: second, match: { path: /who }, respond: { status: 200, body: "second" } }
        """;

    [Fact]
    public async Task Start_AddressHeldByAnotherServer_ThrowsAddressInUse()
    {
        await using var first = await TestProxy.StartAsync(new ProxyConfig { BackendPort = 1 });
        await using var second = ProxyServer.FromYaml(Yaml($"  - {{ name: public, address: \"127.0.0.1:{first.Public.Port}\" }}"));

        // A SocketException still (an embedder's catch keeps working), whose message names the listener and address.
        var e = await Assert.ThrowsAnyAsync<SocketException>(() => second.StartAsync());

        Assert.Equal(SocketError.AddressAlreadyInUse, e.SocketErrorCode);
        Assert.StartsWith($"listener 'public' cannot bind 127.0.0.1:{first.Public.Port}: ", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Reload_ListenerAddedOnAddressHeldByAnotherServer_FailsAndKeepsTheOldConfig()
    {
        await using var first = await TestProxy.StartAsync(new ProxyConfig { BackendPort = 1 });
        const string own = "  - { name: own, address: 127.0.0.1:0 }";
        await using var second = await TestProxy.StartAsync(Yaml(own));
        string version = second.Server.ConfigVersion;

        ConfigReloadResult result = await second.Server.ReloadAsync(
            Yaml(own + $"\n  - {{ name: taken, address: \"127.0.0.1:{first.Public.Port}\" }}"));

        Assert.False(result.Success);
        Assert.Contains(result.Errors, e => e.Contains("listener 'taken' cannot bind", StringComparison.Ordinal));
        Assert.Equal(version, second.Server.ConfigVersion);
        Assert.Throws<ArgumentException>(() => second.Server.GetEndPoint("taken"));
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        Assert.Equal("second", await client.GetStringAsync($"http://127.0.0.1:{second.Server.GetEndPoint("own").Port}/who"));
    }
}
