using System.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// The last answer of a plain TCP connection that closes leaves with its FIN in one segment: the last bytes are held
/// (MSG_MORE, or TCP_CORK where the shutdown comes after awaits) and the send side is shut right after the flush, on
/// both socket engines. The client's own socket tells (<see cref="RawClient.ReceivedSegments"/>): a FIN sent on its own
/// is one more segment without data. Besides it the client receives the SYN-ACK and the ACK of its request: the proxies
/// here run with <c>quick_ack: true</c>, which acknowledges the request at once. By default the answer would carry that
/// ACK unless it took longer than the delayed-ACK timer (QuickAckTests), and a cold path's first answer may.
/// </summary>
public sealed class LastSegmentTests
{
    [Fact]
    public Task ProxiedAnswer_ConnectionClose_LastBytesAndFinInOneSegment() =>
        AssertFinInLastDataSegmentAsync(UpstreamBehaviors.Delayed(TimeSpan.FromMilliseconds(100)),
            Wire.Get("/a", "example.test", "Connection: close"), 200, pumped: false);

    /// <summary>A body pumped as it arrives (chunks 10 ms apart): the flush of the last chunk holds its tail for the FIN.</summary>
    [Fact]
    public Task PumpedChunkedAnswer_ConnectionClose_LastChunkAndFinInOneSegment() =>
        AssertFinInLastDataSegmentAsync(UpstreamBehaviors.Chunked("first", "second", "third"),
            Wire.Get("/c", "example.test", "Connection: close"), 200, pumped: true);

    /// <summary>
    /// A 40 KB Content-Length body (more than one upstream read block holds, less than the client's first window), pumped
    /// in several reads and flushes: only the last flush holds its tail.
    /// </summary>
    [Fact]
    public Task PumpedContentLengthAnswer_ConnectionClose_LastBytesAndFinInOneSegment() =>
        AssertFinInLastDataSegmentAsync(UpstreamBehaviors.Download(40_000),
            Wire.Get("/d", "example.test", "Connection: close"), 200, pumped: true);

    [Fact]
    public Task DirectAnswer_Http10_LastBytesAndFinInOneSegment() =>
        AssertFinInLastDataSegmentAsync(upstreamBehavior: null, "GET /hello HTTP/1.0\r\nHost: example.test\r\n\r\n", 200,
            pumped: false);

    /// <summary>Two Host fields: 400, then a lingering close, whose shutdown is the one right after the answer.</summary>
    [Fact]
    public Task ErrorAnswer_RejectedHead_LastBytesAndFinInOneSegment() =>
        AssertFinInLastDataSegmentAsync(upstreamBehavior: null, "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400,
            pumped: false);

    /// <summary>
    /// Keep-alive answers are never held back: on a connection that stays open each answer arrives at once (a tail
    /// sent with MSG_MORE would wait for the retransmission timer, 200 ms or more, each time).
    /// </summary>
    [Fact]
    public async Task KeepAliveAnswers_AfterConnectionsThatClosed_AreNotHeldBack()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        // Connections that close: their transports go back to the engines' free lists, and the keep-alive connection
        // below most likely runs on one of them.
        for (int i = 0; i < 8; i++)
        {
            await ExchangeAsync(proxy, Wire.Get($"/close{i}", "example.test", "Connection: close"), 200);
        }

        await using RawClient client = await RawClient.ConnectAsync(proxy.Public);
        var clock = Stopwatch.StartNew();
        const int Requests = 20;
        for (int i = 0; i < Requests; i++)
        {
            await client.SendAsync(Wire.Get($"/keep{i}"));
            Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        }
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"{Requests} keep-alive exchanges took {clock.Elapsed}");
    }

    /// <summary>
    /// One request on a new connection (to an upstream with <paramref name="upstreamBehavior"/>, or none); the client must
    /// have received no segment without data but the SYN-ACK and the ACK of its request. <paramref name="pumped"/>: the answer must have come in more than one data segment, or the test would
    /// not be testing the pump's last flush.
    /// </summary>
    private static async Task AssertFinInLastDataSegmentAsync(UpstreamHandler? upstreamBehavior, string request, int status, bool pumped)
    {
        await using var upstream = upstreamBehavior is null ? null : RecordingUpstream.Start(upstreamBehavior);
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig
        {
            BackendPort = upstream?.Port ?? Ports.ClosedPort(),
            PublicListenerExtra = ", quick_ack: true",
        });

        (int segments, int dataSegments) = await ExchangeAsync(proxy, request, status);

        Assert.True(!pumped || dataSegments >= 2, $"{dataSegments} data segments: the body did not come in pieces");
        Assert.True(segments - dataSegments == 2, $"{segments} segments received, {dataSegments} with data: the FIN came alone");
    }

    /// <summary>One request on a new connection, the answer read to the close; then the client socket's counts.</summary>
    private static async Task<(int Segments, int DataSegments)> ExchangeAsync(TestProxy proxy, string request, int status)
    {
        await using RawClient client = await RawClient.ConnectAsync(proxy.Public);
        await client.SendAsync(request);
        Assert.Equal(status, (await client.ReadResponseAsync()).Status);
        await client.ReadToCloseAsync();
        return client.ReceivedSegments();
    }
}
