using System.Diagnostics;
using System.Globalization;
using Proxy.FunctionalTests.Infrastructure;
using Xunit.Abstractions;

namespace Proxy.FunctionalTests;

/// <summary>
/// A bounded chaos run (docs/resilience.md, "Chaos run"): three destinations, one of which refuses, resets and
/// answers 503 in turn, under concurrent load from HttpClient. With retries and outlier detection on, the share of
/// requests answered 200 must stay above <see cref="SuccessFloor"/>, and the memory the process keeps after a full
/// collection must not grow. Lasts <c>PROXY_CHAOS_SECONDS</c> (default 10 in the suite; bench/load/chaos.sh runs 60).
/// </summary>
// Alone, after the parallel tests: its 16 busy workers would otherwise starve the timing-sensitive tests, and its
// memory check would see their allocations.
[Collection(MemorySensitiveCollection.Name)]
public sealed class ChaosTests(ITestOutputHelper output)
{
    private const double SuccessFloor = 0.99;
    private const int Concurrency = 16;

    private static TimeSpan Duration =>
        TimeSpan.FromSeconds(int.TryParse(Environment.GetEnvironmentVariable("PROXY_CHAOS_SECONDS"), NumberStyles.None,
            CultureInfo.InvariantCulture, out int seconds) && seconds > 0 ? seconds : 10);

    [Fact]
    public async Task Chaos_OneOfThreeDestinationsFailsInTurns_SuccessAboveFloorAndMemoryFlat()
    {
        await using var good1 = new FlakyUpstream(Timeout.InfiniteTimeSpan);
        await using var good2 = new FlakyUpstream(Timeout.InfiniteTimeSpan);
        await using var flaky = new FlakyUpstream(TimeSpan.FromMilliseconds(400));
        await using var proxy = await ClusterYaml.StartAsync($"\"{good1.Address}\", \"{good2.Address}\", \"{flaky.Address}\"", cluster: """
            connect_timeout: 500ms
            response_timeout: 2s
            outlier_detection: { consecutive_failures: 3, base_ejection: 200ms, max_ejection_percent: 34 }
            retry: { attempts: 2, on: [connect_failure, reset, 502, 503, 504], backoff: { base: 2ms, max: 20ms }, budget_percent: 50 }
            circuit_breaker: { max_connections: 1024, max_pending: 1024, max_requests: 10000 }
            """);
        using var handler = new SocketsHttpHandler { MaxConnectionsPerServer = Concurrency, PooledConnectionLifetime = Timeout.InfiniteTimeSpan };
        using var client = new HttpClient(handler) { BaseAddress = proxy.PublicUri, Timeout = TimeSpan.FromSeconds(10) };

        long ok = 0, failed = 0;
        var statuses = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
        TimeSpan duration = Duration;
        var clock = Stopwatch.StartNew();
        long retainedAtWarmup = 0, retainedAtEnd;
        long workingSetAtWarmup = 0, peakWorkingSet = 0;

        async Task WorkerAsync()
        {
            while (clock.Elapsed < duration)
            {
                string outcome;
                try
                {
                    using var response = await client.GetAsync("/chaos", HttpCompletionOption.ResponseContentRead);
                    outcome = ((int)response.StatusCode).ToString(CultureInfo.InvariantCulture);
                    if (response.IsSuccessStatusCode)
                    {
                        Interlocked.Increment(ref ok);
                        continue;
                    }
                }
                catch (HttpRequestException e)
                {
                    outcome = e.HttpRequestError.ToString();
                }
                Interlocked.Increment(ref failed);
                statuses.AddOrUpdate(outcome, 1, (_, n) => n + 1);
            }
        }

        var workers = new Task[Concurrency];
        for (int i = 0; i < workers.Length; i++)
        {
            workers[i] = Task.Run(WorkerAsync);
        }

        // Memory: the proxy runs in this process. "Retained" is the managed heap after a full blocking collection,
        // taken once warm (20% into the run) and at the end: what the process keeps, not what it has allocated.
        await Task.Delay(duration / 5);
        retainedAtWarmup = Retained();
        workingSetAtWarmup = Environment.WorkingSet;
        while (clock.Elapsed < duration)
        {
            peakWorkingSet = Math.Max(peakWorkingSet, Environment.WorkingSet);
            await Task.Delay(200);
        }
        await Task.WhenAll(workers);
        retainedAtEnd = Retained();

        long total = ok + failed;
        double rate = (double)ok / total;
        output.WriteLine($"chaos: {duration.TotalSeconds:0} s, {total} requests ({total / duration.TotalSeconds:0}/s), {ok} ok, {failed} failed: "
            + $"{rate:P3} success (floor {SuccessFloor:P0}); failures by kind: {string.Join(", ", statuses.Select(p => $"{p.Key}={p.Value}"))}");
        output.WriteLine($"flaky destination: {flaky.PhasesRun} phases, served {flaky.Served}, failed on purpose {flaky.Failed}; "
            + $"good1 {good1.Served}, good2 {good2.Served}");
        output.WriteLine($"memory: retained after full GC {retainedAtWarmup / 1024} KiB at warm-up -> {retainedAtEnd / 1024} KiB at end; "
            + $"working set {workingSetAtWarmup / (1024 * 1024)} MiB at warm-up, peak {peakWorkingSet / (1024 * 1024)} MiB");

        Assert.True(flaky.Failed > 0, "The flaky destination never failed a request: the run tested nothing.");
        Assert.True(flaky.PhasesRun >= 6, $"Only {flaky.PhasesRun} failure phases ran.");
        Assert.True(total > 500, $"Only {total} requests in {duration}.");
        Assert.True(rate >= SuccessFloor, $"Success rate {rate:P3} is below the floor {SuccessFloor:P0}.");
        // Nothing in the run keeps per-request state (the upstreams keep no record), so retained memory must stay
        // within noise: 4 MiB covers pool and JIT growth. A per-request leak grows with the request count (tens of
        // thousands after warm-up in 10 s), so 4 MiB catches anything from about 100 bytes per request up.
        Assert.True(retainedAtEnd - retainedAtWarmup < 4 * 1024 * 1024,
            $"Retained memory grew from {retainedAtWarmup / 1024} KiB to {retainedAtEnd / 1024} KiB.");
    }

    private static long Retained()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        return GC.GetTotalMemory(false);
    }
}
