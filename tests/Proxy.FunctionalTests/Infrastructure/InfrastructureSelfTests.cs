using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// Tests of the test infrastructure itself, without the proxy: clients talk straight to the scripted upstreams.
/// If these fail, the functional tests' verdicts cannot be trusted.
/// </summary>
public sealed class InfrastructureSelfTests
{
    private static IPEndPoint Loopback(int port) => new(IPAddress.Loopback, port);

    /// <summary>The host's pool starts with threads to spare for the tests that block one (<see cref="TestHostThreadPool"/>).</summary>
    [Fact]
    public void TestHost_ThreadPoolStartsWithThreadsToSpare()
    {
        ThreadPool.GetMinThreads(out int workers, out _);
        Assert.True(workers >= 32, $"minimum worker threads {workers}");
    }

    [Fact]
    public async Task RecordingUpstream_OkBehaviour_AnswersAndRecordsRequest()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal("POST /a?b=1", response.BodyText);
        var request = await upstream.WaitForRequestAsync();
        Assert.Equal("hello", request.BodyText);
        Assert.Equal("x", request.Header("host"));
        Assert.StartsWith("POST /a?b=1 HTTP/1.1\r\n", upstream.ReceivedText, StringComparison.Ordinal);
        Assert.Equal(1, upstream.ConnectionCount);
    }

    [Fact]
    public async Task RecordingUpstream_PipelinedRequests_AnsweredInOrderOnOneConnection()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync(Wire.Get("/1") + Wire.Get("/2") + Wire.Get("/3"));

        Assert.Equal("GET /1", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal("GET /2", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal("GET /3", (await client.ReadResponseAsync()).BodyText);
        Assert.Equal(1, upstream.ConnectionCount);
    }

    [Fact]
    public async Task WireParser_ChunkedRequestWithTrailer_DecodesBodyAndTrailer()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n");
        await client.ReadResponseAsync();

        var request = await upstream.WaitForRequestAsync();
        Assert.True(request.Chunked);
        Assert.Equal("hello world", request.BodyText);
        Assert.Equal([5L, 6L], request.ChunkSizes);
        Assert.Equal("1", request.Trailers.Single(t => t.Key == "X-T").Value);
    }

    [Fact]
    public async Task WireParser_MalformedChunkSize_RecordsUpstreamError()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        var closed = await client.ReadToCloseAsync();

        Assert.True(closed.Closed);
        var connection = await upstream.WaitForConnectionAsync();
        await connection.PeerClosed.WaitAsync(TestDefaults.Timeout);
        await WaitUntilAsync(() => upstream.Errors.Length > 0);
        Assert.IsType<InvalidDataException>(upstream.Errors[0]);
    }

    [Fact]
    public async Task WireParser_ResponseWithInterimAndChunkedBody_ReadsBoth()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Fixed(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync(Wire.Get("/"));
        var response = await client.ReadResponseAsync();

        Assert.Equal(200, response.Status);
        Assert.Equal(103, Assert.Single(response.Interim).Status);
        Assert.Equal("abc", response.BodyText);
        Assert.True(response.Chunked);
    }

    [Fact]
    public async Task WireParser_HeadResponseWithContentLength_ReadsNoBody()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Fixed("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"));
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        var response = await client.ReadResponseAsync("HEAD");

        Assert.Equal(200, response.Status);
        Assert.Equal(0, response.BodyLength);
    }

    [Fact]
    public async Task CloseDelimitedBehaviour_RawClient_ReadsBodyUntilClose()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.CloseDelimited("until the end"));
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync(Wire.Get("/"));
        var response = await client.ReadResponseAsync();

        Assert.True(response.CloseDelimited);
        Assert.Equal("until the end", response.BodyText);
    }

    [Fact]
    public async Task ResetBehaviour_RawClient_SeesResetAsClose()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.ResetAfterRequest());
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync(Wire.Get("/"));
        var result = await client.ReadToCloseAsync();

        Assert.True(result.Closed);
        Assert.True(result.Reset);
        Assert.Empty(result.Bytes);
    }

    [Fact]
    public async Task HangBehaviour_RawClient_TimesOutWithConnectionOpen()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Hang());
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync(Wire.Get("/"));

        await client.AssertOpenAsync(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAsync<TimeoutException>(() => client.ReadResponseAsync(timeout: TimeSpan.FromMilliseconds(200)));
    }

    [Fact]
    public async Task SwitchingProtocolsEcho_RawClient_EchoesBytesAfter101()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.SwitchingProtocolsEcho());
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync(Wire.Get("/ws", "x", "Connection: Upgrade", "Upgrade: websocket") + "early");
        var response = await client.ReadResponseAsync();
        Assert.Equal(101, response.Status);
        await client.SendAsync("-late");
        client.ShutdownSend();

        var rest = await client.ReadToCloseAsync();
        Assert.Equal("early-late", rest.Text);
    }

    [Fact]
    public async Task CountBodyAndGenerator_LargeUpload_CountAndHashMatch()
    {
        const long length = 3 * 1024 * 1024 + 7;
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.CountBody(), recordLimit: 4096);
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));

        await client.SendAsync($"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
        await client.SendGeneratedAsync(length, TestDefaults.Timeout);
        var response = await client.ReadResponseAsync();

        Assert.Equal($"{length} {BodyGenerator.ExpectedHash(length)}", response.BodyText);
        Assert.Equal(4096, upstream.Connections[0].Received.Length);
        Assert.True(upstream.Connections[0].ReceivedCount > length);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DownloadBehaviour_HashSink_MatchesGenerator(bool chunked)
    {
        const long length = 2 * 1024 * 1024 + 3;
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Download(length, chunked));
        await using var client = await RawClient.ConnectAsync(Loopback(upstream.Port));
        using var sink = new HashSink();

        await client.SendAsync(Wire.Get("/down"));
        var response = await client.ReadResponseAsync(sink: sink);

        Assert.Equal(chunked, response.Chunked);
        Assert.Equal(length, sink.Count);
        Assert.Equal(BodyGenerator.ExpectedHash(length), sink.Finish());
    }

    [Fact]
    public void BodyGenerator_SplitFills_MatchOneFill()
    {
        var whole = new byte[1000];
        new BodyGenerator(1000).Fill(whole);
        var split = new byte[1000];
        var generator = new BodyGenerator(1000);
        generator.Fill(split.AsSpan(0, 13));
        generator.Fill(split.AsSpan(13, 500));
        generator.Fill(split.AsSpan(513));

        Assert.Equal(whole, split);
        Assert.Equal(0, generator.Remaining);
        Assert.NotEqual(whole[..8], whole[8..16]);
    }

    [Fact]
    public async Task HttpClient_AgainstRecordingUpstream_ReusesOneConnection()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        using var http = Clients.CreateHttpClient();

        for (var i = 0; i < 3; i++)
        {
            var body = await http.GetStringAsync($"http://127.0.0.1:{upstream.Port}/n{i}");
            Assert.Equal($"GET /n{i}", body);
        }

        Assert.Equal(1, upstream.ConnectionCount);
    }

    [Fact]
    public async Task Curl_AgainstRecordingUpstream_SendsChunkedUpload()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());

        var result = await Curl.RunAsync(
            ["-H", "Transfer-Encoding: chunked", "--data-binary", "@-", $"http://127.0.0.1:{upstream.Port}/curl"],
            Encoding.ASCII.GetBytes("from stdin"));

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("POST /curl", result.StdoutText);
        var request = await upstream.WaitForRequestAsync();
        Assert.True(request.Chunked);
        Assert.Equal("from stdin", request.BodyText);
    }

    [Fact]
    public async Task KestrelWebSocketUpstream_ClientWebSocket_EchoesMessages()
    {
        await using var upstream = await KestrelWebSocketUpstream.StartAsync();
        using var ws = Clients.CreateWebSocket();
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);

        await ws.ConnectAsync(new Uri($"ws://127.0.0.1:{upstream.Port}/ws"), cts.Token);
        await ws.SendAsync("ping"u8.ToArray(), WebSocketMessageType.Text, true, cts.Token);
        var (type, payload) = await Clients.ReceiveMessageAsync(ws, cts.Token);

        Assert.Equal(WebSocketMessageType.Text, type);
        Assert.Equal("ping", Encoding.UTF8.GetString(payload));
        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", cts.Token);
    }

    [Fact]
    public void MemoryWatch_BufferHeldDuringWatch_ReportsGrowth()
    {
        byte[] held;
        using (var memory = MemoryWatch.Start())
        {
            held = new byte[100 * 1024 * 1024];
            Array.Fill(held, (byte)1);
            memory.Sample();
            memory.Dispose();
            Assert.True(memory.ManagedGrowth > 64L * 1024 * 1024, memory.ToString());
            Assert.True(memory.WorkingSetGrowth > 64L * 1024 * 1024, memory.ToString());
        }
        GC.KeepAlive(held);
    }

    [Fact]
    public async Task RawClient_ClosedPort_ConnectIsRefused()
    {
        var port = Ports.ClosedPort();

        var ex = await Assert.ThrowsAnyAsync<SocketException>(() => RawClient.ConnectAsync(Loopback(port)));
        Assert.Equal(SocketError.ConnectionRefused, ex.SocketErrorCode);
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        while (!condition())
        {
            await Task.Delay(20, cts.Token);
        }
    }

    [Fact]
    public void ClusterYaml_EveryPart_IndentsClusterKeysUnderBackend()
    {
        string yaml = ClusterYaml.Render(ClusterYaml.Address("http://127.0.0.1:1"), "h2c", "  connect_timeout: 1s\n\nretry: { attempts: 1 }", "admin: { address: \"127.0.0.1:0\" }");

        Assert.Equal("""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend:
                protocol: h2c
                destinations: [{ address: "http://127.0.0.1:1" }]
                connect_timeout: 1s
                retry: { attempts: 1 }
            admin: { address: "127.0.0.1:0" }

            """.ReplaceLineEndings("\n"), yaml);
    }
}
