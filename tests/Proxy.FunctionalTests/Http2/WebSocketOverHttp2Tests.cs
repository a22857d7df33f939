using System.Diagnostics;
using System.Buffers.Binary;
using System.Net;
using System.Net.WebSockets;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// WebSockets from HTTP/2 clients (RFC 8441 extended CONNECT) on the cleartext listener (h2c prior knowledge), bridged
/// to HTTP/1.1 upstreams as the RFC 6455 upgrade.
/// </summary>
public sealed class WebSocketOverHttp2Tests
{
    private static readonly (string, string)[] s_webSocketConnect =
        [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":authority", "example.test"), (":path", "/ws"),
         ("sec-websocket-version", "13")];

    private static ClientWebSocket CreateHttp2WebSocket()
    {
        ClientWebSocket ws = Clients.CreateWebSocket();
        ws.Options.HttpVersion = HttpVersion.Version20;
        ws.Options.HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact;
        ws.Options.CollectHttpResponseDetails = true;
        return ws;
    }

    [Fact]
    public async Task ClientWebSocketHttp2_ThroughProxyToHttp11Kestrel_EchoesMessagesAndCloses()
    {
        await using var upstream = await KestrelWebSocketUpstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        using var ws = CreateHttp2WebSocket();
        using var invoker = new HttpMessageInvoker(new SocketsHttpHandler { UseProxy = false });
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);

        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{proxy.Public.Port}/ws"), invoker, cts.Token);
        Assert.Equal(WebSocketState.Open, ws.State);
        Assert.Equal(HttpStatusCode.OK, ws.HttpStatusCode); // RFC 8441 section 5: a 2xx, not 101 (so HTTP/2 it was)

        for (int i = 0; i < 3; i++)
        {
            await ws.SendAsync(Encoding.UTF8.GetBytes($"text {i}"), WebSocketMessageType.Text, true, cts.Token);
            var (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
            Assert.Equal(WebSocketMessageType.Text, type);
            Assert.Equal($"text {i}", Encoding.UTF8.GetString(payload));

            byte[] binary = [0, 1, (byte)i, 0xFF];
            await ws.SendAsync(binary, WebSocketMessageType.Binary, true, cts.Token);
            (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
            Assert.Equal(WebSocketMessageType.Binary, type);
            Assert.Equal(binary, payload);
        }

        // Larger than every HTTP/2 window involved: both directions must be paced by WINDOW_UPDATEs.
        var big = new byte[1024 * 1024];
        new BodyGenerator(big.Length).Fill(big);
        await ws.SendAsync(big, WebSocketMessageType.Binary, true, cts.Token);
        var (bigType, echoed) = await Clients.ReceiveMessageAsync(ws, cts.Token);
        Assert.Equal(WebSocketMessageType.Binary, bigType);
        Assert.Equal(big, echoed);

        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);
        Assert.Equal(WebSocketState.Closed, ws.State);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, ws.CloseStatus);
        Assert.Equal("done", ws.CloseStatusDescription);
    }

    [Fact]
    public async Task ServerSettings_Always_EnableConnectProtocol()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        var settings = await client.WaitForAsync(f => f.Type == Http2FrameType.SETTINGS && !f.Has(Http2Flags.ACK));

        var values = new Dictionary<ushort, uint>();
        for (int i = 0; i + 6 <= settings.Payload.Length; i += 6)
        {
            values[BinaryPrimitives.ReadUInt16BigEndian(settings.Payload.AsSpan(i))] = BinaryPrimitives.ReadUInt32BigEndian(settings.Payload.AsSpan(i + 2));
        }
        Assert.Equal(1u, values[(ushort)Http2SettingsParameter.SETTINGS_ENABLE_CONNECT_PROTOCOL]);
    }

    [Fact]
    public async Task ExtendedConnect_RawFrames_UpstreamSeesUpgradeAndBytesTunnelBothWays()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.SwitchingProtocolsEcho());
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: false, [.. s_webSocketConnect, ("sec-websocket-key", "from-the-client"), ("x-app", "1")]);
        var headers = await client.WaitForAsync(f => f.StreamId == 1 && f.Type is Http2FrameType.HEADERS or Http2FrameType.RST_STREAM);
        Assert.Equal(Http2FrameType.HEADERS, headers.Type);
        Assert.False(headers.Has(Http2Flags.END_STREAM));
        var fields = client.DecodeHeaders(headers);
        Assert.Contains((":status", "200"), fields);
        // The 101's handshake fields are the HTTP/1.1 hop's business (RFC 8441 section 5).
        Assert.DoesNotContain(fields, f => f.Name is "sec-websocket-accept" or "upgrade" or "connection");

        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("GET", forwarded.Method);
        Assert.Equal("/ws", forwarded.Target);
        Assert.True(forwarded.ConnectionHas("upgrade"), forwarded.ToString());
        Assert.Equal("websocket", forwarded.Header("upgrade"));
        Assert.Equal("13", forwarded.Header("sec-websocket-version"));
        Assert.Equal("1", forwarded.Header("x-app"));
        // The proxy's own key (RFC 6455 section 4.1: 16 random octets in base64), not the client's stray one.
        string key = forwarded.Header("sec-websocket-key")!;
        Assert.Equal(16, Convert.FromBase64String(key).Length);

        // Not HTTP any more: bytes that look like a request go through untouched, as DATA both ways.
        byte[] payload = Encoding.Latin1.GetBytes("GET /not-a-request HTTP/1.1\r\n\r\n\0\u0001\u00ff binary");
        await client.SendDataAsync(1, payload, endStream: false);
        var echoed = new MemoryStream();
        while (echoed.Length < payload.Length)
        {
            var data = await client.WaitForAsync(f => f.StreamId == 1 && f.Type is Http2FrameType.DATA or Http2FrameType.RST_STREAM);
            Assert.Equal(Http2FrameType.DATA, data.Type);
            echoed.Write(data.Payload);
        }
        Assert.Equal(payload, echoed.ToArray());

        // END_STREAM from the client closes the tunnel: the upstream connection goes, and the stream ends from our side too.
        await client.SendDataAsync(1, [], endStream: true);
        var end = await client.WaitForAsync(f => f.StreamId == 1 && (f.Has(Http2Flags.END_STREAM) || f.Type == Http2FrameType.RST_STREAM));
        Assert.NotEqual(Http2FrameType.RST_STREAM, end.Type);
        Assert.Single(scenario.Upstream.Requests);
    }

    [Fact]
    public async Task ExtendedConnect_UpstreamDeclines_ResponseRelayedAsHttp()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(Wire.Response(404, "no websocket here")));
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: false, s_webSocketConnect);
        var response = await client.ReadResponseAsync(1);

        Assert.Equal(404, response.Status);
        Assert.Equal("no websocket here", response.BodyText);
    }

    [Fact]
    public async Task ExtendedConnect_UpstreamIgnoresUpgradeWith200_Answers502()
    {
        // A 2xx would tell the HTTP/2 client its tunnel is open (RFC 8441 section 5): the upstream opened none.
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(Wire.Response(200, "plain page")));
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: false, s_webSocketConnect);
        var response = await client.ReadResponseAsync(1);

        Assert.Equal(502, response.Status);
        Assert.Equal("", response.BodyText);
    }

    [Fact]
    public async Task ExtendedConnect_UpstreamAcceptIsWrong_StreamReset()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: bm90LXRoZS1yaWdodC1hbnN3ZXI=\r\n\r\n"));
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: false, s_webSocketConnect);
        var frame = await client.WaitForAsync(f => f.StreamId == 1 && f.Type is Http2FrameType.HEADERS or Http2FrameType.RST_STREAM);

        Assert.Equal(Http2FrameType.RST_STREAM, frame.Type);
        Assert.Equal(Http2ErrorCode.INTERNAL_ERROR, frame.ErrorCode);
    }

    [Theory]
    [InlineData(":path")]
    [InlineData(":scheme")]
    [InlineData(":authority")]
    public async Task ExtendedConnect_MissingPseudoHeader_StreamProtocolError(string missing)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: false, [.. s_webSocketConnect.Where(f => f.Item1 != missing)]);
        var reset = await client.WaitForRstAsync(1);

        Assert.Equal(Http2ErrorCode.PROTOCOL_ERROR, reset.ErrorCode);
        ProxyAssert.UpstreamSawNothing(scenario.Upstream);
        // A stream error only: the connection still serves requests.
        await client.SendHeadersAsync(3, endStream: true, Http2TestClient.Get("/after"));
        Assert.Equal(200, (await client.ReadResponseAsync(3)).Status);
    }

    [Fact]
    public async Task ProtocolPseudoHeader_OnGet_StreamProtocolError()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        await using var client = await Http2TestClient.ConnectAsync(scenario.Proxy.Public);

        await client.SendHeadersAsync(1, endStream: true, [(":method", "GET"), (":protocol", "websocket"), (":scheme", "http"),
            (":authority", "example.test"), (":path", "/ws")]);
        var reset = await client.WaitForRstAsync(1);

        Assert.Equal(Http2ErrorCode.PROTOCOL_ERROR, reset.ErrorCode);
    }
}

/// <summary>WebSockets from HTTP/1.1 clients to HTTP/2 upstreams: the upgrade goes up as an RFC 8441 extended CONNECT.</summary>
public sealed class WebSocketToHttp2UpstreamTests
{
    private static Task<TestProxy> StartProxyAsync(int upstreamPort, string extra = "") => TestProxy.StartAsync($$"""
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: all, match: { path: "/{**rest}" }, cluster: backend }
        clusters:
          backend:
            protocol: h2c
            destinations: [{ address: "http://127.0.0.1:{{upstreamPort}}" }]
            connect_timeout: 5s
            {{extra}}
        """);

    /// <summary>tunnel_idle_timeout on the extended CONNECT path too: the stream is reset and the client's connection closed.</summary>
    [Fact]
    public async Task ClientWebSocketHttp11_ToH2cUpstream_IdleTunnelClosedAfterTunnelIdleTimeout()
    {
        await using var upstream = await KestrelWebSocketUpstream.StartAsync(Microsoft.AspNetCore.Server.Kestrel.Core.HttpProtocols.Http2);
        await using var proxy = await StartProxyAsync(upstream.Port, "tunnel_idle_timeout: 500ms");
        using var ws = Clients.CreateWebSocket();
        ws.Options.KeepAliveInterval = TimeSpan.Zero;
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{proxy.Public.Port}/ws"), cts.Token);
        await ws.SendAsync("one message"u8.ToArray(), WebSocketMessageType.Text, true, cts.Token);
        Assert.Equal("one message", Encoding.UTF8.GetString((await Clients.ReceiveMessageAsync(ws, cts.Token)).Payload));

        var clock = Stopwatch.StartNew();
        await Assert.ThrowsAnyAsync<WebSocketException>(async () => await ws.ReceiveAsync(new byte[16], cts.Token));

        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(400), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task ClientWebSocketHttp11_ThroughProxyToH2cKestrel_EchoesMessagesAndCloses()
    {
        await using var upstream = await KestrelWebSocketUpstream.StartAsync(Microsoft.AspNetCore.Server.Kestrel.Core.HttpProtocols.Http2);
        await using var proxy = await StartProxyAsync(upstream.Port);
        using var ws = Clients.CreateWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);

        // ClientWebSocket checks Sec-WebSocket-Accept against its key: the proxy computed it (RFC 6455 section 4.2.2).
        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{proxy.Public.Port}/ws"), cts.Token);
        Assert.Equal(HttpStatusCode.SwitchingProtocols, ws.HttpStatusCode);
        Assert.Equal("HTTP/2", upstream.LastWebSocketProtocol);

        await ws.SendAsync("hello over extended CONNECT"u8.ToArray(), WebSocketMessageType.Text, true, cts.Token);
        var (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
        Assert.Equal(WebSocketMessageType.Text, type);
        Assert.Equal("hello over extended CONNECT", Encoding.UTF8.GetString(payload));

        var big = new byte[1024 * 1024];
        new BodyGenerator(big.Length).Fill(big);
        await ws.SendAsync(big, WebSocketMessageType.Binary, true, cts.Token);
        (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
        Assert.Equal(WebSocketMessageType.Binary, type);
        Assert.Equal(big, payload);

        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);
        Assert.Equal(WebSocketState.Closed, ws.State);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, ws.CloseStatus);

        // The HTTP/2 connection outlives the tunnel's stream: ordinary requests still go over it.
        using var http = Clients.CreateHttpClient();
        Assert.Equal("kestrel", await http.GetStringAsync(new Uri(proxy.PublicUri, "/other")));
    }

    [Fact]
    public async Task ClientWebSocketHttp2_ThroughProxyToH2cKestrel_ExtendedConnectBothHops()
    {
        await using var upstream = await KestrelWebSocketUpstream.StartAsync(Microsoft.AspNetCore.Server.Kestrel.Core.HttpProtocols.Http2);
        await using var proxy = await StartProxyAsync(upstream.Port);
        using var ws = Clients.CreateWebSocket();
        ws.Options.HttpVersion = HttpVersion.Version20;
        ws.Options.HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact;
        ws.Options.CollectHttpResponseDetails = true;
        using var invoker = new HttpMessageInvoker(new SocketsHttpHandler { UseProxy = false });
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);

        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{proxy.Public.Port}/ws"), invoker, cts.Token);
        Assert.Equal(HttpStatusCode.OK, ws.HttpStatusCode);
        Assert.Equal("HTTP/2", upstream.LastWebSocketProtocol);

        await ws.SendAsync("two extended CONNECTs"u8.ToArray(), WebSocketMessageType.Text, true, cts.Token);
        var (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);
        Assert.Equal(WebSocketMessageType.Text, type);
        Assert.Equal("two extended CONNECTs", Encoding.UTF8.GetString(payload));

        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, null, cts.Token);
        Assert.Equal(WebSocketState.Closed, ws.State);
    }

    [Fact]
    public async Task Upgrade_H2UpstreamWithoutEnableConnectProtocol_Answers502()
    {
        await using var upstream = new Grpc.RawH2Upstream(_ => Grpc.RawH2Behavior.Ok);
        await using var proxy = await StartProxyAsync(upstream.Port);
        await using var client = await RawClient.ConnectAsync(proxy.Public);

        await client.SendAsync(Wire.Get("/ws", "example.test",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="));
        var response = await client.ReadResponseAsync();

        Assert.Equal(502, response.Status);
        Assert.Contains("upstream_websocket_unsupported", response.BodyText, StringComparison.Ordinal);
        Assert.Null(response.Header("upgrade"));
    }
}
