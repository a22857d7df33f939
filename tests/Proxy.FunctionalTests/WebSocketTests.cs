using System.Diagnostics;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Upgrade: after the upstream's 101 the proxy tunnels bytes both ways.</summary>
public sealed class WebSocketTests
{
    [Fact]
    public async Task ClientWebSocket_ThroughProxyToKestrel_EchoesTextAndBinary()
    {
        await using var upstream = await KestrelWebSocketUpstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        using var ws = Clients.CreateWebSocket();
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);

        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{proxy.Public.Port}/ws"), cts.Token);
        Assert.Equal(WebSocketState.Open, ws.State);

        await ws.SendAsync("hello through the proxy"u8.ToArray(), WebSocketMessageType.Text, true, cts.Token);
        var (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
        Assert.Equal(WebSocketMessageType.Text, type);
        Assert.Equal("hello through the proxy", Encoding.UTF8.GetString(payload));

        var big = new byte[1024 * 1024];
        new BodyGenerator(big.Length).Fill(big);
        await ws.SendAsync(big, WebSocketMessageType.Binary, true, cts.Token);
        (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
        Assert.Equal(WebSocketMessageType.Binary, type);
        Assert.Equal(big, payload);

        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);
        Assert.Equal(WebSocketState.Closed, ws.State);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, ws.CloseStatus);
    }

    [Fact]
    public async Task ClientWebSocket_ManyMessagesBothWays_ArriveInOrder()
    {
        await using var upstream = await KestrelWebSocketUpstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        using var ws = Clients.CreateWebSocket();
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{proxy.Public.Port}/ws"), cts.Token);

        var receiving = Task.Run(async () =>
        {
            for (var i = 0; i < 200; i++)
            {
                var (_, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
                Assert.Equal($"message {i}", Encoding.UTF8.GetString(payload));
            }
        });
        for (var i = 0; i < 200; i++)
        {
            await ws.SendAsync(Encoding.UTF8.GetBytes($"message {i}"), WebSocketMessageType.Text, true, cts.Token);
        }
        await receiving;
        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, null, cts.Token);
    }

    [Fact]
    public async Task Upgrade_RawClient_ForwardsUpgradeFieldsAndTunnelsBytes()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.SwitchingProtocolsEcho());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/ws", "example.test",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="));
        var response = await client.ReadResponseAsync();
        Assert.Equal(101, response.Status);
        Assert.Equal("websocket", response.Header("upgrade"), ignoreCase: true);
        Assert.True(response.ConnectionHas("upgrade"), response.ToString());
        Assert.Equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", response.Header("sec-websocket-accept"));

        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.True(forwarded.ConnectionHas("upgrade"), forwarded.ToString());
        Assert.Equal("websocket", forwarded.Header("upgrade"), ignoreCase: true);
        Assert.Equal("dGhlIHNhbXBsZSBub25jZQ==", forwarded.Header("sec-websocket-key"));

        // Not HTTP any more: arbitrary bytes, including ones that look like a request, go through untouched.
        var payload = "GET /not-a-request HTTP/1.1\r\n\r\n\0\u0001\u00ff binary";
        await client.SendAsync(payload);
        var echoed = new CollectSink();
        using (var cts = new CancellationTokenSource(TestDefaults.Timeout))
        {
            await client.Reader.ReadExactlyAsync(Encoding.Latin1.GetByteCount(payload), echoed, cts.Token);
        }
        Assert.Equal(payload, Encoding.Latin1.GetString(echoed.ToArray()));

        // Closing our side ends the tunnel: the upstream sees the close, then so do we.
        client.ShutdownSend();
        var rest = await client.ReadToCloseAsync();
        Assert.True(rest.Closed);
        Assert.Empty(rest.Bytes);
        Assert.Single(scenario.Upstream.Requests);
    }

    /// <summary>Sends a WebSocket upgrade and checks the 101: from here on the connection is a tunnel.</summary>
    private static async Task UpgradeAsync(RawClient client)
    {
        await client.SendAsync(Wire.Get("/ws", "example.test", "Connection: Upgrade", "Upgrade: websocket",
            "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="));
        Assert.Equal(101, (await client.ReadResponseAsync()).Status);
    }

    /// <summary>
    /// A tunnel in which no byte moves for the cluster's tunnel_idle_timeout is closed on both sides (nginx closes one
    /// after proxy_read_timeout, Envoy after its stream idle timeout). Before the key existed an idle tunnel, and a
    /// vanished peer's, held both connections forever.
    /// </summary>
    [Fact]
    public async Task Upgrade_IdleTunnel_ClosedOnBothSidesAfterTunnelIdleTimeout()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.SwitchingProtocolsEcho(),
            c => c with { ClusterExtra = "tunnel_idle_timeout: 400ms" });
        await using var client = await scenario.ConnectAsync();
        await UpgradeAsync(client);
        await client.SendAsync("ping");
        var echoed = new CollectSink();
        using (var cts = new CancellationTokenSource(TestDefaults.Timeout))
        {
            await client.Reader.ReadExactlyAsync(4, echoed, cts.Token);
        }

        var clock = Stopwatch.StartNew();
        var rest = await client.ReadToCloseAsync();

        Assert.True(rest.Closed);
        Assert.Empty(rest.Bytes);
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(300), TimeSpan.FromSeconds(5));
        await scenario.Upstream.Connections[0].PeerClosed.WaitAsync(TestDefaults.Timeout);
    }

    [Fact]
    public async Task Upgrade_TunnelMovingBytes_OutlivesTunnelIdleTimeout()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.SwitchingProtocolsEcho(),
            c => c with { ClusterExtra = "tunnel_idle_timeout: 3s" });
        await using var client = await scenario.ConnectAsync();
        await UpgradeAsync(client);

        // Twelve round trips 300 ms apart: 3.6 s in all, longer than the 3 s timeout, each gap a tenth of it (a loaded
        // CI machine once stretched 200 ms gaps past a 600 ms timeout), so the tunnel must stay open throughout.
        var echoed = new CollectSink();
        for (int i = 0; i < 12; i++)
        {
            await client.SendAsync("tick");
            using var cts = new CancellationTokenSource(TestDefaults.Timeout);
            await client.Reader.ReadExactlyAsync(4, echoed, cts.Token);
            await Task.Delay(300);
        }
        Assert.Equal(string.Concat(Enumerable.Repeat("tick", 12)), Encoding.Latin1.GetString(echoed.ToArray()));
    }

    /// <summary>
    /// A tunnel stalled both ways (the client sends and never reads, the upstream echoes: every buffer fills), then the
    /// client resets. Each copy loop was parked on a write that never completed, so neither saw the reset: the client
    /// connection, the upstream connection and the client's connection counts stayed until tunnel_idle_timeout (1 h).
    /// </summary>
    [Fact]
    public async Task Upgrade_ClientResetsTunnelStalledBothWays_BothSidesClosed()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.SwitchingProtocolsEcho());
        var client = await scenario.ConnectAsync();
        await UpgradeAsync(client);
        await FloodUntilStalledAsync(client.Socket);

        client.Socket.LingerState = new LingerOption(true, 0);
        await client.DisposeAsync();

        await WaitForNoConnectionsAsync(scenario);
        await scenario.Upstream.Connections[0].PeerClosed.WaitAsync(TestDefaults.Timeout);
    }

    /// <summary>
    /// An upstream that answers 101 and never reads: the client's bytes fill the tunnel, and the write to the upstream
    /// waits for ever. limits.body_timeout bounds such a send (nginx: proxy_send_timeout); both sides are then closed.
    /// </summary>
    [Fact]
    public async Task Upgrade_UpstreamStopsReading_TunnelClosedAfterBodyTimeout()
    {
        await using var scenario = await ProxyScenario.StartAsync(async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is null)
            {
                return;
            }
            await connection.WriteAsync("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n", ct);
            await Task.Delay(Timeout.Infinite, ct);
        }, c => c with { BodyTimeout = "1s" });
        await using var client = await scenario.ConnectAsync();
        await UpgradeAsync(client);
        await FloodUntilStalledAsync(client.Socket);

        var rest = await client.ReadToCloseAsync(TimeSpan.FromSeconds(20));

        Assert.True(rest.Closed, "the stalled tunnel stayed open");
        await WaitForNoConnectionsAsync(scenario);
        Assert.True(await scenario.Upstream.Connections[0].WaitForPeerCloseAsync(TestDefaults.Timeout));
    }

    /// <summary>Sends into the tunnel without reading until nothing more is taken for two seconds (or the proxy resets it).</summary>
    private static async Task FloodUntilStalledAsync(Socket socket)
    {
        var chunk = new byte[64 * 1024];
        var limit = Stopwatch.StartNew();
        socket.Blocking = false;
        try
        {
            int refused = 0;
            while (refused < 20)
            {
                Assert.True(limit.Elapsed < TimeSpan.FromSeconds(60), "the tunnel kept taking bytes");
                try
                {
                    socket.Send(chunk);
                    refused = 0;
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.WouldBlock)
                {
                    refused++;
                    await Task.Delay(100);
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
                {
                    return; // stalled long enough for the proxy to close the tunnel already
                }
            }
        }
        finally
        {
            socket.Blocking = true;
        }
    }

    private static async Task WaitForNoConnectionsAsync(ProxyScenario scenario)
    {
        var clock = Stopwatch.StartNew();
        while (scenario.Proxy.Server.OpenConnections > 0)
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20),
                $"the proxy still holds {scenario.Proxy.Server.OpenConnections} client connection(s)");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task Upgrade_UpstreamDeclines_ResponseIsForwardedAsHttp()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(Wire.Response(200, "no upgrade for you")));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/ws", "example.test",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="));
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("no upgrade for you", response.BodyText);
    }

    /// <summary>
    /// An upgrade to HTTP/2 is not passed on (h2c smuggling): an upstream that switched would leave a blind tunnel in
    /// which the client's next requests skip routing and policies. The request goes as an ordinary one; an upstream
    /// that answers 101 anyway gets a 502, and nothing after the head reaches it.
    /// </summary>
    [Theory]
    [InlineData("h2c", false)]
    [InlineData("h2c", true)]
    [InlineData("websocket, H2C", true)]
    [InlineData("HTTP/2.0", true)]
    public async Task Upgrade_ToHttp2_NotForwarded(string protocols, bool upstreamSwitches)
    {
        await using var scenario = await ProxyScenario.StartAsync(upstreamSwitches
            ? UpstreamBehaviors.SwitchingProtocolsEcho()
            : UpstreamBehaviors.Fixed(Wire.Response(200, "plain")));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(Wire.Get("/", "example.test",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: " + protocols,
            "HTTP2-Settings: AAMAAABkAAQAAP__"));
        var response = await client.ReadResponseAsync();
        var forwarded = await scenario.Upstream.WaitForRequestAsync();

        Assert.False(forwarded.HasHeader("upgrade"), forwarded.ToString());
        Assert.False(forwarded.HasHeader("http2-settings"), forwarded.ToString());
        Assert.False(forwarded.ConnectionHas("upgrade"), forwarded.ToString());
        Assert.Equal(upstreamSwitches ? 502 : 200, response.Status);
    }

    /// <summary>RFC 9110 section 7.8: a server MUST ignore Upgrade in an HTTP/1.0 request (and section 15.2: it must not
    /// send an HTTP/1.0 client a 1xx, which a 101 is).</summary>
    [Fact]
    public async Task Upgrade_Http10Request_IgnoredAndForwardedAsOrdinaryRequest()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.SwitchingProtocolsEcho());
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync("GET /ws HTTP/1.0\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        var response = await client.ReadResponseAsync();
        var forwarded = await scenario.Upstream.WaitForRequestAsync();

        Assert.False(forwarded.HasHeader("upgrade"), forwarded.ToString());
        Assert.NotEqual(101, response.Status);
        Assert.Equal(502, response.Status);
    }
}
