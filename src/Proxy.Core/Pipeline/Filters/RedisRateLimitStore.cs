using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Proxy.Diagnostics;
using StackExchange.Redis;

namespace Proxy.Pipeline.Filters;

/// <summary>The <c>redis:</c> block of a <c>rate_limit</c> policy with <c>store: redis</c>.</summary>
internal sealed record RedisStoreOptions
{
    /// <summary>host:port of the Redis server.</summary>
    public required string Address { get; init; }
    /// <summary><c>on_error: allow</c> (fail open, the default) or <c>deny</c> (fail closed: 503).</summary>
    public bool OnErrorAllow { get; init; } = true;
    /// <summary>How long a decision may wait for Redis before <c>on_error</c> applies.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMilliseconds(250);
    /// <summary>
    /// Units a proxy leases per round trip and spends locally (<c>local_budget</c>); 0 or 1: one round trip per
    /// request.
    /// </summary>
    public int LocalBudget { get; init; }
}

/// <summary>What the script decided; microseconds from Redis' clock, counts as integers.</summary>
internal readonly record struct RedisDecision(RateLimitFilter.Outcome Outcome, long RateRemaining, long RateResetMicros, long RetryAfterMicros, long QuotaRemaining, long Granted);

/// <summary>
/// Rate-limit state shared by every proxy instance that points at one Redis: GCRA and the quota counter in one
/// server-side Lua script, so a decision is one atomic round trip (EVALSHA; EVAL once when the server does not know
/// the script yet). Time comes from Redis' own clock (<c>TIME</c>), so instances with skewed clocks agree on the
/// rate; quota windows are computed by the proxy (UTC calendar) and named in the key.
/// </summary>
/// <remarks>
/// Keys: <c>proxy:rl:{policy}:{digest}</c> holds a key's theoretical arrival time in microseconds (expiring when the
/// bucket is full again), <c>proxy:rq:{policy}:{period}{window}:{digest}</c> the window's count (expiring at the
/// window's end). The digest is SHA-256 of the key's bytes truncated to 16 bytes: stable across processes (unlike the
/// seeded in-memory hash) and it keeps API keys and addresses out of Redis.
/// The connection (StackExchange.Redis multiplexer) is shared per address by every policy and reload of the process
/// and never closed; commands fail fast while it is down (<see cref="BacklogPolicy.FailFast"/>), so an outage costs
/// an exception per decision, not a queue.
/// </remarks>
internal sealed class RedisRateLimitStore
{
    // KEYS[1] GCRA key, KEYS[2] quota key. ARGV[1] interval (us, 0: no rate), ARGV[2] tolerance (us), ARGV[3] quota
    // (0: none), ARGV[4] quota key lifetime (s), ARGV[5] units wanted (1, or the local budget). Takes as many units as
    // fit, at least one: GCRA with cost g (TAT += g * T) and the quota counter += g. Returns {outcome (0 allowed,
    // 1 rate, 2 quota), rate remaining, rate reset (us), retry after (us), quota remaining, units granted}. The quota
    // is checked first and charged last, so a request refused by either is charged to neither. Numbers are doubles
    // in Lua: microseconds since 1970 (~2^51) are exact.
    internal const string Script = """
        local interval = tonumber(ARGV[1])
        local tolerance = tonumber(ARGV[2])
        local quota = tonumber(ARGV[3])
        local want = tonumber(ARGV[5])
        local used = 0
        if quota > 0 then
          used = tonumber(redis.call('GET', KEYS[2]) or '0')
          if used >= quota then return {2, -1, 0, 0, 0, 0} end
          if quota - used < want then want = quota - used end
        end
        local remaining, reset = -1, 0
        if interval > 0 then
          local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
          local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
          if tat < now then tat = now end
          local fit = math.floor((tolerance - (tat - now)) / interval)
          if fit < 1 then
            return {1, 0, tat - now, tat + interval - now - tolerance, quota > 0 and quota - used or -1, 0}
          end
          if fit < want then want = fit end
          local debt = tat + want * interval - now
          redis.call('SET', KEYS[1], string.format('%.0f', tat + want * interval), 'PX', math.ceil(debt / 1000) + 1)
          remaining = math.floor((tolerance - debt) / interval)
          reset = debt
        end
        if quota > 0 then
          used = redis.call('INCRBY', KEYS[2], want)
          if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end
          return {0, remaining, reset, 0, quota - used, want}
        end
        return {0, remaining, reset, 0, -1, want}
        """;

    private static readonly byte[] s_scriptSha1 = SHA1.HashData(Encoding.UTF8.GetBytes(Script));
    private static readonly ConcurrentDictionary<string, Lazy<Task<ConnectionMultiplexer>>> s_connections = new(StringComparer.Ordinal);

    private readonly byte[] _ratePrefix;
    private readonly string _policyName;
    private readonly Lazy<Task<ConnectionMultiplexer>> _connection;
    private long _lastErrorLog;
    private long _roundTrips;
    private long _errorsSinceLog;

    public RedisRateLimitStore(string policyName, RedisStoreOptions options)
    {
        Options = options;
        _policyName = policyName;
        _ratePrefix = Encoding.UTF8.GetBytes($"proxy:rl:{policyName}:");
        // The connect starts on the thread pool: its synchronous part (loading the client, setting up the endpoint; a
        // second or more on a cold, loaded process) would otherwise run on the first request's thread, before any
        // timeout can start counting.
        _connection = s_connections.GetOrAdd($"{options.Address}|{options.Timeout.TotalMilliseconds}", static (_, o) => new Lazy<Task<ConnectionMultiplexer>>(
            () => Task.Run(() => ConnectionMultiplexer.ConnectAsync(Configure(o)))), options);
    }

    public RedisStoreOptions Options { get; }

    /// <summary>Scripts run (decisions that went to Redis).</summary>
    public long RoundTrips => Volatile.Read(ref _roundTrips);

    private static ConfigurationOptions Configure(RedisStoreOptions options)
    {
        var config = new ConfigurationOptions
        {
            // Keep reconnecting in the background; never fail the proxy's start on Redis.
            AbortOnConnectFail = false,
            ConnectTimeout = (int)Math.Max(options.Timeout.TotalMilliseconds, 1000),
            AsyncTimeout = (int)Math.Max(1, options.Timeout.TotalMilliseconds),
            SyncTimeout = (int)Math.Max(1, options.Timeout.TotalMilliseconds),
            // While disconnected, fail each command at once (on_error decides) instead of queueing requests.
            BacklogPolicy = BacklogPolicy.FailFast,
            ClientName = "proxy-rate-limit",
        };
        config.EndPoints.Add(options.Address);
        return config;
    }

    /// <summary>
    /// Closes and forgets the process's connections to <paramref name="address"/> (tests: a stopped server's client
    /// would otherwise keep reconnecting, and allocating, for the rest of the process).
    /// </summary>
    internal static async Task CloseConnectionsAsync(string address)
    {
        foreach (var (key, connection) in s_connections)
        {
            if (key.StartsWith(address + "|", StringComparison.Ordinal) && s_connections.TryRemove(key, out _) && connection.IsValueCreated)
            {
                try
                {
                    await (await connection.Value.ConfigureAwait(false)).DisposeAsync().ConfigureAwait(false);
                }
                catch (Exception e) when (e is RedisException or ObjectDisposedException)
                {
                    // Already broken: nothing left to close.
                }
            }
        }
    }

    /// <summary>The GCRA key for a bucket's bytes: prefix plus a 16-byte SHA-256 digest.</summary>
    public byte[] Key(ReadOnlySpan<byte> material)
    {
        var key = new byte[_ratePrefix.Length + 16];
        _ratePrefix.CopyTo(key, 0);
        Span<byte> digest = stackalloc byte[32];
        SHA256.HashData(material, digest);
        digest[..16].CopyTo(key.AsSpan(_ratePrefix.Length));
        return key;
    }

    /// <summary>
    /// One decision within <see cref="RedisStoreOptions.Timeout"/>, or a <see cref="TimeoutException"/> (on_error
    /// decides). The client's own AsyncTimeout is not enough: StackExchange.Redis checks it on a heartbeat about once a
    /// second, so a server that stops answering (paused, swapping) held decisions for up to a second past `timeout`.
    /// </summary>
    public Task<RedisDecision> DecideAsync(byte[] rateKey, RateLimitFilter.CompiledPlan plan, long window, long quotaResetSeconds, int want)
    {
        Task<RedisDecision> deciding = DecideCoreAsync(rateKey, plan, window, quotaResetSeconds, want);
        return deciding.IsCompleted ? deciding : WithTimeoutAsync(deciding, Options.Timeout);
    }

    private static async Task<RedisDecision> WithTimeoutAsync(Task<RedisDecision> deciding, TimeSpan timeout)
    {
        try
        {
            return await deciding.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // The abandoned call still ends (the client times it out later): observe its failure so it is not
            // reported as an unobserved task exception.
            _ = deciding.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            throw;
        }
    }

    /// <summary>One decision: EVALSHA, falling back to EVAL when the server lost or never had the script.</summary>
    private async Task<RedisDecision> DecideCoreAsync(byte[] rateKey, RateLimitFilter.CompiledPlan plan, long window, long quotaResetSeconds, int want)
    {
        Interlocked.Increment(ref _roundTrips);
        // The first decisions wait for the connection, which may take up to its connect timeout (at least a second,
        // more than `timeout`): DecideAsync gives up after `timeout` as for any other Redis call, and on_error decides.
        ConnectionMultiplexer connection = await _connection.Value.ConfigureAwait(false);
        IDatabase db = connection.GetDatabase();
        RateLimitPlan limits = plan.Limits;
        RedisKey quotaKey = default;
        if (limits.Quota > 0)
        {
            // Same digest as the rate key, under the window's name.
            string period = limits.QuotaPeriod switch { QuotaPeriod.Hour => "h", QuotaPeriod.Day => "d", _ => "m" };
            byte[] prefix = Encoding.UTF8.GetBytes($"proxy:rq:{_policyName}:{period}{window}:");
            var bytes = new byte[prefix.Length + 16];
            prefix.CopyTo(bytes, 0);
            rateKey.AsSpan(_ratePrefix.Length).CopyTo(bytes.AsSpan(prefix.Length));
            quotaKey = bytes;
        }
        else
        {
            quotaKey = rateKey;
        }
        RedisKey[] keys = [rateKey, quotaKey];
        RedisValue[] args =
        [
            limits.Rate > 0 ? plan.IntervalMicros : 0,
            plan.ToleranceMicros,
            limits.Quota,
            // The key outlives its window by a minute so clocks a little apart still find it.
            quotaResetSeconds + 60,
            want,
        ];
        RedisResult result;
        try
        {
            result = await db.ScriptEvaluateAsync(s_scriptSha1, keys, args).ConfigureAwait(false);
        }
        catch (RedisServerException e) when (e.Message.StartsWith("NOSCRIPT", StringComparison.Ordinal))
        {
            result = await db.ScriptEvaluateAsync(Script, keys, args).ConfigureAwait(false);
        }
        var values = (long[])result!;
        return new RedisDecision((RateLimitFilter.Outcome)values[0], values[1], values[2], values[3], values[4], values[5]);
    }

    /// <summary>
    /// Logs a store failure at most once per 10 seconds per policy (an outage would otherwise log every request),
    /// with the number of failures since the last line.
    /// </summary>
    public void ReportError(Exception e)
    {
        long count = Interlocked.Increment(ref _errorsSinceLog);
        long now = Environment.TickCount64;
        long last = Volatile.Read(ref _lastErrorLog);
        if ((last != 0 && now - last < 10_000) || Interlocked.CompareExchange(ref _lastErrorLog, now, last) != last)
        {
            return;
        }
        Interlocked.Add(ref _errorsSinceLog, -count);
        ProxyLog.Warn("rate_limit_store_error", ("policy", _policyName), ("store", "redis"), ("address", Options.Address),
            ("on_error", Options.OnErrorAllow ? "allow" : "deny"), ("failures", count), ("error", e.GetType().Name + ": " + e.Message));
    }
}
