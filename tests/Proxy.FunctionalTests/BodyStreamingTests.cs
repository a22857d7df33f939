using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>Runs its tests alone (after the parallel ones), so memory measurements see only this test's work.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MemorySensitiveCollection
{
    public const string Name = "Memory-sensitive";
}

/// <summary>
/// 100 MiB bodies both ways: every byte arrives (count and SHA-256), and the process's memory stays flat, which a
/// proxy buffering whole bodies cannot do. The proxy, the client and the upstream share this process; the latter two
/// stream with fixed buffers, so growth is the proxy's.
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class BodyStreamingTests
{
    private const long Big = 100L * 1024 * 1024;
    private const long MaxGrowth = 64L * 1024 * 1024;
    private static readonly TimeSpan s_transferTimeout = TimeSpan.FromSeconds(60);
    private static readonly Lazy<string> s_bigHash = new(() => BodyGenerator.ExpectedHash(Big));

    private static ProxyConfig AllowBigBodies(ProxyConfig c) => c with { MaxBodyBytes = "200MiB", RequestTimeout = "60s" };

    [Fact]
    public async Task Upload_100MiBContentLength_AllBytesArriveWithFlatMemory()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody(), AllowBigBodies, recordLimit: 4096);
        await WarmUpAsync(scenario, "POST", 1024 * 1024);
        var expected = s_bigHash.Value;
        await using var client = await scenario.ConnectAsync();

        HttpMessage response;
        using (var memory = MemoryWatch.Start())
        {
            await client.SendAsync(Encoding.ASCII.GetBytes($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: {Big}\r\n\r\n"));
            var send = client.SendGeneratedAsync(Big, s_transferTimeout);
            response = await client.ReadResponseAsync("POST", timeout: s_transferTimeout);
            await send;
            memory.Dispose();
            AssertFlat(memory);
        }

        Assert.Equal(200, response.Status);
        Assert.Equal($"{Big} {expected}", response.BodyText);
        var forwarded = scenario.Upstream.Requests.Last();
        Assert.Equal(Big.ToString(), forwarded.Header("content-length"));
    }

    [Fact]
    public async Task Upload_100MiBChunked_AllBytesArriveWithFlatMemory()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.CountBody(), AllowBigBodies, recordLimit: 4096);
        await WarmUpAsync(scenario, "POST", 1024 * 1024);
        var expected = s_bigHash.Value;
        await using var client = await scenario.ConnectAsync();

        HttpMessage response;
        using (var memory = MemoryWatch.Start())
        {
            await client.SendAsync("POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n");
            var send = SendChunkedAsync(client, Big);
            response = await client.ReadResponseAsync("POST", timeout: s_transferTimeout);
            await send;
            memory.Dispose();
            AssertFlat(memory);
        }

        Assert.Equal(200, response.Status);
        Assert.Equal($"{Big} {expected}", response.BodyText);
        Assert.True(scenario.Upstream.Requests.Last().Chunked);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Download_100MiB_AllBytesArriveWithFlatMemory(bool chunked)
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Download(Big, chunked), AllowBigBodies);
        var expected = s_bigHash.Value;
        await using var client = await scenario.ConnectAsync();
        // Warm up on the same connection: the first request pays for JIT and pool growth.
        await client.SendAsync("HEAD /download HTTP/1.1\r\nHost: example.test\r\n\r\n");
        Assert.Equal(200, (await client.ReadResponseAsync("HEAD")).Status);

        using var sink = new HashSink();
        HttpMessage response;
        using (var memory = MemoryWatch.Start())
        {
            await client.SendAsync(Wire.Get("/download"));
            response = await client.ReadResponseAsync(sink: sink, timeout: s_transferTimeout);
            memory.Dispose();
            AssertFlat(memory);
        }

        Assert.Equal(200, response.Status);
        Assert.Equal(chunked, response.Chunked);
        Assert.Equal(Big, sink.Count);
        Assert.Equal(expected, sink.Finish());
    }

    [Fact]
    public async Task Download_SlowClient_ProxyDoesNotBufferAheadUnbounded()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Download(Big), AllowBigBodies);
        await using var client = await scenario.ConnectAsync();

        // Ask for 100 MiB and read nothing for a while: backpressure must stop the upstream, not fill the proxy.
        using var memory = MemoryWatch.Start();
        await client.SendAsync(Wire.Get("/download"));
        await Task.Delay(1500);
        memory.Sample();
        var upstreamConnection = await scenario.Upstream.WaitForConnectionAsync();

        Assert.True(memory.ManagedGrowth < MaxGrowth, "Memory while the client does not read: " + memory);
        // The upstream got stuck writing long before 100 MiB: socket buffers on both sides plus the proxy's bounded pipes.
        Assert.Empty(scenario.Upstream.Errors);
        Assert.False(upstreamConnection.PeerClosed.IsCompleted);
        using var sink = new HashSink();
        var response = await client.ReadResponseAsync(sink: sink, timeout: s_transferTimeout);
        Assert.Equal(Big, sink.Count);
        Assert.Equal(200, response.Status);
    }

    private static async Task SendChunkedAsync(RawClient client, long length)
    {
        using var cts = new CancellationTokenSource(s_transferTimeout);
        var generator = new BodyGenerator(length);
        // Varying chunk sizes so chunk headers land anywhere relative to the proxy's read boundaries.
        var buffer = new byte[70_000 + 16];
        var sizes = new[] { 70_000, 1, 4096, 33_333, 65_536 };
        var i = 0;
        while (generator.Remaining > 0)
        {
            var size = (int)Math.Min(sizes[i++ % sizes.Length], generator.Remaining);
            var header = Encoding.ASCII.GetBytes($"{size:x}\r\n");
            header.CopyTo(buffer, 0);
            generator.Fill(buffer.AsSpan(header.Length, size));
            buffer[header.Length + size] = (byte)'\r';
            buffer[header.Length + size + 1] = (byte)'\n';
            await client.SendAsync(buffer.AsMemory(0, header.Length + size + 2), s_transferTimeout);
        }
        await client.SendAsync("0\r\n\r\n"u8.ToArray(), s_transferTimeout);
    }

    private static async Task WarmUpAsync(ProxyScenario scenario, string method, long length)
    {
        await using var client = await scenario.ConnectAsync();
        await client.SendAsync(Encoding.ASCII.GetBytes($"{method} /warmup HTTP/1.1\r\nHost: example.test\r\nContent-Length: {length}\r\n\r\n"));
        await client.SendGeneratedAsync(length, TestDefaults.Timeout);
        Assert.Equal(200, (await client.ReadResponseAsync(method)).Status);
    }

    private static void AssertFlat(MemoryWatch memory)
    {
        Assert.True(memory.ManagedGrowth < MaxGrowth, "Managed heap grew too much: " + memory);
        Assert.True(memory.WorkingSetGrowth < MaxGrowth, "Working set grew too much: " + memory);
    }
}
