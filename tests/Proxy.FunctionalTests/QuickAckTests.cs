using System.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// <c>listeners[].quick_ack</c> (Linux TCP_QUICKACK on the listening socket, inherited by the sockets it accepts). By
/// default it is off: a new connection does not acknowledge its request in a segment of its own, the answer carries
/// the ACK (HAProxy's <c>option tcp-smart-accept</c>). The client's socket counts what it received
/// (<see cref="RawClient.ReceivedSegments"/>): the SYN-ACK, the answer, and a lone ACK only with <c>quick_ack: true</c>
/// or an answer slower than the delayed-ACK timer. Linux only, as the suite is.
/// </summary>
public sealed class QuickAckTests
{
    private static string Yaml(bool? quickAck) => $$"""
        server: { watch_config: false }
        listeners:
          - { name: public, address: 127.0.0.1:0{{(quickAck is { } on ? $", quick_ack: {(on ? "true" : "false")}" : "")}} }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
        """;

    /// <summary>One keep-alive request on a new connection; the segments without data the client received by its answer.</summary>
    private static async Task<int> SegmentsWithoutDataAsync(TestProxy proxy)
    {
        await using RawClient client = await RawClient.ConnectAsync(proxy.Public);
        await client.SendAsync(Wire.Get("/hello"));
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
        (int segments, int dataSegments) = client.ReceivedSegments();
        return segments - dataSegments;
    }

    /// <summary>
    /// By default the answer carries the ACK: the SYN-ACK is the only segment without data. Unless the answer took longer
    /// than the delayed-ACK timer (40 ms: a cold path's first answer, a stall in a busy test run), so of a few
    /// connections at least one must show it, and none may show more than the lone ACK.
    /// </summary>
    private static async Task AssertAnswersCarryTheAckAsync(TestProxy proxy)
    {
        var counts = new List<int>();
        for (int i = 0; i < 5; i++)
        {
            counts.Add(await SegmentsWithoutDataAsync(proxy));
        }
        Assert.True(counts.Min() == 1 && counts.Max() <= 2, "segments without data per connection: " + string.Join(", ", counts));
    }

    /// <summary>With <c>quick_ack: true</c> every connection receives the ACK of its request on its own, at once.</summary>
    private static async Task AssertRequestsAcknowledgedAtOnceAsync(TestProxy proxy)
    {
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(2, await SegmentsWithoutDataAsync(proxy)); // the SYN-ACK, then the ACK of the request
        }
    }

    [Theory]
    [InlineData(null)]
    [InlineData(false)]
    public async Task Default_AnswerCarriesTheAckOfTheRequest(bool? quickAck)
    {
        await using var proxy = await TestProxy.StartAsync(Yaml(quickAck));
        await AssertAnswersCarryTheAckAsync(proxy);
    }

    [Fact]
    public async Task QuickAck_RequestAcknowledgedAtOnce()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml(quickAck: true));
        await AssertRequestsAcknowledgedAtOnceAsync(proxy);
    }

    [Fact]
    public async Task Reload_TurnsQuickAckOnAndOff_NewConnectionsFollow()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml(quickAck: null));
        await AssertAnswersCarryTheAckAsync(proxy);

        Assert.True((await proxy.Server.ReloadAsync(Yaml(quickAck: true))).Success);
        await AssertRequestsAcknowledgedAtOnceAsync(proxy);

        Assert.True((await proxy.Server.ReloadAsync(Yaml(quickAck: false))).Success);
        await AssertAnswersCarryTheAckAsync(proxy);
    }

    /// <summary>
    /// An answer slower than the delayed-ACK timer (an upstream 1.5 s late): the request is not left unacknowledged,
    /// the timer's ACK reaches the client (40 ms after the request, at most 200 ms) well before the answer. The wait
    /// for it stops at 1 s, so that a stalled test thread cannot find the answer there already.
    /// </summary>
    [Fact]
    public async Task Default_SlowAnswer_RequestAcknowledgedByTheDelayedAckTimer()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Delayed(TimeSpan.FromMilliseconds(1500)));
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        await using RawClient client = await RawClient.ConnectAsync(proxy.Public);
        var sent = Stopwatch.StartNew();
        await client.SendAsync(Wire.Get("/slow"));

        (int segments, int dataSegments) = client.ReceivedSegments();
        while (segments - dataSegments < 2 && sent.Elapsed < TimeSpan.FromSeconds(1))
        {
            Thread.Sleep(10);
            (segments, dataSegments) = client.ReceivedSegments();
        }
        Assert.Equal(0, dataSegments); // the answer is not there yet
        Assert.Equal(2, segments); // the SYN-ACK and the ACK of the request
        Assert.Equal(200, (await client.ReadResponseAsync()).Status);
    }
}
