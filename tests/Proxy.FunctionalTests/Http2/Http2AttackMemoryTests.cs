using System.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;
using Proxy.Http2.HPack;
using Xunit.Abstractions;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// Every HTTP/2 attack of <see cref="Http2AttackTests"/>, repeated on fresh connections against one in-process proxy:
/// whatever an attacked connection allocated (HPACK tables, header buffers, stream state, timers) must be given back
/// when the connection is closed. Alone in its collection so the heap measured is only the proxy's and this test's.
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class Http2AttackMemoryTests(ITestOutputHelper output)
{
    /// <summary>Retained heap growth allowed between warm-up and end: pools, JIT and timer-queue noise stay far below it.</summary>
    private const long GrowthBound = 2 * 1024 * 1024;

    private const int RepeatsPerRound = 10;
    private const int Rounds = 4;
    private static readonly TimeSpan TimeBudget = TimeSpan.FromSeconds(15);

    private static readonly string[] s_attacks =
        ["rapid-reset", "continuation-flood", "hpack-bomb", "settings-flood", "ping-flood", "empty-data-flood", "zero-window"];

    [Fact]
    public async Task Http2Attacks_RepeatedManyTimes_ProxyAnswersAndRetainedHeapFlat()
    {
        string limits = "max_header_list_size: 32KiB, rapid_reset: { max: 10, window: 10s }, max_control_frames_per_second: 50, "
            + "send_stall_timeout: 1s";
        await using var proxy = await TestProxy.StartAsync(
            Http2ServerTests.WithHttp2Limits(new ProxyConfig { BackendPort = Ports.ClosedPort() }, limits));

        // Warm-up: every code path (and its pools) used once before the baseline.
        await RunRoundAsync(proxy, repeats: 2);
        await AssertAnswersAsync(proxy);
        long atWarmup = await RetainedWhenIdleAsync(proxy);

        var clock = Stopwatch.StartNew();
        int rounds = 0;
        while (rounds < Rounds && clock.Elapsed < TimeBudget)
        {
            await RunRoundAsync(proxy, RepeatsPerRound);
            rounds++;
        }
        await AssertAnswersAsync(proxy);
        long atEnd = await RetainedWhenIdleAsync(proxy);

        int attacks = rounds * RepeatsPerRound * s_attacks.Length;
        output.WriteLine($"{attacks} attack connections in {rounds} rounds, {clock.Elapsed.TotalSeconds:0.0} s; retained after full GC "
            + $"{atWarmup / 1024} KiB at warm-up -> {atEnd / 1024} KiB at end");
        Assert.True(rounds >= 2, $"Only {rounds} round(s) within {TimeBudget}: too few attacks to judge.");
        // A leak of a few hundred bytes per attacked connection (a stream table, an HPACK table, a timer) shows up as
        // more than 2 MiB over the hundreds of connections above.
        Assert.True(atEnd - atWarmup < GrowthBound,
            $"Retained heap grew from {atWarmup / 1024} KiB to {atEnd / 1024} KiB after {attacks} attack connections.");
    }

    private static async Task RunRoundAsync(TestProxy proxy, int repeats)
    {
        foreach (string attack in s_attacks)
        {
            if (attack == "zero-window")
            {
                // Each stall lasts the stall timeout: run them side by side.
                await Task.WhenAll(Enumerable.Range(0, repeats).Select(_ => AttackAsync(proxy, attack)));
                continue;
            }
            for (int i = 0; i < repeats; i++)
            {
                await AttackAsync(proxy, attack);
            }
        }
    }

    /// <summary>One attack on a new connection, until the proxy's answer to it (GOAWAY, or RST_STREAM for the stall).</summary>
    private static async Task AttackAsync(TestProxy proxy, string attack)
    {
        bool zeroWindow = attack == "zero-window";
        await using var client = zeroWindow
            ? await Http2TestClient.ConnectAsync(proxy.Public, new Http2Setting(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, 0))
            : await Http2TestClient.ConnectAsync(proxy.Public);
        Http2ErrorCode expected = Http2ErrorCode.ENHANCE_YOUR_CALM;
        switch (attack)
        {
            case "rapid-reset":
                await SendIgnoringCloseAsync(async () =>
                {
                    for (int id = 1; id < 80; id += 2)
                    {
                        await client.SendHeadersAsync(id, endStream: false, Post("/hello"));
                        await client.SendRstAsync(id);
                    }
                });
                break;
            case "continuation-flood":
                await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.None, 1, client.Encode(Http2TestClient.Get("/hello")));
                await SendIgnoringCloseAsync(async () =>
                {
                    for (int i = 0; i < 200; i++)
                    {
                        await client.SendFrameAsync(Http2FrameType.CONTINUATION, Http2Flags.None, 1, client.Encode(("x-a", "b")));
                    }
                });
                break;
            case "hpack-bomb":
                var fields = new List<(string, string)>(Http2TestClient.Get("/hello"));
                for (int i = 0; i < 31; i++)
                {
                    fields.Add(("x-bomb", new string('b', 4000)));
                }
                await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, 1,
                    client.Encode(HPackIndexing.Auto, [.. fields]));
                expected = Http2ErrorCode.COMPRESSION_ERROR;
                break;
            case "settings-flood":
            case "ping-flood":
            case "empty-data-flood":
                if (attack == "empty-data-flood")
                {
                    await client.SendHeadersAsync(1, endStream: false, Post("/hello"));
                }
                await SendIgnoringCloseAsync(async () =>
                {
                    for (int i = 0; i < 200; i++)
                    {
                        await (attack switch
                        {
                            "settings-flood" => client.SendFrameAsync(Http2FrameType.SETTINGS, Http2Flags.None, 0, []),
                            "ping-flood" => client.SendFrameAsync(Http2FrameType.PING, Http2Flags.None, 0, new byte[8]),
                            _ => client.SendFrameAsync(Http2FrameType.DATA, Http2Flags.None, 1, []),
                        });
                    }
                });
                break;
            default:
                client.AutoWindowUpdate = false;
                await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/hello"));
                var reset = await client.WaitForRstAsync(1, TimeSpan.FromSeconds(8));
                Assert.Equal(Http2ErrorCode.CANCEL, reset.ErrorCode);
                return;
        }
        var goAway = await client.WaitForGoAwayAsync();
        Assert.True(goAway.ErrorCode == expected, $"{attack}: GOAWAY {goAway.ErrorCode}, expected {expected}");
    }

    private static async Task AssertAnswersAsync(TestProxy proxy)
    {
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        await client.SendHeadersAsync(1, endStream: true, Http2TestClient.Get("/hello"));
        var response = await client.ReadResponseAsync(1);
        Assert.Equal(200, response.Status);
        Assert.Equal("hello\n", response.BodyText);
    }

    private static async Task SendIgnoringCloseAsync(Func<Task> send)
    {
        try
        {
            await send();
        }
        catch (IOException)
        {
            // The proxy may close the connection mid-flood (GOAWAY then close): the attack has been answered.
        }
    }

    private static (string, string)[] Post(string path) =>
        [(":method", "POST"), (":scheme", "http"), (":authority", "example.test"), (":path", path)];

    /// <summary>Measured once the proxy has seen every client close (a closing connection still holds its state).</summary>
    private static async Task<long> RetainedWhenIdleAsync(TestProxy proxy)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (proxy.Server.OpenConnections > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        Assert.Equal(0, proxy.Server.OpenConnections);
        return Retained();
    }

    private static long Retained()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        return GC.GetTotalMemory(false);
    }
}
