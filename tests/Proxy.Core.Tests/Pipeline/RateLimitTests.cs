using System.Net;
using System.Text;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>A clock the test moves by hand: one tick per microsecond.</summary>
internal sealed class ManualTime : TimeProvider
{
    public long Now { get; set; } = 1_000_000_000;

    public override long TimestampFrequency => 1_000_000;

    public override long GetTimestamp() => Now;

    /// <summary>Wall-clock time moves with the timestamp (quota windows): <see cref="Start"/> at <see cref="Now"/> = 1e9.</summary>
    public DateTimeOffset Start { get; set; } = new(2026, 11, 28, 12, 0, 0, TimeSpan.Zero);

    public override DateTimeOffset GetUtcNow() => Start.AddTicks((Now - 1_000_000_000) * 10);

    public void Advance(TimeSpan by) => Now += (long)(by.TotalSeconds * TimestampFrequency);
}

public class RateLimitTests
{
    private static RateLimitFilter Filter(ManualTime time, int rate = 10, int window = 1, int burst = 3, RateLimitKeyKind key = RateLimitKeyKind.Header, int capacity = 1024)
        => new(new RateLimitOptions
        {
            PolicyName = "per-client",
            KeyKind = key,
            HeaderName = "x-api-key",
            Rate = rate,
            WindowSeconds = window,
            Burst = burst,
            Capacity = capacity,
        }, time);

    [Fact]
    public void TryAcquire_WithinBurst_AllowsWithDecreasingRemaining()
    {
        var time = new ManualTime();
        var filter = Filter(time);
        for (int expected = 2; expected >= 0; expected--)
        {
            Assert.True(filter.TryAcquire("k"u8, out long remaining, out _, out long retry));
            Assert.Equal(expected, remaining);
            Assert.Equal(0, retry);
        }
    }

    [Fact]
    public void TryAcquire_BurstExhausted_DeniesWithRetryAfterOneInterval()
    {
        var time = new ManualTime();
        var filter = Filter(time);
        for (int i = 0; i < 3; i++)
        {
            Assert.True(filter.TryAcquire("k"u8, out _, out _, out _));
        }
        Assert.False(filter.TryAcquire("k"u8, out long remaining, out long reset, out long retry));
        Assert.Equal(0, remaining);
        // 10/s: T = 100 ms. One request fits again after T; the bucket is full after 3 T.
        Assert.Equal(100_000, retry);
        Assert.Equal(300_000, reset);
    }

    [Fact]
    public void TryAcquire_DeniedRequests_AreNotCharged()
    {
        var time = new ManualTime();
        var filter = Filter(time);
        for (int i = 0; i < 3; i++)
        {
            filter.TryAcquire("k"u8, out _, out _, out _);
        }
        for (int i = 0; i < 100; i++)
        {
            Assert.False(filter.TryAcquire("k"u8, out _, out _, out _));
        }
        time.Advance(TimeSpan.FromMilliseconds(100));
        Assert.True(filter.TryAcquire("k"u8, out _, out _, out _));
        Assert.False(filter.TryAcquire("k"u8, out _, out _, out _));
    }

    [Fact]
    public void TryAcquire_SteadyRate_AllowsOnePerInterval()
    {
        var time = new ManualTime();
        var filter = Filter(time, rate: 10, burst: 1);
        int allowed = 0;
        // 10 seconds in 1 ms steps: exactly 10/s pass, plus the first one at time zero.
        for (int ms = 0; ms < 10_000; ms++)
        {
            if (filter.TryAcquire("k"u8, out _, out _, out _))
            {
                allowed++;
            }
            time.Advance(TimeSpan.FromMilliseconds(1));
        }
        Assert.Equal(100, allowed);
    }

    [Fact]
    public void TryAcquire_AfterRest_RefillsOnlyUpToBurst()
    {
        var time = new ManualTime();
        var filter = Filter(time, rate: 1, window: 60, burst: 2);
        Assert.True(filter.TryAcquire("k"u8, out _, out _, out _));
        time.Advance(TimeSpan.FromHours(5));
        Assert.True(filter.TryAcquire("k"u8, out _, out _, out _));
        Assert.True(filter.TryAcquire("k"u8, out _, out _, out _));
        Assert.False(filter.TryAcquire("k"u8, out _, out _, out long retry));
        Assert.Equal(60_000_000, retry);
    }

    [Fact]
    public void TryAcquire_DifferentKeys_HaveSeparateBudgets()
    {
        var time = new ManualTime();
        var filter = Filter(time, burst: 1);
        Assert.True(filter.TryAcquire("a"u8, out _, out _, out _));
        Assert.False(filter.TryAcquire("a"u8, out _, out _, out _));
        Assert.True(filter.TryAcquire("b"u8, out _, out _, out _));
    }

    [Fact]
    public void GcraTable_MillionDistinctKeys_MemoryBoundedAndNoAllocation()
    {
        var time = new ManualTime();
        var filter = Filter(time, rate: 1, window: 3600, burst: 1, capacity: 4096);
        long memory = filter.Table.MemoryBytes;
        // A heap key (a span cannot be captured), written in place per call: keys 0 to 999,999, each one new.
        byte[] key = new byte[8];
        long next = 0;
        int allowed = 0;
        // A warming quarter and three measured quarters of the million keys.
        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            BitConverter.TryWriteBytes(key, next++);
            if (filter.TryAcquire(key, out _, out _, out _))
            {
                allowed++;
            }
        }, iterations: 250_000);
        Assert.Equal(0, allocated);
        Assert.Equal(memory, filter.Table.MemoryBytes);
        Assert.Equal(4096, filter.Table.Capacity);
        // Every key was new (or evicted and new again): each got its first request through.
        Assert.Equal(1_000_000, allowed);
    }

    [Fact]
    public void GcraTable_FullSet_EvictsRestedEntriesBeforeOwedOnes()
    {
        var time = new ManualTime();
        // Capacity 8: one set, so every key competes for the same entries.
        var filter = Filter(time, rate: 1, window: 3600, burst: 1, capacity: 8);
        Assert.Equal(8, filter.Table.Capacity);
        Span<byte> key = stackalloc byte[8];
        for (int i = 0; i < 7; i++)
        {
            BitConverter.TryWriteBytes(key, (long)i);
            Assert.True(filter.TryAcquire(key, out _, out _, out _));
        }
        time.Advance(TimeSpan.FromHours(2));
        Assert.True(filter.TryAcquire("hot"u8, out _, out _, out _));
        // Seven new keys take the seven rested entries; the hot key's debt survives.
        for (int i = 100; i < 107; i++)
        {
            BitConverter.TryWriteBytes(key, (long)i);
            Assert.True(filter.TryAcquire(key, out _, out _, out _));
        }
        Assert.False(filter.TryAcquire("hot"u8, out _, out _, out _));
    }

    [Fact]
    public void GcraTable_KeyEvictedUnderFlood_StartsOverWithFullBurst()
    {
        var time = new ManualTime();
        var filter = Filter(time, rate: 1, window: 3600, burst: 1, capacity: 8);
        Assert.True(filter.TryAcquire("victim"u8, out _, out _, out _));
        Assert.False(filter.TryAcquire("victim"u8, out _, out _, out _));
        Span<byte> key = stackalloc byte[8];
        for (int i = 0; i < 100; i++)
        {
            time.Advance(TimeSpan.FromMilliseconds(1));
            BitConverter.TryWriteBytes(key, (long)i);
            filter.TryAcquire(key, out _, out _, out _);
        }
        // Documented trade-off: bounded memory means a flood can push an owed key out (fail open for that key).
        Assert.True(filter.TryAcquire("victim"u8, out _, out _, out _));
    }

    [Fact]
    public void OnRequestHeaders_OverLimit_RespondsWith429AndDraftHeaders()
    {
        var time = new ManualTime();
        var filter = Filter(time, rate: 100, burst: 2);
        const string raw = "GET /orders HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n";
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(Context(raw)));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(Context(raw)));
        var context = Context(raw);
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(429, context.ReplyStatus);
        Assert.Equal("rate_limited", context.ReplyDetails);
        Assert.Equal(
            "retry-after: 1\r\nratelimit-policy: \"per-client\";q=100;w=1\r\nratelimit: \"per-client\";r=0;t=1\r\n",
            Encoding.ASCII.GetString(context.ReplyHeaders));
        Assert.Equal("application/problem+json", Encoding.ASCII.GetString(context.ReplyContentType));
        var body = System.Text.Json.JsonDocument.Parse(context.ReplyBody.ToArray()).RootElement;
        Assert.Equal(429, body.GetProperty("status").GetInt32());
        Assert.Equal("Too Many Requests", body.GetProperty("title").GetString());
        Assert.Contains("per-client", body.GetProperty("detail").GetString());
        Assert.Equal(2, filter.AllowedCount);
        Assert.Equal(1, filter.LimitedCount);
    }

    [Fact]
    public void OnRequestHeaders_MissingKeyHeader_SharesAnonymousBucket()
    {
        var time = new ManualTime();
        var filter = Filter(time, burst: 1);
        var first = Context("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        var second = Context("GET / HTTP/1.1\r\nHost: a\r\nX-Other: 1\r\n\r\n");
        var keyed = Context("GET / HTTP/1.1\r\nHost: a\r\nx-api-key: k\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(first));
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(second));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(keyed));
    }

    [Fact]
    public void OnRequestHeaders_AllowedSteadyState_AllocatesNothing()
    {
        var time = new ManualTime();
        var filter = Filter(time, rate: 1_000_000, burst: 1_000_000);
        var context = Context("GET / HTTP/1.1\r\nHost: a\r\nx-api-key: k\r\n\r\n");
        var head = context.Head;
        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            // As the connection does per request: the RateLimit fields of an allowed request start over.
            context.Begin(head, IPAddress.Loopback, "r", "public");
            filter.OnRequestHeaders(context);
        }, iterations: 10_000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over the loop (best of three rounds)");
    }

    internal static RequestContext Context(string raw, IPAddress? client = null, string routeId = "r")
    {
        var head = new RequestHead();
        var bytes = new System.Buffers.ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(raw));
        var status = Http1RequestReader.TryRead(bytes, head, HttpLimits.Default, out _, out _);
        Assert.Equal(HeadStatus.Complete, status);
        var context = new RequestContext();
        context.Begin(head, client ?? IPAddress.Loopback, routeId, "public");
        return context;
    }
}
