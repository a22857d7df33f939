using System.Buffers.Text;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Proxy.Pipeline.Filters;

/// <summary>Which part of a request names its rate-limit bucket.</summary>
internal enum RateLimitKeyKind : byte
{
    /// <summary>A request header's value (<c>header:NAME</c>); requests without it share one anonymous bucket.</summary>
    Header = 0,
    /// <summary>The socket peer's address (<c>client_ip</c>).</summary>
    ClientIp,
    /// <summary>The matched route's id (<c>route</c>): one budget per route.</summary>
    Route,
    /// <summary>The verified identity's subject (<c>jwt:sub</c>); anonymous bucket without one.</summary>
    Subject,
    /// <summary>The verified identity's client id (<c>jwt:client_id</c>); anonymous bucket without one.</summary>
    ClientId,
    /// <summary>The verified identity's consumer (<c>consumer</c>); anonymous bucket without one.</summary>
    Consumer,
}

/// <summary>The calendar window of a quota (UTC).</summary>
internal enum QuotaPeriod : byte
{
    None = 0,
    Hour,
    Day,
    Month,
}

/// <summary>One set of limits: the policy's own, or one of its <c>plans</c>.</summary>
internal sealed record RateLimitPlan
{
    /// <summary>The plan's name; empty for the policy's own limits.</summary>
    public string Name { get; init; } = "";
    /// <summary>Requests per window (the <c>N</c> of <c>N/s</c>); 0 for no rate limit (quota only).</summary>
    public int Rate { get; init; }
    /// <summary>The rate's window in seconds: 1, 60 or 3600.</summary>
    public int WindowSeconds { get; init; } = 1;
    /// <summary>Requests that may pass at once from rest; 0 means <see cref="Rate"/>.</summary>
    public int Burst { get; init; }
    /// <summary>Requests per <see cref="QuotaPeriod"/>; 0 for no quota.</summary>
    public int Quota { get; init; }
    public QuotaPeriod QuotaPeriod { get; init; }

    public bool HasLimits => Rate > 0 || Quota > 0;
}

/// <summary>The compiled settings of one <c>rate_limit</c> policy.</summary>
internal sealed record RateLimitOptions
{
    public required string PolicyName { get; init; }
    public required RateLimitKeyKind KeyKind { get; init; }
    /// <summary>Lower-case header name for <see cref="RateLimitKeyKind.Header"/>; empty otherwise.</summary>
    public string HeaderName { get; init; } = "";
    /// <summary>The policy's own rate: requests per window; 0 when it has only plans or a quota.</summary>
    public int Rate { get; init; }
    /// <summary>The window in seconds: 1, 60 or 3600.</summary>
    public int WindowSeconds { get; init; } = 1;
    /// <summary>Requests that may pass at once from rest; 0 means <see cref="Rate"/>.</summary>
    public int Burst { get; init; }
    /// <summary>The policy's own quota per <see cref="QuotaPeriod"/>; 0 for none.</summary>
    public int Quota { get; init; }
    public QuotaPeriod QuotaPeriod { get; init; }
    /// <summary>Named plans, chosen by the verified identity's plan (<see cref="RequestIdentity.Plan"/>).</summary>
    public IReadOnlyList<RateLimitPlan> Plans { get; init; } = [];
    /// <summary>The plan for requests without a known plan; null: the policy's own limits, else the most restrictive plan.</summary>
    public string? DefaultPlan { get; init; }
    /// <summary>Buckets in the table (bounded memory: 16 bytes each, and 16 more per quota counter).</summary>
    public int Capacity { get; init; } = 65_536;
    /// <summary>Shared state in Redis instead of this process's tables; null for memory.</summary>
    public RedisStoreOptions? Redis { get; init; }
}

/// <summary>
/// The built-in <c>rate_limit</c> policy: GCRA per key over a fixed-size table (<see cref="GcraTable"/>), optional
/// quotas per calendar window (<see cref="QuotaTable"/>), per-plan limits picked from the verified identity, and
/// optionally shared state in Redis (<see cref="RedisRateLimitStore"/>). Answers a non-conforming request with 429,
/// <c>Retry-After</c> (RFC 9110 section 10.2.3) and the IETF draft's <c>RateLimit-Policy</c> / <c>RateLimit</c> fields
/// (draft-ietf-httpapi-ratelimit-headers, structured fields per RFC 8941), and an RFC 9457 problem body; allowed
/// requests get the two draft fields on their response. One instance per policy: every route and listener naming
/// the policy shares its budgets.
/// </summary>
internal sealed class RateLimitFilter : IAsyncRequestHeadersFilter
{
    public const string DetailsCode = "rate_limited";
    public const string QuotaDetailsCode = "quota_exceeded";
    public const string StoreErrorDetailsCode = "rate_limit_unavailable";

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();
    // Requests without a key: a byte sequence no header value or identity can be (field values never hold NUL,
    // RFC 9110 section 5.5).
    private static readonly byte[] s_anonymousKey = "\0anonymous"u8.ToArray();

    private readonly GcraTable _table;
    private readonly QuotaTable? _quotas;
    private readonly TimeProvider _time;
    private readonly RateLimitKeyKind _keyKind;
    private readonly byte[] _headerName;
    private readonly double _ticksPerSecond;
    private readonly CompiledPlan _ownPlan;
    private readonly CompiledPlan[] _plans;
    private readonly CompiledPlan _defaultPlan;
    private readonly RedisRateLimitStore? _redis;
    private readonly LocalBudgetTable? _budget;
    private readonly int _leaseUnits;
    private readonly byte[] _storeErrorBody;
    private readonly WindowClock?[] _windowClocks = new WindowClock?[4];
    private readonly PolicyDecisionCounts _counts;

    /// <param name="options">The compiled policy.</param>
    /// <param name="time">The clock; <see cref="TimeProvider.System"/> when null.</param>
    /// <param name="running">
    /// On a reload, the running filter of the same policy name, if any: when its state-relevant definition equals
    /// <paramref name="options"/>' (<see cref="SameState"/>) and it uses the same clock, this filter takes over its
    /// tables, the same instances, so every key keeps its budget and quota count across the reload. Both filters may
    /// then serve requests at once (the old snapshot's in flight, the new one's): the tables are thread-safe. Its decision counts go
    /// on in any case (<see cref="PolicyDecisionCounts"/>).
    /// </param>
    public RateLimitFilter(RateLimitOptions options, TimeProvider? time = null, RateLimitFilter? running = null)
    {
        Options = options;
        _time = time ?? TimeProvider.System;
        _keyKind = options.KeyKind;
        _headerName = Encoding.ASCII.GetBytes(options.HeaderName);
        _ticksPerSecond = _time.TimestampFrequency;
        _counts = PolicyDecisionCounts.ContinueFrom(running?._counts);

        RateLimitPlan own = OwnLimits(options);
        _ownPlan = new CompiledPlan(options.PolicyName, own, _time.TimestampFrequency);
        _plans = new CompiledPlan[options.Plans.Count];
        for (int i = 0; i < _plans.Length; i++)
        {
            _plans[i] = new CompiledPlan(options.PolicyName, options.Plans[i], _time.TimestampFrequency);
        }
        _defaultPlan = ChooseDefault(options, _ownPlan, _plans);
        if (!_defaultPlan.Limits.HasLimits)
        {
            throw new ArgumentException($"rate_limit policy '{options.PolicyName}' has no rate, quota or plan.");
        }

        bool anyQuota = own.Quota > 0;
        foreach (var plan in options.Plans)
        {
            anyQuota |= plan.Quota > 0;
        }
        // Timestamps in the tables (TATs, lease deadlines) only mean something on the clock that wrote them.
        bool carry = running is not null && ReferenceEquals(running._time, _time) && SameState(running.Options, options);
        if (options.Redis is { } redis)
        {
            _redis = new RedisRateLimitStore(options.PolicyName, redis);
            _leaseUnits = Math.Max(1, redis.LocalBudget);
            // Units leased from Redis and not yet spent: charged there already, so dropping them only wastes them.
            _budget = carry ? running!._budget : _leaseUnits > 1 ? new LocalBudgetTable(options.Capacity) : null;
            // The tables stay empty with Redis; keep them minimal.
            _table = carry ? running!._table : new GcraTable(GcraTable.Ways);
        }
        else
        {
            _table = carry ? running!._table : new GcraTable(options.Capacity);
            _quotas = carry ? running!._quotas : anyQuota ? new QuotaTable(options.Capacity) : null;
        }
        KeptState = carry;
        _storeErrorBody = BuildProblem(503, "Service Unavailable",
            $"The rate limit of policy '{options.PolicyName}' cannot be checked right now; retry after the number of seconds in Retry-After.");
    }

    public RateLimitOptions Options { get; }

    /// <summary>True when this filter took over the tables of the filter it replaced on a reload.</summary>
    internal bool KeptState { get; }

    /// <summary>
    /// Whether a reload may carry the in-memory state of a policy compiled from <paramref name="running"/> over to
    /// one compiled from <paramref name="next"/>: everything that decides what a table entry means and where it
    /// lives is equal. That is the policy's name; its <c>key</c>; its own <c>rate</c>, <c>burst</c> (a burst left
    /// out equals one spelled out as the rate) and <c>quota</c>; its <c>plans</c> (the same names with the same
    /// limits, in any order) and <c>default_plan</c>; the table size (<c>max_keys</c>, defaults resolved); and the
    /// <c>store</c>, with, for Redis, the same <c>address</c> and <c>local_budget</c> (the lease table). What only
    /// shapes answers or failures (<c>on_error</c>, <c>timeout</c>) and which routes or listeners name the policy do
    /// not count. Anything else changed: the policy starts with empty tables.
    /// </summary>
    internal static bool SameState(RateLimitOptions running, RateLimitOptions next)
    {
        if (running.PolicyName != next.PolicyName || running.KeyKind != next.KeyKind || running.HeaderName != next.HeaderName
            || running.DefaultPlan != next.DefaultPlan || running.Capacity != next.Capacity || running.Plans.Count != next.Plans.Count)
        {
            return false;
        }
        if (!SameLimits(OwnLimits(running), OwnLimits(next)))
        {
            return false;
        }
        if (running.Redis is { } a ? next.Redis is not { } b || a.Address != b.Address || a.LocalBudget != b.LocalBudget : next.Redis is not null)
        {
            return false;
        }
        foreach (RateLimitPlan plan in next.Plans)
        {
            bool found = false;
            foreach (RateLimitPlan was in running.Plans)
            {
                if (was.Name == plan.Name)
                {
                    found = SameLimits(was, plan);
                    break;
                }
            }
            if (!found)
            {
                return false;
            }
        }
        return true;
    }

    private static RateLimitPlan OwnLimits(RateLimitOptions options) => new()
    {
        Rate = options.Rate,
        WindowSeconds = options.WindowSeconds,
        Burst = options.Burst,
        Quota = options.Quota,
        QuotaPeriod = options.QuotaPeriod,
    };

    private static bool SameLimits(RateLimitPlan a, RateLimitPlan b)
        => a.Rate == b.Rate && (a.Rate == 0 || a.WindowSeconds == b.WindowSeconds)
        && (a.Burst > 0 ? a.Burst : a.Rate) == (b.Burst > 0 ? b.Burst : b.Rate)
        && a.Quota == b.Quota && (a.Quota == 0 || a.QuotaPeriod == b.QuotaPeriod);

    /// <summary>Requests let through since the policy was first compiled (a reload that keeps it keeps counting).</summary>
    public long AllowedCount => Volatile.Read(ref _counts.Allowed);

    /// <summary>Requests answered with 429 for the rate, counted as <see cref="AllowedCount"/>.</summary>
    public long LimitedCount => Volatile.Read(ref _counts.Limited);

    /// <summary>Requests answered with 429 for the quota, counted as <see cref="AllowedCount"/>.</summary>
    public long QuotaExceededCount => Volatile.Read(ref _counts.QuotaExceeded);

    /// <summary>Decisions the shared store (Redis) could not make, answered by <c>on_error</c>.</summary>
    public long StoreErrorCount => Volatile.Read(ref _counts.StoreErrors);

    internal GcraTable Table => _table;

    internal QuotaTable? Quotas => _quotas;

    internal RedisRateLimitStore? Redis => _redis;

    internal LocalBudgetTable? Budget => _budget;

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        if (_redis is not null)
        {
            if (_budget is not null && _budget.TryTake(KeyHash(context), _time.GetTimestamp()))
            {
                // A unit leased from Redis earlier: already charged there, so no round trip. What remains in Redis
                // is unknown here, so only RateLimit-Policy goes on the response.
                Interlocked.Increment(ref _counts.Allowed);
                context.AddResponseHeader("ratelimit-policy"u8, SelectPlan(context).PolicyField);
                return FilterStatus.Continue;
            }
            // Shared state needs a round trip: the chain runner calls ResumeRequestHeadersAsync.
            return FilterStatus.Pause;
        }
        CompiledPlan plan = SelectPlan(context);
        Decision decision = DecideLocal(KeyHash(context), plan);
        return Finish(context, plan, in decision);
    }

    /// <summary>The Redis store's decision: one EVALSHA of the GCRA and quota script.</summary>
    public async ValueTask<FilterStatus> ResumeRequestHeadersAsync(RequestContext context)
    {
        RedisRateLimitStore redis = _redis!;
        CompiledPlan plan = SelectPlan(context);
        byte[] key = RedisKey(context);
        long window = 0;
        long quotaReset = 0;
        if (plan.Limits.Quota > 0)
        {
            window = CurrentWindow(plan.Limits.QuotaPeriod, _time.GetTimestamp(), out quotaReset);
        }
        RedisDecision result;
        try
        {
            result = await redis.DecideAsync(key, plan, window, quotaReset, _leaseUnits).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            return StoreFailed(context, e);
        }
        if (result.Granted > 1 && _budget is not null)
        {
            // This request spends one unit; the rest stay here for 10 seconds (a unit left unspent is wasted: the
            // limit admits fewer, never more).
            _budget.Grant(KeyHash(context), (int)result.Granted - 1, _time.GetTimestamp() + 10 * _time.TimestampFrequency);
        }
        var decision = new Decision
        {
            Outcome = result.Outcome,
            RateRemaining = result.RateRemaining,
            RateResetSeconds = MicrosToSeconds(result.RateResetMicros),
            RetryAfterSeconds = result.Outcome == Outcome.QuotaExceeded ? quotaReset : MicrosToSeconds(result.RetryAfterMicros),
            QuotaRemaining = result.QuotaRemaining,
            QuotaResetSeconds = quotaReset,
        };
        return Finish(context, plan, in decision);
    }

    /// <summary>One decision for a raw key with the policy's default plan (tests and benchmarks); true when allowed.</summary>
    internal bool TryAcquire(ReadOnlySpan<byte> key, out long remaining, out long resetAfterTicks, out long retryAfterTicks)
    {
        CompiledPlan plan = _defaultPlan;
        return _table.TryAcquire(Hash(key), _time.GetTimestamp(), plan.Interval, plan.Tolerance, out remaining, out resetAfterTicks, out retryAfterTicks);
    }

    private FilterStatus Finish(RequestContext context, CompiledPlan plan, in Decision decision)
    {
        switch (decision.Outcome)
        {
            case Outcome.Allowed:
                Interlocked.Increment(ref _counts.Allowed);
                // Draft section 5: the fields may go on any response, so clients can pace themselves before a 429.
                WriteDraftFields(context, plan, in decision);
                return FilterStatus.Continue;
            case Outcome.QuotaExceeded:
                return Reject(context, plan, in decision, QuotaDetailsCode, plan.QuotaBody, ref _counts.QuotaExceeded);
            default:
                return Reject(context, plan, in decision, DetailsCode, plan.RateBody, ref _counts.Limited);
        }
    }

    private Decision DecideLocal(ulong hash, CompiledPlan plan)
    {
        var decision = new Decision { RateRemaining = -1, QuotaRemaining = -1 };
        RateLimitPlan limits = plan.Limits;
        long window = 0;
        if (limits.Quota > 0)
        {
            window = CurrentWindow(limits.QuotaPeriod, _time.GetTimestamp(), out decision.QuotaResetSeconds);
            if (!_quotas!.TryConsume(hash, window, limits.Quota, out decision.QuotaRemaining))
            {
                decision.Outcome = Outcome.QuotaExceeded;
                decision.RetryAfterSeconds = decision.QuotaResetSeconds;
                // The rate is not consulted (nor charged): report it as it stands, unknown here.
                decision.RateRemaining = -1;
                return decision;
            }
        }
        if (limits.Rate > 0)
        {
            if (!_table.TryAcquire(hash, _time.GetTimestamp(), plan.Interval, plan.Tolerance, out long remaining, out long reset, out long retry))
            {
                if (limits.Quota > 0)
                {
                    // A refused request is not charged against the quota either.
                    _quotas!.Refund(hash, window);
                    decision.QuotaRemaining++;
                }
                decision.Outcome = Outcome.RateLimited;
                decision.RetryAfterSeconds = Seconds(retry);
            }
            decision.RateRemaining = remaining;
            decision.RateResetSeconds = Seconds(reset);
        }
        return decision;
    }

    /// <summary>
    /// The current quota window of <paramref name="period"/> and the seconds until it ends (rounded up), from a
    /// cached boundary: the wall clock and calendar are consulted once per window, not per request.
    /// </summary>
    private long CurrentWindow(QuotaPeriod period, long now, out long resetSeconds)
    {
        // Immutable and swapped whole, so a reader sees a window with its own end (a race recomputes the same one).
        WindowClock? clock = Volatile.Read(ref _windowClocks[(int)period]);
        if (clock is null || now >= clock.EndsAt || now < clock.StartedAt)
        {
            clock = NextWindow(period, now);
        }
        resetSeconds = Seconds(clock.EndsAt - now);
        return clock.Window;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private WindowClock NextWindow(QuotaPeriod period, long now)
    {
        long window = QuotaWindow(period, _time.GetUtcNow(), out long reset);
        var clock = new WindowClock(window, now, now + reset * _time.TimestampFrequency);
        Volatile.Write(ref _windowClocks[(int)period], clock);
        return clock;
    }

    private sealed record WindowClock(long Window, long StartedAt, long EndsAt);

    /// <summary>
    /// The calendar window (UTC) a quota counts in, as a number (hours, days or months since 1970), and the seconds
    /// until it ends, rounded up.
    /// </summary>
    internal static long QuotaWindow(QuotaPeriod period, DateTimeOffset utcNow, out long resetSeconds)
    {
        long unixSeconds = utcNow.ToUnixTimeSeconds();
        switch (period)
        {
            case QuotaPeriod.Hour:
                resetSeconds = 3600 - unixSeconds % 3600;
                return unixSeconds / 3600;
            case QuotaPeriod.Day:
                resetSeconds = 86_400 - unixSeconds % 86_400;
                return unixSeconds / 86_400;
            default:
                DateTime now = utcNow.UtcDateTime;
                var start = new DateTime(now.Year, now.Month, 1, 0, 0, 0, DateTimeKind.Utc);
                resetSeconds = (long)Math.Ceiling((start.AddMonths(1) - now).TotalSeconds);
                return (now.Year - 1970) * 12L + now.Month - 1;
        }
    }

    private CompiledPlan SelectPlan(RequestContext context)
    {
        CompiledPlan[] plans = _plans;
        if (plans.Length != 0)
        {
            ReadOnlySpan<byte> name = context.Identity.Plan;
            if (!name.IsEmpty)
            {
                foreach (CompiledPlan plan in plans)
                {
                    if (name.SequenceEqual(plan.NameBytes))
                    {
                        return plan;
                    }
                }
            }
        }
        return _defaultPlan;
    }

    /// <summary>
    /// Requests without a known plan: the named <c>default_plan</c>; else the policy's own limits; else, the
    /// conservative choice, the plan with the lowest rate (then the smallest quota).
    /// </summary>
    private static CompiledPlan ChooseDefault(RateLimitOptions options, CompiledPlan own, CompiledPlan[] plans)
    {
        if (options.DefaultPlan is { } name)
        {
            foreach (CompiledPlan plan in plans)
            {
                if (plan.Limits.Name == name)
                {
                    return plan;
                }
            }
            throw new ArgumentException($"rate_limit policy '{options.PolicyName}': default_plan '{name}' is not one of its plans.");
        }
        if (own.Limits.HasLimits || plans.Length == 0)
        {
            return own;
        }
        CompiledPlan strictest = plans[0];
        foreach (CompiledPlan plan in plans)
        {
            if (Stricter(plan.Limits, strictest.Limits))
            {
                strictest = plan;
            }
        }
        return strictest;
    }

    private static bool Stricter(RateLimitPlan a, RateLimitPlan b)
    {
        // No rate counts as unlimited; compare requests per hour so 10/s and 100/m compare fairly.
        double rateA = a.Rate > 0 ? a.Rate * 3600.0 / a.WindowSeconds : double.MaxValue;
        double rateB = b.Rate > 0 ? b.Rate * 3600.0 / b.WindowSeconds : double.MaxValue;
        if (rateA != rateB)
        {
            return rateA < rateB;
        }
        long quotaA = a.Quota > 0 ? a.Quota : long.MaxValue;
        long quotaB = b.Quota > 0 ? b.Quota : long.MaxValue;
        return quotaA < quotaB;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Reject(RequestContext context, CompiledPlan plan, in Decision decision, string details, byte[] body, ref long counter)
    {
        Interlocked.Increment(ref counter);
        Span<byte> value = stackalloc byte[24];
        // RFC 9110 section 10.2.3: delay-seconds; rounded up so a client that waits exactly this long gets through.
        int n = Format(value, decision.RetryAfterSeconds);
        context.AddResponseHeader("retry-after"u8, value[..n]);
        WriteDraftFields(context, plan, in decision);
        return context.Respond(429, details, s_problemJson, body);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus StoreFailed(RequestContext context, Exception e)
    {
        Interlocked.Increment(ref _counts.StoreErrors);
        RedisRateLimitStore redis = _redis!;
        redis.ReportError(e);
        if (redis.Options.OnErrorAllow)
        {
            Interlocked.Increment(ref _counts.Allowed);
            return FilterStatus.Continue;
        }
        context.AddResponseHeader("retry-after"u8, "1"u8);
        return context.Respond(503, StoreErrorDetailsCode, s_problemJson, _storeErrorBody);
    }

    /// <summary>
    /// draft-ietf-httpapi-ratelimit-headers sections 3 and 4: <c>RateLimit-Policy</c> lists the plan's quota policies
    /// (precomputed) and <c>RateLimit</c> their current state, an sf-list of items <c>"name";r=remaining;t=seconds</c>
    /// (the rate's item first, then the quota's).
    /// </summary>
    private static void WriteDraftFields(RequestContext context, CompiledPlan plan, in Decision decision)
    {
        context.AddResponseHeader("ratelimit-policy"u8, plan.PolicyField);
        Span<byte> value = stackalloc byte[256];
        int n = 0;
        if (plan.Limits.Rate > 0 && decision.RateRemaining >= 0)
        {
            n = Item(value, plan.RatePrefix, decision.RateRemaining, decision.RateResetSeconds);
        }
        if (plan.Limits.Quota > 0 && decision.QuotaRemaining >= 0)
        {
            if (n != 0)
            {
                ", "u8.CopyTo(value[n..]);
                n += 2;
            }
            n += Item(value[n..], plan.QuotaPrefix, decision.QuotaRemaining, decision.QuotaResetSeconds);
        }
        if (n != 0)
        {
            context.AddResponseHeader("ratelimit"u8, value[..n]);
        }
    }

    private static int Item(Span<byte> destination, byte[] prefix, long remaining, long resetSeconds)
    {
        prefix.CopyTo(destination);
        int n = prefix.Length;
        n += Format(destination[n..], remaining);
        ";t="u8.CopyTo(destination[n..]);
        n += 3;
        n += Format(destination[n..], resetSeconds);
        return n;
    }

    private long Seconds(long ticks) => ticks <= 0 ? 0 : (long)Math.Ceiling(ticks / _ticksPerSecond);

    private static long MicrosToSeconds(long micros) => micros <= 0 ? 0 : (micros + 999_999) / 1_000_000;

    private static int Format(Span<byte> destination, long value)
    {
        Utf8Formatter.TryFormat(value, destination, out int written);
        return written;
    }

    private ulong KeyHash(RequestContext context) => Hash(KeyMaterial(context, stackalloc byte[16]));

    private byte[] RedisKey(RequestContext context) => _redis!.Key(KeyMaterial(context, stackalloc byte[16]));

    /// <summary>The bytes naming the request's bucket; <paramref name="scratch"/> (16 bytes) holds an address.</summary>
    private ReadOnlySpan<byte> KeyMaterial(RequestContext context, Span<byte> scratch)
    {
        ReadOnlySpan<byte> key;
        switch (_keyKind)
        {
            case RateLimitKeyKind.Header:
                context.TryGetHeader(_headerName, out key);
                break;
            case RateLimitKeyKind.ClientIp:
                key = context.ClientAddress.TryWriteBytes(scratch, out int written) ? scratch[..written] : default;
                break;
            case RateLimitKeyKind.Subject:
                key = context.Identity.Subject;
                break;
            case RateLimitKeyKind.ClientId:
                key = context.Identity.ClientId;
                break;
            case RateLimitKeyKind.Consumer:
                key = context.Identity.Consumer;
                break;
            default:
                return MemoryMarshal.AsBytes(context.RouteId.AsSpan());
        }
        return key.IsEmpty ? s_anonymousKey : key;
    }

    /// <summary>
    /// 64 bits from two passes of <see cref="HashCode"/> (xxHash32 with a per-process random seed, so clients cannot
    /// precompute keys that collide in one set); keys are short, and 64 bits keep accidental key collisions negligible.
    /// </summary>
    internal static ulong Hash(ReadOnlySpan<byte> key)
    {
        var low = new HashCode();
        low.AddBytes(key);
        var high = new HashCode();
        high.Add(0x5bd1e995);
        high.AddBytes(key);
        return ((ulong)(uint)high.ToHashCode() << 32) | (uint)low.ToHashCode();
    }

    internal static string Window(int seconds) => seconds switch
    {
        1 => "second",
        60 => "minute",
        _ => "hour",
    };

    internal static string PeriodName(QuotaPeriod period) => period switch
    {
        QuotaPeriod.Hour => "hour",
        QuotaPeriod.Day => "day",
        _ => "month",
    };

    /// <summary>The draft's <c>w</c> for a quota: the window's length in seconds (a month counts as 30 days).</summary>
    internal static int PeriodSeconds(QuotaPeriod period) => period switch
    {
        QuotaPeriod.Hour => 3600,
        QuotaPeriod.Day => 86_400,
        _ => 30 * 86_400,
    };

    /// <summary>An RFC 9457 problem details object: "about:blank" type, so the title is the status phrase (section 4.2.1).</summary>
    internal static byte[] BuildProblem(int status, string title, string detail)
    {
        using var stream = new MemoryStream();
        // Relaxed escaping keeps quotes readable; the body is served as JSON, never embedded in HTML.
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("type", "about:blank");
            json.WriteString("title", title);
            json.WriteNumber("status", status);
            json.WriteString("detail", detail);
            json.WriteEndObject();
        }
        return stream.ToArray();
    }

    internal enum Outcome : byte
    {
        Allowed = 0,
        RateLimited,
        QuotaExceeded,
    }

    /// <summary>One decision's numbers; -1 remaining means "not known" (the item is left out of <c>RateLimit</c>).</summary>
    private struct Decision
    {
        public Outcome Outcome;
        public long RateRemaining;
        public long RateResetSeconds;
        public long RetryAfterSeconds;
        public long QuotaRemaining;
        public long QuotaResetSeconds;
    }

    /// <summary>One plan's limits in timestamp ticks and its pre-encoded answer parts, built once.</summary>
    internal sealed class CompiledPlan
    {
        public CompiledPlan(string policyName, RateLimitPlan limits, long frequency)
        {
            Limits = limits;
            NameBytes = Encoding.UTF8.GetBytes(limits.Name);
            int burst = limits.Burst > 0 ? limits.Burst : limits.Rate;
            if (limits.Rate > 0)
            {
                // T = window / rate, in timestamp ticks; at least one tick so a huge rate cannot make requests free.
                Interval = Math.Max(1, (long)Math.Round((double)limits.WindowSeconds * frequency / limits.Rate));
                Tolerance = checked(Interval * burst);
                IntervalMicros = Math.Max(1, (long)Math.Round(limits.WindowSeconds * 1_000_000.0 / limits.Rate));
                ToleranceMicros = checked(IntervalMicros * burst);
            }
            // Item names: the policy, or "policy.plan"; the quota's item adds ".quota". Policy and plan names are
            // validated to [A-Za-z0-9._-], so they need no escaping inside an sf-string (RFC 8941 section 3.3.3).
            string name = limits.Name.Length == 0 ? policyName : $"{policyName}.{limits.Name}";
            var items = new List<string>();
            if (limits.Rate > 0)
            {
                items.Add($"\"{name}\";q={limits.Rate};w={limits.WindowSeconds}");
            }
            if (limits.Quota > 0)
            {
                items.Add($"\"{name}.quota\";q={limits.Quota};w={PeriodSeconds(limits.QuotaPeriod)}");
            }
            PolicyField = Encoding.ASCII.GetBytes(string.Join(", ", items));
            RatePrefix = Encoding.ASCII.GetBytes($"\"{name}\";r=");
            QuotaPrefix = Encoding.ASCII.GetBytes($"\"{name}.quota\";r=");
            string plan = limits.Name.Length == 0 ? "" : $" (plan '{limits.Name}')";
            RateBody = BuildProblem(429, "Too Many Requests",
                $"Rate limit of policy '{policyName}'{plan} exceeded ({limits.Rate} requests per {Window(limits.WindowSeconds)}, burst {burst}); retry after the number of seconds in Retry-After.");
            QuotaBody = BuildProblem(429, "Too Many Requests",
                $"Quota of policy '{policyName}'{plan} exhausted ({limits.Quota} requests per {PeriodName(limits.QuotaPeriod)}, UTC); retry after the number of seconds in Retry-After, when the window resets.");
        }

        public RateLimitPlan Limits { get; }
        public byte[] NameBytes { get; }
        public long Interval { get; }
        public long Tolerance { get; }
        public long IntervalMicros { get; }
        public long ToleranceMicros { get; }
        public byte[] PolicyField { get; }
        public byte[] RatePrefix { get; }
        public byte[] QuotaPrefix { get; }
        public byte[] RateBody { get; }
        public byte[] QuotaBody { get; }
    }
}
