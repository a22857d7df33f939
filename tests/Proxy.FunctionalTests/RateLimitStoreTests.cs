using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// rate_limit over real sockets: RateLimit fields on forwarded responses, and the Redis store shared by two proxies
/// (a real redis-server started per test on a free port; the tests fail, not skip, when it is not installed).
/// </summary>
public sealed class RateLimitStoreTests
{
    private static async Task<(RecordingUpstream Upstream, TestProxy Proxy)> StartAsync(string policy)
    {
        var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        try
        {
            string port = upstream.Port.ToString(CultureInfo.InvariantCulture);
            var proxy = await TestProxy.StartAsync($$"""
                policies:
                  limit:
                {{policy}}
                listeners:
                  - { name: public, address: 127.0.0.1:0 }
                routes:
                  - { id: orders, match: { path: "/orders/{**rest}" }, cluster: orders, policies: [limit] }
                  - { id: local, match: { path: /local }, respond: { status: 200, body: "hi" }, policies: [limit] }
                  - { id: open, match: { path: /open }, cluster: orders }
                clusters:
                  orders: { destinations: ["http://127.0.0.1:{{port}}"] }

                """);
            return (upstream, proxy);
        }
        catch
        {
            await upstream.DisposeAsync();
            throw;
        }
    }

    private static async Task<HttpMessage> GetAsync(RawClient client, string target, params string[] headers)
    {
        await client.SendAsync(Wire.Get(target, "example.test", headers));
        return await client.ReadResponseAsync();
    }

    [Fact]
    public async Task RateLimit_AllowedForwardedResponse_CarriesDraftFields()
    {
        var (upstream, proxy) = await StartAsync("    rate_limit: { key: header:x-api-key, rate: 1/h, burst: 3, quota: 100/day }");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();

        var first = await GetAsync(client, "/orders/1", "X-API-Key: k1");
        Assert.Equal(200, first.Status);
        Assert.Equal("\"limit\";q=1;w=3600, \"limit.quota\";q=100;w=86400", first.Header("ratelimit-policy"));
        Assert.StartsWith("\"limit\";r=2;t=3600, \"limit.quota\";r=99;t=", first.Header("ratelimit"));

        var second = await GetAsync(client, "/local", "X-API-Key: k1");
        Assert.Equal(200, second.Status);
        Assert.StartsWith("\"limit\";r=1;t=7200, \"limit.quota\";r=98;t=", second.Header("ratelimit"));

        // A route without the policy on the same connection: no stale fields from the previous request.
        var open = await GetAsync(client, "/open/x");
        Assert.Null(open.Header("ratelimit"));
        Assert.Null(open.Header("ratelimit-policy"));
    }

    // ---- Redis -----------------------------------------------------------------------------------

    private const string RedisServer = "/usr/bin/redis-server";

    /// <summary>A private redis-server on a free port, no persistence; killed on dispose.</summary>
    private sealed class RedisProcess : IAsyncDisposable
    {
        private readonly Process _process;

        private RedisProcess(Process process, int port)
        {
            _process = process;
            Port = port;
        }

        public int Port { get; }

        public string Address => $"127.0.0.1:{Port}";

        public static async Task<RedisProcess> StartAsync()
        {
            Assert.True(File.Exists(RedisServer),
                $"{RedisServer} is required by the Redis rate-limit tests (apt-get install redis-server; .ci/run installs it)");
            int port = FreePort();
            var info = new ProcessStartInfo(RedisServer)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            foreach (string arg in new[] { "--port", port.ToString(CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no" })
            {
                info.ArgumentList.Add(arg);
            }
            var process = Process.Start(info)!;
            process.OutputDataReceived += static (_, _) => { };
            process.ErrorDataReceived += static (_, _) => { };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            var redis = new RedisProcess(process, port);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (true)
            {
                try
                {
                    using var socket = new TcpClient();
                    await socket.ConnectAsync(IPAddress.Loopback, port);
                    return redis;
                }
                catch (SocketException) when (DateTime.UtcNow < deadline && !process.HasExited)
                {
                    await Task.Delay(50);
                }
                catch
                {
                    await redis.DisposeAsync();
                    throw;
                }
            }
        }

        /// <summary>SIGSTOP: the server keeps its connections open and answers nothing (a hung or swapped-out Redis).</summary>
        public void Freeze() => Signal("-STOP");

        /// <summary>SIGCONT after <see cref="Freeze"/>.</summary>
        public void Thaw() => Signal("-CONT");

        private void Signal(string signal)
        {
            using var kill = Process.Start("kill", [signal, _process.Id.ToString(CultureInfo.InvariantCulture)])!;
            kill.WaitForExit(5000);
            Assert.Equal(0, kill.ExitCode);
        }

        public void Kill()
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                _process.WaitForExit(5000);
            }
        }

        public async ValueTask DisposeAsync()
        {
            // The proxies are gone by now; their shared client would keep reconnecting to the dead port.
            await Proxy.Pipeline.Filters.RedisRateLimitStore.CloseConnectionsAsync(Address);
            Kill();
            _process.Dispose();
        }

        private static int FreePort()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return ((IPEndPoint)listener.LocalEndpoint).Port;
        }
    }

    private static string RedisPolicy(RedisProcess redis, string limits, string onError)
        => $"    rate_limit: {{ key: header:x-api-key, {limits}, store: redis, redis: {{ address: \"{redis.Address}\", on_error: {onError}, timeout: 500ms }} }}";

    /// <summary>
    /// One request with a key of its own until the store answers: the first decision connects to Redis and loads the
    /// script, which on a loaded 2-core machine can take longer than the store's 500 ms timeout (on_error: deny then
    /// answers 503, as the policy says). The tests below are about decisions, not that first connect. The connection
    /// is the process's, shared by every proxy with the same address and timeout. The route answers itself: nothing
    /// reaches the upstream. A key per attempt: an attempt that timed out here may still have been charged in Redis,
    /// and with <c>burst: 1</c> a retry on the same key would be refused for the rest of the hour.
    /// </summary>
    private static async Task WarmUpAsync(RawClient client)
    {
        var clock = Stopwatch.StartNew();
        int attempt = 0;
        while ((await GetAsync(client, "/local", $"X-API-Key: warm-up-{attempt++}")).Status != 200)
        {
            Assert.True(clock.Elapsed < TestDefaults.Timeout, "the Redis store never answered");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task Redis_TwoProxies_ShareOneLimit()
    {
        await using var redis = await RedisProcess.StartAsync();
        string policy = RedisPolicy(redis, "rate: 1/h, burst: 10", "deny");
        var (upstreamA, proxyA) = await StartAsync(policy);
        await using var _ = upstreamA;
        await using var __ = proxyA;
        var (upstreamB, proxyB) = await StartAsync(policy);
        await using var ___ = upstreamB;
        await using var ____ = proxyB;
        await using var clientA = await proxyA.ConnectAsync();
        await using var clientB = await proxyB.ConnectAsync();
        await WarmUpAsync(clientA);

        // 1/h with a burst of 10: over the test's few seconds the two together admit exactly 10 (tolerance 0, since
        // the refill in that time is a few thousandths of a request); each alone would admit 10.
        int allowed = 0;
        int limited = 0;
        for (int i = 0; i < 15; i++)
        {
            var a = await GetAsync(clientA, "/orders/a", "X-API-Key: shared");
            var b = await GetAsync(clientB, "/orders/b", "X-API-Key: shared");
            foreach (var response in new[] { a, b })
            {
                if (response.Status == 200)
                {
                    allowed++;
                }
                else
                {
                    Assert.Equal(429, response.Status);
                    Assert.Equal("\"limit\";q=1;w=3600", response.Header("ratelimit-policy"));
                    Assert.NotNull(response.Header("retry-after"));
                    limited++;
                }
            }
        }
        Assert.Equal(10, allowed);
        Assert.Equal(20, limited);
        Assert.Equal(10, upstreamA.Requests.Length + upstreamB.Requests.Length);
        // Another key has its own budget.
        Assert.Equal(200, (await GetAsync(clientB, "/orders/b", "X-API-Key: other")).Status);
    }

    [Fact]
    public async Task Redis_Quota_SharedAcrossProxiesWithRetryAfterToReset()
    {
        await using var redis = await RedisProcess.StartAsync();
        string policy = RedisPolicy(redis, "quota: 3/day", "deny");
        var (upstreamA, proxyA) = await StartAsync(policy);
        await using var _ = upstreamA;
        await using var __ = proxyA;
        var (upstreamB, proxyB) = await StartAsync(policy);
        await using var ___ = upstreamB;
        await using var ____ = proxyB;
        await using var clientA = await proxyA.ConnectAsync();
        await using var clientB = await proxyB.ConnectAsync();
        await WarmUpAsync(clientA);

        Assert.Equal(200, (await GetAsync(clientA, "/orders/1", "X-API-Key: q")).Status);
        Assert.Equal(200, (await GetAsync(clientB, "/orders/1", "X-API-Key: q")).Status);
        var third = await GetAsync(clientA, "/orders/1", "X-API-Key: q");
        Assert.Equal(200, third.Status);
        Assert.StartsWith("\"limit.quota\";r=0;t=", third.Header("ratelimit"));
        var refused = await GetAsync(clientB, "/orders/1", "X-API-Key: q");
        Assert.Equal(429, refused.Status);
        long retry = long.Parse(refused.Header("retry-after")!, CultureInfo.InvariantCulture);
        long untilMidnight = 86_400 - DateTimeOffset.UtcNow.ToUnixTimeSeconds() % 86_400;
        Assert.InRange(retry, untilMidnight - 5, untilMidnight + 5);
    }

    [Fact]
    public async Task Redis_LocalBudget_SparesRoundTripsAndNeverExceedsTheLimit()
    {
        await using var redis = await RedisProcess.StartAsync();
        // A generous Redis timeout: on a loaded CI machine the default one refused a few of the first decisions (6 of 10).
        string policy = $"    rate_limit: {{ key: header:x-api-key, rate: 1/h, burst: 10, store: redis, redis: {{ address: \"{redis.Address}\", local_budget: 5, timeout: 5s }} }}";
        var (upstreamA, proxyA) = await StartAsync(policy);
        await using var _ = upstreamA;
        await using var __ = proxyA;
        var (upstreamB, proxyB) = await StartAsync(policy);
        await using var ___ = upstreamB;
        await using var ____ = proxyB;
        await using var clientA = await proxyA.ConnectAsync();
        await using var clientB = await proxyB.ConnectAsync();

        // Each proxy leases 5 units in one round trip and spends them locally: together exactly the burst of 10.
        int allowed = 0;
        for (int i = 0; i < 8; i++)
        {
            allowed += (await GetAsync(clientA, "/orders/a", "X-API-Key: k")).Status == 200 ? 1 : 0;
            allowed += (await GetAsync(clientB, "/orders/b", "X-API-Key: k")).Status == 200 ? 1 : 0;
        }
        Assert.Equal(10, allowed);
        var filterA = Assert.IsType<Proxy.Pipeline.Filters.RateLimitFilter>(proxyA.Server.Snapshot.Policies.Single().Value);
        var filterB = Assert.IsType<Proxy.Pipeline.Filters.RateLimitFilter>(proxyB.Server.Snapshot.Policies.Single().Value);
        // One lease per proxy, then one refused round trip per request after the leases ran out (3 each).
        Assert.Equal(4, filterA.Redis!.RoundTrips);
        Assert.Equal(4, filterB.Redis!.RoundTrips);
    }

    /// <summary>
    /// Redis keys name the policy and the key's digest, nothing of the config's version: a reload keeps deciding on the
    /// same keys, so a spent budget stays spent, even when the reload changes what only shapes failures (on_error).
    /// </summary>
    [Fact]
    public async Task Redis_Reload_KeepsTheSameKeys()
    {
        await using var redis = await RedisProcess.StartAsync();
        string Config(string onError, string body) => $$"""
            server: { watch_config: false }
            policies:
              limit:
            {{RedisPolicy(redis, "rate: 1/h, burst: 1, quota: 5/day", onError)}}
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: local, match: { path: /local }, respond: { status: 200, body: "hi" }, policies: [limit] }
              - { id: other, match: { path: /other }, respond: { status: 200, body: "{{body}}" } }

            """;
        await using var proxy = await TestProxy.StartAsync(Config("deny", "one"));
        await using (var client = await proxy.ConnectAsync())
        {
            await WarmUpAsync(client);
            Assert.Equal(200, (await GetAsync(client, "/local", "X-API-Key: k")).Status);
            Assert.Equal(429, (await GetAsync(client, "/local", "X-API-Key: k")).Status);
        }

        var result = await proxy.Server.ReloadAsync(Config("allow", "two"));

        Assert.True(result.Success, string.Join("\n", result.Errors));
        await using var after = await proxy.ConnectAsync();
        Assert.Equal("two", (await GetAsync(after, "/other")).BodyText);
        var limited = await GetAsync(after, "/local", "X-API-Key: k");
        Assert.Equal(429, limited.Status);
        Assert.StartsWith("\"limit\";r=0;t=", limited.Header("ratelimit"));
    }

    /// <summary>
    /// A Redis address that takes connections and never answers: the store's first decisions used to wait for the
    /// client's connect (its connect timeout, 3 s here) instead of the policy's 200 ms timeout.
    /// </summary>
    [Theory]
    [InlineData("allow", 200)]
    [InlineData("deny", 503)]
    public async Task Redis_SilentServerWhileConnecting_DecisionsGiveUpAfterTimeout(string onError, int expected)
    {
        var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start(); // the kernel completes the handshakes; nothing ever reads or answers
        string address = $"127.0.0.1:{((IPEndPoint)silent.LocalEndpoint).Port}";
        try
        {
            var (upstream, proxy) = await StartAsync(
                $"    rate_limit: {{ key: header:x-api-key, rate: 10/s, store: redis, redis: {{ address: \"{address}\", on_error: {onError}, timeout: 200ms }} }}");
            await using var _ = upstream;
            await using var __ = proxy;
            await using var client = await proxy.ConnectAsync();

            var sw = Stopwatch.StartNew();
            var first = await GetAsync(client, "/local", "X-API-Key: k");
            TimeSpan firstTook = sw.Elapsed;
            var second = await GetAsync(client, "/local", "X-API-Key: k");

            Assert.Equal(expected, first.Status);
            Assert.Equal(expected, second.Status);
            Assert.True(firstTook < TimeSpan.FromMilliseconds(1500), $"the first decision took {firstTook}");
            Assert.True(sw.Elapsed < TimeSpan.FromMilliseconds(2500), $"two decisions took {sw.Elapsed}");
        }
        finally
        {
            await Proxy.Pipeline.Filters.RedisRateLimitStore.CloseConnectionsAsync(address);
            silent.Stop();
        }
    }

    [Theory]
    [InlineData("allow", 200)]
    [InlineData("deny", 503)]
    public async Task Redis_KilledMidTest_FollowsOnError(string onError, int expected)
    {
        var redis = await RedisProcess.StartAsync();
        try
        {
            var (upstream, proxy) = await StartAsync(RedisPolicy(redis, "rate: 1/h, burst: 2", onError));
            await using var _ = upstream;
            await using var __ = proxy;
            await using var client = await proxy.ConnectAsync();
            await WarmUpAsync(client);
            var filter = Assert.IsType<Proxy.Pipeline.Filters.RateLimitFilter>(proxy.Server.Snapshot.Policies.Single().Value);
            long errorsBefore = filter.StoreErrorCount; // a slow first connect may have cost the warm-up one

            Assert.Equal(200, (await GetAsync(client, "/orders/1", "X-API-Key: k")).Status);
            Assert.Equal(200, (await GetAsync(client, "/orders/1", "X-API-Key: k")).Status);
            Assert.Equal(429, (await GetAsync(client, "/orders/1", "X-API-Key: k")).Status);

            redis.Kill();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < 3; i++)
            {
                var response = await GetAsync(client, "/orders/1", "X-API-Key: k");
                Assert.Equal(expected, response.Status);
                if (expected == 503)
                {
                    Assert.Equal("1", response.Header("retry-after"));
                }
            }
            // Each decision fails within the store's timeout (500 ms), not the connect timeout.
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"{sw.Elapsed} for three decisions with Redis down");
            // The counter behind proxy_policy_decisions_total{decision="store_error"}.
            Assert.Equal(3, filter.StoreErrorCount - errorsBefore);
        }
        finally
        {
            await redis.DisposeAsync();
        }
    }

    /// <summary>
    /// A Redis that stops answering with its connection open (SIGSTOP): each decision must give up after the policy's
    /// timeout. StackExchange.Redis checks its own AsyncTimeout only on a heartbeat about once a second, so with
    /// `timeout: 100ms` decisions used to take up to a second. Of six decisions, all but the slowest must take under
    /// 450 ms.
    /// </summary>
    [Theory]
    [InlineData("allow", 200)]
    [InlineData("deny", 503)]
    public async Task Redis_ServerFrozen_EachDecisionGivesUpAfterTimeout(string onError, int expected)
    {
        await using var redis = await RedisProcess.StartAsync();
        var (upstream, proxy) = await StartAsync(
            $"    rate_limit: {{ key: header:x-api-key, rate: 100/s, store: redis, redis: {{ address: \"{redis.Address}\", on_error: {onError}, timeout: 100ms }} }}");
        await using var _ = upstream;
        await using var __ = proxy;
        await using var client = await proxy.ConnectAsync();
        var filter = Assert.IsType<Proxy.Pipeline.Filters.RateLimitFilter>(proxy.Server.Snapshot.Policies.Single().Value);
        // Until Redis itself decides (connected, script loaded): with on_error: allow a failed decision is a 200 too.
        var warming = Stopwatch.StartNew();
        while (true)
        {
            long errors = filter.StoreErrorCount;
            if ((await GetAsync(client, "/local", "X-API-Key: warm-up")).Status == 200 && filter.StoreErrorCount == errors)
            {
                break;
            }
            Assert.True(warming.Elapsed < TestDefaults.Timeout, "the Redis store never answered");
            await Task.Delay(100);
        }
        long errorsBefore = filter.StoreErrorCount;

        redis.Freeze();
        try
        {
            const int Decisions = 6;
            var took = new List<TimeSpan>();
            for (int i = 0; i < Decisions; i++)
            {
                var sw = Stopwatch.StartNew();
                var response = await GetAsync(client, "/local", "X-API-Key: k");
                took.Add(sw.Elapsed);
                Assert.Equal(expected, response.Status);
            }
            // 100 ms plus scheduling on a loaded machine; the heartbeat-bound wait it replaces was 0.5 to 1.1 s for every
            // decision. One slow decision is allowed: a loaded CI run stalled the test process once for 0.6 s.
            took.Sort();
            Assert.True(took[^2] < TimeSpan.FromMilliseconds(450), $"decisions took {string.Join(", ", took.Select(t => $"{t.TotalMilliseconds:F0} ms"))}");
            Assert.Equal(Decisions, filter.StoreErrorCount - errorsBefore);
        }
        finally
        {
            redis.Thaw();
        }
    }
}
