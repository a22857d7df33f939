using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Proxy.Diagnostics;
using Proxy.Diagnostics.AccessLog;
using Proxy.Diagnostics.Insights;

namespace Proxy.Core.Tests.Observability;

public sealed class AccessLogAndInsightsTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-access-log-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void Ring_Full_RefusesUntilConsumed_InOrder()
    {
        var ring = new AccessLogRing(4);
        for (int i = 0; i < 4; i++)
        {
            Assert.True(ring.TryClaim(out long p));
            ring.RecordAt(p).Status = 200 + i;
            ring.Publish(p);
        }
        Assert.False(ring.TryClaim(out _));
        Assert.True(ring.TryPeek(out long first));
        Assert.Equal(200, ring.RecordAt(first).Status);
        ring.Release(first);
        Assert.True(ring.TryClaim(out long again));
        ring.Publish(again);
        for (int expected = 201; expected <= 204; expected++)
        {
            Assert.True(ring.TryPeek(out long p));
            Assert.Equal(expected == 204 ? 0 : expected, ring.RecordAt(p).Status);
            ring.Release(p);
        }
        Assert.False(ring.TryPeek(out _));
    }

    [Fact]
    public void Ring_ClaimedButNotPublished_ConsumerWaits()
    {
        var ring = new AccessLogRing(4);
        Assert.True(ring.TryClaim(out long a));
        Assert.True(ring.TryClaim(out long b));
        ring.Publish(b);
        Assert.False(ring.TryPeek(out _)); // b is ready, but a (earlier) is not: order is kept
        ring.Publish(a);
        Assert.True(ring.TryPeek(out long p));
        Assert.Equal(a, p);
    }

    [Fact]
    public void Writer_Records_WrittenAsJsonLines()
    {
        string path = Path.Combine(_directory, "access.log");
        var writer = new AccessLogWriter(new AccessLogModel { Path = path, Buffer = 64 });
        for (int i = 0; i < 3; i++)
        {
            Assert.True(writer.TryClaim(out long p));
            ref AccessLogRecord r = ref writer.RecordAt(p);
            r.StartUtcTicks = new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc).Ticks;
            r.Listener = "public";
            r.Route = "api";
            r.Method = "GET";
            r.Status = 200 + i;
            r.DurationTicks = Stopwatch.Frequency / 1000 * 3;
            r.UpstreamTicks = -1;
            r.Client = IPAddress.Parse("203.0.113.9");
            "/a\"b/\u00e9"u8.CopyTo(r.Path);
            r.PathLength = "/a\"b/\u00e9"u8.Length;
            "req-1"u8.CopyTo(r.RequestId);
            r.RequestIdLength = 5;
            writer.Publish(p);
        }
        writer.Stop(TimeSpan.FromSeconds(5));

        var lines = File.ReadAllLines(path);
        Assert.Equal(3, lines.Length);
        using var json = JsonDocument.Parse(lines[2]);
        var root = json.RootElement;
        Assert.Equal("2026-01-02T03:04:05Z", root.GetProperty("time").GetString());
        Assert.Equal("api", root.GetProperty("route").GetString());
        Assert.Equal(JsonValueKind.Null, root.GetProperty("cluster").ValueKind);
        Assert.Equal(202, root.GetProperty("status").GetInt32());
        Assert.Equal(3.0, root.GetProperty("duration_ms").GetDouble(), 3);
        Assert.Equal(JsonValueKind.Null, root.GetProperty("upstream_ms").ValueKind);
        Assert.Equal("203.0.113.9", root.GetProperty("client").GetString());
        Assert.Equal("/a\"b/\u00e9", root.GetProperty("path").GetString());
        Assert.Equal("req-1", root.GetProperty("request_id").GetString());
        Assert.Equal(JsonValueKind.Null, root.GetProperty("trace_id").ValueKind);
        Assert.Equal(3, writer.Written);
    }

    /// <summary>
    /// A reopen (SIGUSR1) that fails keeps the file already open, as nginx does: the lines go on to the renamed file
    /// and are counted as written. Before, the writer dropped its stream, lost every line until the next successful
    /// reopen, and still counted them in proxy_access_log_lines_total.
    /// </summary>
    [Fact]
    public void Writer_ReopenFails_KeepsWritingToTheOpenFile()
    {
        string path = Path.Combine(_directory, "logs", "access.log");
        var writer = new AccessLogWriter(new AccessLogModel { Path = path, Buffer = 64, Fields = [AccessLogField.Status] });
        void Write(int status)
        {
            Assert.True(writer.TryClaim(out long p));
            writer.RecordAt(p).Status = status;
            writer.Publish(p);
        }
        static void WaitFor(Func<bool> condition)
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (!condition())
            {
                Assert.True(DateTime.UtcNow < deadline, "The condition did not hold within 20 s.");
                Thread.Sleep(20);
            }
        }
        Write(200);
        WaitFor(() => writer.Written == 1);
        File.Move(path, path + ".1");
        Directory.CreateDirectory(path); // the reopen cannot create a file there

        writer.Reopen();
        WaitFor(() => !writer.ReopenPending); // the records below come after the failed reopen
        Write(201);
        Write(202);
        WaitFor(() => writer.Written + writer.Dropped == 3);
        Directory.Delete(path);
        writer.Reopen();
        WaitFor(() => !writer.ReopenPending);
        Write(203);
        writer.Stop(TimeSpan.FromSeconds(10));

        Assert.Equal(0, writer.Dropped);
        Assert.Equal(4, writer.Written);
        Assert.Equal(["{\"status\":200}", "{\"status\":201}", "{\"status\":202}"], File.ReadAllLines(path + ".1"));
        Assert.Equal(["{\"status\":203}"], File.ReadAllLines(path));
    }

    [Fact]
    public void Writer_ConsumerAndPolicy_WrittenAsStringsOrNull()
    {
        string path = Path.Combine(_directory, "consumer.log");
        var writer = new AccessLogWriter(new AccessLogModel { Path = path, Fields = [AccessLogField.Consumer, AccessLogField.Policy] });
        Assert.True(writer.TryClaim(out long p));
        writer.RecordAt(p).SetConsumer("alice"u8);
        writer.RecordAt(p).Policy = "rate_limited";
        writer.Publish(p);
        Assert.True(writer.TryClaim(out p));
        writer.RecordAt(p).SetConsumer(default);
        writer.RecordAt(p).Policy = null;
        writer.Publish(p);
        writer.Stop(TimeSpan.FromSeconds(5));
        Assert.Equal(new[] { "{\"consumer\":\"alice\",\"policy\":\"rate_limited\"}", "{\"consumer\":null,\"policy\":null}" }, File.ReadAllLines(path));
    }

    [Fact]
    public void SetConsumer_LongerThanBuffer_CutOnCharacterBoundaryAndFlagged()
    {
        // 63 ASCII bytes then a 2-byte character: byte 64 would split it, so the cut falls before it.
        string name = new string('a', 63) + "\u00e9\u00e9";
        var record = new AccessLogRecord();
        record.SetConsumer(System.Text.Encoding.UTF8.GetBytes(name));
        Assert.True(record.ConsumerTruncated);
        Assert.Equal(63, record.ConsumerLength);

        string path = Path.Combine(_directory, "long.log");
        var writer = new AccessLogWriter(new AccessLogModel { Path = path, Fields = [AccessLogField.Consumer] });
        Assert.True(writer.TryClaim(out long p));
        writer.RecordAt(p).SetConsumer(System.Text.Encoding.UTF8.GetBytes(new string('b', 62) + "\u00e9\u00e9"));
        writer.Publish(p);
        writer.Stop(TimeSpan.FromSeconds(5));
        using var json = JsonDocument.Parse(File.ReadAllText(path));
        Assert.Equal(new string('b', 62) + "\u00e9", json.RootElement.GetProperty("consumer").GetString());
        Assert.True(json.RootElement.GetProperty("consumer_truncated").GetBoolean());
    }

    [Fact]
    public void Writer_Full_DropsAndCounts()
    {
        var writer = new AccessLogWriter(new AccessLogModel { Path = Path.Combine(_directory, "x.log"), Buffer = 16 });
        int claimed = 0;
        // Claim without publishing: the writer cannot free a slot, so the 17th claim must be refused.
        while (writer.TryClaim(out _))
        {
            claimed++;
        }
        Assert.Equal(16, claimed);
        Assert.Equal(1, writer.Dropped);
        writer.Stop(TimeSpan.FromMilliseconds(100));
    }

    [Fact]
    public void Writer_FieldSubset_OnlyThoseKeys()
    {
        string path = Path.Combine(_directory, "subset.log");
        var writer = new AccessLogWriter(new AccessLogModel { Path = path, Fields = [AccessLogField.Status, AccessLogField.Route] });
        Assert.True(writer.TryClaim(out long p));
        writer.RecordAt(p).Status = 404;
        writer.Publish(p);
        writer.Stop(TimeSpan.FromSeconds(5));
        Assert.Equal("{\"status\":404,\"route\":null}", File.ReadAllText(path).TrimEnd('\n'));
    }

    [Fact]
    public void Insights_RateSpikeBeyondFactor_RaisesAnomaly()
    {
        var route = new RouteMetrics("api", "backend");
        var insights = new TrafficInsights(() => [route]);
        insights.Configure(new InsightsModel { Enabled = false, SpikeFactor = 3, MinRequests = 5, BaselineIntervals = 10 });
        long now = 0, second = Stopwatch.Frequency;
        void Interval(int requests, int status = 200, double seconds = 0.002)
        {
            for (int i = 0; i < requests; i++)
            {
                route.Record(Proxy.Http.HttpMethod.Get, status, (long)(seconds * Stopwatch.Frequency));
            }
            now += second;
            insights.Sample(now);
        }
        insights.Sample(now); // first sight
        for (int i = 0; i < 5; i++)
        {
            Interval(10);
        }
        Assert.Empty(insights.Snapshot().Anomalies);

        Interval(100); // 10x the baseline rate
        var anomaly = Assert.Single(insights.Snapshot().Anomalies);
        Assert.Equal(("api", "rate"), (anomaly.Route, anomaly.Kind));

        Interval(100, status: 503, seconds: 0.002);
        Assert.True(insights.Snapshot().Anomalies.Exists(a => a.Kind == "error_ratio"), string.Join(", ", insights.Snapshot().Anomalies));
        Interval(30, seconds: 2);
        Assert.True(insights.Snapshot().Anomalies.Exists(a => a.Kind == "latency_p99"), string.Join(", ", insights.Snapshot().Anomalies));
        Assert.Contains(insights.AnomalyCounts(), s => s.Labels[1].Value == "rate" && s.Value >= 1);
    }

    /// <summary>A route whose handle the metrics dropped (its name gone from the config) loses its anomaly counts too.</summary>
    [Fact]
    public void Insights_RouteDroppedFromTheMetrics_AnomalyCountsForgotten()
    {
        var route = new RouteMetrics("api-1", "backend");
        RouteMetrics[] routes = [route];
        var insights = new TrafficInsights(() => routes);
        insights.Configure(new InsightsModel { Enabled = false, SpikeFactor = 3, MinRequests = 5, BaselineIntervals = 10 });
        long now = 0;
        insights.Sample(now); // first sight
        foreach (int requests in (int[])[10, 10, 10, 10, 100])
        {
            for (int i = 0; i < requests; i++)
            {
                route.Record(Proxy.Http.HttpMethod.Get, 200, Stopwatch.Frequency / 500);
            }
            now += Stopwatch.Frequency;
            insights.Sample(now);
        }
        Assert.Contains(insights.AnomalyCounts(), s => s.Labels[0].Value == "api-1");

        routes = [new RouteMetrics("api-2", "backend")];
        now += Stopwatch.Frequency;
        insights.Sample(now);

        Assert.Empty(insights.AnomalyCounts());
    }

    [Fact]
    public void Insights_TopClientsAndStatuses_CountHeavyHitters()
    {
        var insights = new TrafficInsights(() => []);
        var heavy = IPAddress.Parse("198.51.100.7");
        for (int i = 0; i < 1000; i++)
        {
            insights.Record(heavy, 200, 10);
            insights.Record(IPAddress.Parse($"10.0.{i / 250}.{i % 250}"), i % 10 == 0 ? 500 : 200, 10);
        }
        var report = insights.Snapshot();
        Assert.Equal(heavy, report.Clients[0].Address);
        Assert.True(report.Clients[0].Requests > 900, report.Clients[0].Requests.ToString());
        Assert.Equal(new KeyValuePair<int, long>(200, 1900), report.Statuses[0]);
        Assert.Equal(new KeyValuePair<int, long>(500, 100), report.Statuses[1]);
    }

    /// <summary>An upstream's status 600-999 is relayed and logged: insights count it too (it used to vanish from top_status).</summary>
    [Fact]
    public void Insights_StatusAbove599_Counted()
    {
        var insights = new TrafficInsights(() => []);
        insights.Record(IPAddress.Loopback, 799, 10);
        insights.Record(IPAddress.Loopback, 999, 10);
        insights.Record(IPAddress.Loopback, 999, 10);

        var report = insights.Snapshot();

        Assert.Equal(new KeyValuePair<int, long>(999, 2), report.Statuses[0]);
        Assert.Equal(new KeyValuePair<int, long>(799, 1), report.Statuses[1]);
    }

    [Fact]
    public void InsightsRecord_SteadyState_AllocatesNothing()
    {
        var insights = new TrafficInsights(() => []);
        var client = IPAddress.Parse("192.0.2.1");
        long allocated = SteadyStateAllocation.BestOfRounds(() => insights.Record(client, 200, 1), iterations: 1000);
        Assert.Equal(0, allocated);
    }
}
