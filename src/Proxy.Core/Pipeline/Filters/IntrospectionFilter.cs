using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Http;

namespace Proxy.Pipeline.Filters;

/// <summary>The outcome of checking one token; each maps to one answer and one details code.</summary>
internal enum IntrospectionOutcome : byte
{
    Active = 0,
    /// <summary>No Authorization field, or not the Bearer scheme (RFC 6750 section 3.1: no error code then).</summary>
    Missing,
    /// <summary>Not a b64token (RFC 6750 section 2.1) or too long: refused without asking the server.</summary>
    Malformed,
    /// <summary>The server said <c>active: false</c> (or the token's <c>exp</c> has passed).</summary>
    Inactive,
    /// <summary>Active, but without a required scope (403).</summary>
    InsufficientScope,
    /// <summary>The server could not be asked: refused, timed out, or answered something unusable (503).</summary>
    Unavailable,
}

/// <summary>The compiled settings of one <c>introspection</c> policy.</summary>
internal sealed record IntrospectionOptions
{
    public required string PolicyName { get; init; }
    /// <summary>The introspection endpoint (RFC 7662 section 2).</summary>
    public required Uri Url { get; init; }
    public required string ClientId { get; init; }
    public required string ClientSecret { get; init; }
    /// <summary>Scopes an active token must all carry in its <c>scope</c>; at most 64.</summary>
    public IReadOnlyList<string> RequiredScopes { get; init; } = [];
    /// <summary>Answers remembered at most (the cache never holds more).</summary>
    public int CacheMax { get; init; } = 10_000;
    /// <summary>Longest an active answer is reused (never past the token's own <c>exp</c>).</summary>
    public TimeSpan CacheTtl { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>How long an inactive answer is reused (capped by <see cref="CacheTtl"/>).</summary>
    public TimeSpan InactiveTtl { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Deadline of one introspection call.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Headers that carry the verified identity upstream; null when the policy forwards nothing.</summary>
    public IdentityForwardingOptions? ForwardIdentity { get; init; }
}

/// <summary>
/// The built-in <c>introspection</c> policy: requires a bearer token (RFC 6750 section 2.1) and asks the authorization
/// server whether it is active (OAuth 2.0 Token Introspection, RFC 7662), for opaque tokens a proxy cannot verify
/// itself. Answers are cached by the token's SHA-256 (<see cref="IntrospectionCache"/>) until the token's <c>exp</c> or
/// <c>cache_ttl</c>, whichever comes first; inactive answers for <c>InactiveTtl</c>, so a flood of bad tokens costs one
/// call per token, not one per request. A cached token is decided synchronously without allocating; a miss returns
/// <see cref="FilterStatus.Pause"/> and is finished by <see cref="ResumeRequestHeadersAsync"/>, with concurrent misses
/// for one token sharing one call. Refusals are RFC 6750 section 3 challenges with an RFC 9457 problem body; an
/// unreachable server is a 503 (<c>introspection_unavailable</c>), logged at most once per 10 seconds.
/// </summary>
internal sealed class IntrospectionFilter : IAsyncRequestHeadersFilter, IPolicyDecisionCounters
{
    /// <summary>Longest token accepted (and sent to the server).</summary>
    public const int MaxTokenBytes = 8 * 1024;

    private const int MaxScopes = 64;

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();

    // RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" (the '=' padding
    // is allowed anywhere here: stricter placement would only refuse tokens the server refuses anyway).
    private static readonly SearchValues<byte> s_b64token =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="u8);

    // Indexed by IntrospectionOutcome.
    private static readonly string[] s_details =
        ["", "introspection_missing", "introspection_malformed", "introspection_inactive", "introspection_scope", "introspection_unavailable"];

    private static readonly string[] s_descriptions =
        ["", "", "The token is not a well-formed bearer token", "The token is not active", "The token lacks a required scope", ""];

    private readonly IntrospectionClient _client;
    private readonly IntrospectionCache _cache;
    private readonly TimeProvider _time;
    private readonly byte[][] _scopes;
    private readonly ulong _allScopes;
    private readonly long _cacheTtlMs;
    private readonly long _inactiveTtlMs;
    private readonly IdentityForwarding? _forwarding;
    private readonly byte[][] _challenges;
    private readonly byte[][] _bodies;
    // Misses being asked about right now, by token: later requests for the same token wait on the same call.
    private readonly ConcurrentDictionary<TokenDigest, Task<IntrospectionCache.Entry>> _inflight = new();
    private readonly PolicyDecisionCounts _counts;
    private long _calls;
    private long _lastErrorLog;
    private long _errorsSinceLog;

    /// <param name="options">The compiled policy.</param>
    /// <param name="time">The clock; <see cref="TimeProvider.System"/> when null.</param>
    /// <param name="running">
    /// On a reload, the running filter of the same policy name, if any: when it asks the same endpoint with the same
    /// credentials for the same required scopes, with the same cache size and TTL on the same clock
    /// (<see cref="SameCache"/>), this filter takes over its cache, the same instance, so a reload does not send every
    /// token in use back to the authorization server. Both filters may then serve requests at once: the cache is
    /// thread-safe. Its decision counts go on in any case (<see cref="PolicyDecisionCounts"/>).
    /// </param>
    public IntrospectionFilter(IntrospectionOptions options, TimeProvider? time = null, IntrospectionFilter? running = null)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.RequiredScopes.Count, MaxScopes);
        Options = options;
        _time = time ?? TimeProvider.System;
        _counts = PolicyDecisionCounts.ContinueFrom(running?._counts);
        _client = new IntrospectionClient(options.Url, options.ClientId, options.ClientSecret, options.Timeout);
        KeptCache = running is not null && ReferenceEquals(running._time, _time) && SameCache(running.Options, options);
        _cache = KeptCache ? running!._cache : new IntrospectionCache(options.CacheMax);
        _scopes = options.RequiredScopes.Select(Encoding.UTF8.GetBytes).ToArray();
        _allScopes = _scopes.Length == MaxScopes ? ulong.MaxValue : (1UL << _scopes.Length) - 1;
        _cacheTtlMs = (long)options.CacheTtl.TotalMilliseconds;
        _inactiveTtlMs = (long)Math.Min(options.InactiveTtl.TotalMilliseconds, options.CacheTtl.TotalMilliseconds);
        _forwarding = options.ForwardIdentity is { IsEmpty: false } forward ? new IdentityForwarding(forward) : null;

        string name = options.PolicyName;
        _challenges = new byte[s_details.Length][];
        _bodies = new byte[s_details.Length][];
        for (int i = 1; i < s_details.Length; i++)
        {
            var outcome = (IntrospectionOutcome)i;
            // RFC 6750 section 3: auth-param values are quoted strings; policy names and scopes are validated to
            // need no escaping.
            string challenge = $"Bearer realm=\"{name}\"";
            string detail;
            int status = 401;
            switch (outcome)
            {
                case IntrospectionOutcome.Missing:
                    detail = $"A bearer token is required by policy '{name}'.";
                    break;
                case IntrospectionOutcome.InsufficientScope:
                    status = 403;
                    challenge += $", error=\"insufficient_scope\", error_description=\"{s_descriptions[i]}\", scope=\"{string.Join(' ', options.RequiredScopes)}\"";
                    detail = $"Policy '{name}' requires the scopes: {string.Join(' ', options.RequiredScopes)}.";
                    break;
                case IntrospectionOutcome.Unavailable:
                    status = 503;
                    challenge = "";
                    detail = $"The token of this request cannot be checked right now (policy '{name}'); retry after the number of seconds in Retry-After.";
                    break;
                default:
                    challenge += $", error=\"invalid_token\", error_description=\"{s_descriptions[i]}\"";
                    detail = $"{s_descriptions[i]} (policy '{name}').";
                    break;
            }
            _challenges[i] = Encoding.ASCII.GetBytes(challenge);
            _bodies[i] = RateLimitFilter.BuildProblem(status, status switch { 401 => "Unauthorized", 403 => "Forbidden", _ => "Service Unavailable" }, detail);
        }
    }

    public IntrospectionOptions Options { get; }

    /// <summary>Requests let through since the policy was first compiled (a reload that keeps it keeps counting).</summary>
    public long AllowedCount => Volatile.Read(ref _counts.Allowed);

    /// <summary>Requests answered 401 or 403.</summary>
    public long RejectedCount => Volatile.Read(ref _counts.Rejected);

    /// <summary>Requests answered 503 because the server could not be asked.</summary>
    public long UnavailableCount => Volatile.Read(ref _counts.Unavailable);

    /// <summary>Calls made to the introspection endpoint (cache misses, concurrent ones counted once).</summary>
    public long CallCount => Volatile.Read(ref _calls);

    internal IntrospectionCache Cache => _cache;

    /// <summary>True when this filter took over the cache of the filter it replaced on a reload.</summary>
    internal bool KeptCache { get; }

    /// <summary>
    /// Whether the answers cached under <paramref name="running"/> mean the same under <paramref name="next"/>: the
    /// same endpoint and client credentials (what the server answers, and to whom), the same required scopes in the
    /// same order (an entry keeps which of them the token carries as bits), and the same <c>cache_max</c> and
    /// <c>cache_ttl</c> (the table's size, and how long the entries in it were given). <c>timeout</c> and
    /// <c>forward_identity</c> do not count: entries keep the subject and client id whatever is forwarded.
    /// </summary>
    internal static bool SameCache(IntrospectionOptions running, IntrospectionOptions next)
        => running.Url == next.Url && running.ClientId == next.ClientId && running.ClientSecret == next.ClientSecret
            && running.RequiredScopes.SequenceEqual(next.RequiredScopes, StringComparer.Ordinal)
            && running.CacheMax == next.CacheMax && running.CacheTtl == next.CacheTtl && running.InactiveTtl == next.InactiveTtl;

    IEnumerable<(string Decision, long Count)> IPolicyDecisionCounters.Decisions =>
        [("allowed", AllowedCount), ("rejected", RejectedCount), ("unavailable", UnavailableCount)];

    public static string DetailsCode(IntrospectionOutcome outcome) => s_details[(int)outcome];

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        IntrospectionOutcome early = ReadToken(context, out ReadOnlySpan<byte> token);
        if (early != IntrospectionOutcome.Active)
        {
            return Reject(context, early);
        }
        IntrospectionCache.Entry? entry = _cache.TryGet(TokenDigest.Of(token), Now());
        // A miss needs a round trip: the chain runner calls ResumeRequestHeadersAsync.
        return entry is null ? FilterStatus.Pause : Decide(context, entry);
    }

    /// <summary>A miss: one call to the server (shared with concurrent misses for the same token), then the decision.</summary>
    public async ValueTask<FilterStatus> ResumeRequestHeadersAsync(RequestContext context)
    {
        if (!TryBeginLookup(context, out TokenDigest digest, out string? token, out IntrospectionCache.Entry? cached, out FilterStatus early))
        {
            return early;
        }
        if (cached is not null)
        {
            return Decide(context, cached);
        }
        IntrospectionCache.Entry entry;
        try
        {
            entry = await LookupAsync(digest, token!).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            return Unavailable(context, e);
        }
        return Decide(context, entry);
    }

    /// <summary>
    /// The synchronous start of a resumed lookup (spans cannot cross an await): the token as text for the form body, or
    /// the answer when it is already known (another request filled the cache meanwhile).
    /// </summary>
    private bool TryBeginLookup(RequestContext context, out TokenDigest digest, out string? token, out IntrospectionCache.Entry? cached, out FilterStatus early)
    {
        digest = default;
        token = null;
        cached = null;
        early = FilterStatus.Continue;
        IntrospectionOutcome outcome = ReadToken(context, out ReadOnlySpan<byte> bytes);
        if (outcome != IntrospectionOutcome.Active)
        {
            early = Reject(context, outcome);
            return false;
        }
        digest = TokenDigest.Of(bytes);
        cached = _cache.TryGet(digest, Now());
        if (cached is null)
        {
            // A b64token is ASCII (checked in ReadToken).
            token = Encoding.ASCII.GetString(bytes);
        }
        return true;
    }

    private Task<IntrospectionCache.Entry> LookupAsync(TokenDigest digest, string token)
    {
        if (_inflight.TryGetValue(digest, out var pending))
        {
            return pending;
        }
        var completion = new TaskCompletionSource<IntrospectionCache.Entry>(TaskCreationOptions.RunContinuationsAsynchronously);
        pending = _inflight.GetOrAdd(digest, completion.Task);
        if (pending == completion.Task)
        {
            _ = CallAsync(digest, token, completion);
        }
        return pending;
    }

    private async Task CallAsync(TokenDigest digest, string token, TaskCompletionSource<IntrospectionCache.Entry> completion)
    {
        try
        {
            Interlocked.Increment(ref _calls);
            IntrospectionResult result = await _client.IntrospectAsync(token, _scopes).ConfigureAwait(false);
            long now = Now();
            IntrospectionCache.Entry entry = ToEntry(digest, in result, now);
            // Cached before the call leaves the in-flight map, so a request arriving in between finds one or the other.
            _cache.Add(entry, now);
            completion.SetResult(entry);
        }
        catch (Exception e)
        {
            completion.SetException(e);
        }
        finally
        {
            _inflight.TryRemove(new KeyValuePair<TokenDigest, Task<IntrospectionCache.Entry>>(digest, completion.Task));
        }
    }

    /// <summary>
    /// The cache entry for an answer: an active token until its <c>exp</c> or <c>cache_ttl</c>, whichever is first
    /// (RFC 7662 section 4: a cached answer must not outlive the token); an inactive one (or one whose <c>exp</c> has
    /// already passed) for the short inactive TTL.
    /// </summary>
    internal IntrospectionCache.Entry ToEntry(TokenDigest digest, in IntrospectionResult result, long now)
    {
        long expiresMs = result.ExpiresAt > 0 ? result.ExpiresAt * 1000 : long.MaxValue;
        bool active = result.Active && expiresMs > now;
        long until = active ? Math.Min(expiresMs, now + _cacheTtlMs) : now + _inactiveTtlMs;
        return new IntrospectionCache.Entry(digest, active, until, result.Subject, result.ClientId, result.Scopes);
    }

    private FilterStatus Decide(RequestContext context, IntrospectionCache.Entry entry)
    {
        if (!entry.Active)
        {
            return Reject(context, IntrospectionOutcome.Inactive);
        }
        if (_scopes.Length > 0 && (entry.Scopes & _allScopes) != _allScopes)
        {
            return Reject(context, IntrospectionOutcome.InsufficientScope);
        }
        context.Identity.SetToken(entry.Subject, entry.ClientId);
        _forwarding?.Apply(context);
        Interlocked.Increment(ref _counts.Allowed);
        return FilterStatus.Continue;
    }

    private long Now() => _time.GetUtcNow().ToUnixTimeMilliseconds();

    /// <summary>RFC 6750 section 2.1: <c>Authorization: Bearer 1*SP b64token</c> (read by <see cref="BearerCredentials"/>).</summary>
    private static IntrospectionOutcome ReadToken(RequestContext context, out ReadOnlySpan<byte> token)
    {
        context.TryGetHeader("authorization"u8, out ReadOnlySpan<byte> value);
        return BearerCredentials.Read(value, out token) switch
        {
            BearerStatus.Token => token.Length > MaxTokenBytes || token.IndexOfAnyExcept(s_b64token) >= 0
                ? IntrospectionOutcome.Malformed : IntrospectionOutcome.Active,
            BearerStatus.Malformed => IntrospectionOutcome.Malformed,
            _ => IntrospectionOutcome.Missing,
        };
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Reject(RequestContext context, IntrospectionOutcome outcome)
    {
        Interlocked.Increment(ref _counts.Rejected);
        int i = (int)outcome;
        // RFC 6750 section 3: every 401 and 403 from a bearer-protected resource carries the challenge.
        context.AddResponseHeader("www-authenticate"u8, _challenges[i]);
        return context.Respond(outcome == IntrospectionOutcome.InsufficientScope ? 403 : 401, s_details[i], s_problemJson, _bodies[i]);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Unavailable(RequestContext context, Exception e)
    {
        Interlocked.Increment(ref _counts.Unavailable);
        ReportError(e);
        context.AddResponseHeader("retry-after"u8, "1"u8);
        int i = (int)IntrospectionOutcome.Unavailable;
        return context.Respond(503, s_details[i], s_problemJson, _bodies[i]);
    }

    /// <summary>
    /// Logs a failed call at most once per 10 seconds per policy (an outage would otherwise log every request), with
    /// the number of failures since the last line.
    /// </summary>
    private void ReportError(Exception e)
    {
        long count = Interlocked.Increment(ref _errorsSinceLog);
        long now = Environment.TickCount64;
        long last = Volatile.Read(ref _lastErrorLog);
        if ((last != 0 && now - last < 10_000) || Interlocked.CompareExchange(ref _lastErrorLog, now, last) != last)
        {
            return;
        }
        Interlocked.Add(ref _errorsSinceLog, -count);
        string error = e is OperationCanceledException ? $"timed out after {Options.Timeout.TotalMilliseconds:0} ms" : e.GetType().Name + ": " + e.Message;
        ProxyLog.Warn("introspection_unavailable", ("policy", Options.PolicyName), ("url", Options.Url.ToString()), ("failures", count), ("error", error));
    }
}
