using System.Buffers.Text;
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
}

/// <summary>The compiled settings of one <c>rate_limit</c> policy.</summary>
internal sealed record RateLimitOptions
{
    public required string PolicyName { get; init; }
    public required RateLimitKeyKind KeyKind { get; init; }
    /// <summary>Lower-case header name for <see cref="RateLimitKeyKind.Header"/>; empty otherwise.</summary>
    public string HeaderName { get; init; } = "";
    /// <summary>Requests per window (the <c>N</c> of <c>N/s</c>).</summary>
    public required int Rate { get; init; }
    /// <summary>The window in seconds: 1, 60 or 3600.</summary>
    public required int WindowSeconds { get; init; }
    /// <summary>Requests that may pass at once from rest.</summary>
    public required int Burst { get; init; }
    /// <summary>Buckets in the table (bounded memory: 16 bytes each).</summary>
    public int Capacity { get; init; } = 65_536;
}

/// <summary>
/// The built-in <c>rate_limit</c> policy: GCRA per key over a fixed-size table (<see cref="GcraTable"/>). Answers a
/// non-conforming request with 429, <c>Retry-After</c> (RFC 9110 section 10.2.3) and the IETF draft's
/// <c>RateLimit-Policy</c> / <c>RateLimit</c> fields (draft-ietf-httpapi-ratelimit-headers, structured fields per
/// RFC 8941), and an RFC 9457 problem body. One instance per policy: every route and listener naming the policy
/// shares its budgets.
/// </summary>
internal sealed class RateLimitFilter : IRequestHeadersFilter
{
    public const string DetailsCode = "rate_limited";

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();
    // Requests without the key header: a byte sequence no header value can be (field values never hold NUL, RFC 9110 section 5.5).
    private static readonly byte[] s_anonymousKey = "\0anonymous"u8.ToArray();

    private readonly GcraTable _table;
    private readonly TimeProvider _time;
    private readonly RateLimitKeyKind _keyKind;
    private readonly byte[] _headerName;
    private readonly long _interval;
    private readonly long _tolerance;
    private readonly double _ticksPerSecond;
    private readonly byte[] _policyField;
    private readonly byte[] _rateLimitPrefix;
    private readonly byte[] _body;
    private long _allowed;
    private long _limited;

    public RateLimitFilter(RateLimitOptions options, TimeProvider? time = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(options.Rate, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.Burst, 1);
        Options = options;
        _time = time ?? TimeProvider.System;
        _table = new GcraTable(options.Capacity);
        _keyKind = options.KeyKind;
        _headerName = Encoding.ASCII.GetBytes(options.HeaderName);
        long frequency = _time.TimestampFrequency;
        _ticksPerSecond = frequency;
        // T = window / rate, in timestamp ticks; at least one tick so a huge rate cannot make requests free.
        _interval = Math.Max(1, (long)Math.Round((double)options.WindowSeconds * frequency / options.Rate));
        _tolerance = checked(_interval * options.Burst);

        // draft-ietf-httpapi-ratelimit-headers section 3: RateLimit-Policy = sf-list of quota policies, each an
        // sf-string naming it with parameters q (quota units) and w (window, seconds). Names are validated to be
        // [A-Za-z0-9._-], so they need no escaping inside the sf-string.
        string name = options.PolicyName;
        _policyField = Encoding.ASCII.GetBytes($"\"{name}\";q={options.Rate};w={options.WindowSeconds}");
        // Section 4: RateLimit = sf-list of the policies' current state: r (remaining units), t (seconds until reset).
        _rateLimitPrefix = Encoding.ASCII.GetBytes($"\"{name}\";r=");
        _body = BuildProblem(429, "Too Many Requests",
            $"Rate limit of policy '{name}' exceeded ({options.Rate} requests per {Window(options.WindowSeconds)}, burst {options.Burst}); retry after the number of seconds in Retry-After.");
    }

    public RateLimitOptions Options { get; }

    /// <summary>Requests let through since the policy was compiled.</summary>
    public long AllowedCount => Volatile.Read(ref _allowed);

    /// <summary>Requests answered with 429 since the policy was compiled.</summary>
    public long LimitedCount => Volatile.Read(ref _limited);

    internal GcraTable Table => _table;

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        ulong hash = KeyHash(context);
        long now = _time.GetTimestamp();
        if (_table.TryAcquire(hash, now, _interval, _tolerance, out long remaining, out long resetAfter, out long retryAfter))
        {
            Interlocked.Increment(ref _allowed);
            return FilterStatus.Continue;
        }
        return Reject(context, remaining, resetAfter, retryAfter);
    }

    /// <summary>One decision for a raw key (tests and benchmarks); true when allowed.</summary>
    internal bool TryAcquire(ReadOnlySpan<byte> key, out long remaining, out long resetAfterTicks, out long retryAfterTicks)
        => _table.TryAcquire(Hash(key), _time.GetTimestamp(), _interval, _tolerance, out remaining, out resetAfterTicks, out retryAfterTicks);

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private FilterStatus Reject(RequestContext context, long remaining, long resetAfter, long retryAfter)
    {
        Interlocked.Increment(ref _limited);
        Span<byte> value = stackalloc byte[128];

        // RFC 9110 section 10.2.3: delay-seconds; rounded up so a client that waits exactly this long gets through.
        int n = Format(value, Seconds(retryAfter));
        context.AddResponseHeader("retry-after"u8, value[..n]);
        context.AddResponseHeader("ratelimit-policy"u8, _policyField);
        _rateLimitPrefix.CopyTo(value);
        n = _rateLimitPrefix.Length;
        n += Format(value[n..], remaining);
        ";t="u8.CopyTo(value[n..]);
        n += 3;
        n += Format(value[n..], Seconds(resetAfter));
        context.AddResponseHeader("ratelimit"u8, value[..n]);
        return context.Respond(429, DetailsCode, s_problemJson, _body);
    }

    private long Seconds(long ticks) => ticks <= 0 ? 0 : (long)Math.Ceiling(ticks / _ticksPerSecond);

    private static int Format(Span<byte> destination, long value)
    {
        Utf8Formatter.TryFormat(value, destination, out int written);
        return written;
    }

    private ulong KeyHash(RequestContext context)
    {
        switch (_keyKind)
        {
            case RateLimitKeyKind.Header:
                return context.TryGetHeader(_headerName, out ReadOnlySpan<byte> value) && !value.IsEmpty ? Hash(value) : Hash(s_anonymousKey);
            case RateLimitKeyKind.ClientIp:
                Span<byte> address = stackalloc byte[16];
                return context.ClientAddress.TryWriteBytes(address, out int written) ? Hash(address[..written]) : Hash(s_anonymousKey);
            default:
                return Hash(MemoryMarshal.AsBytes(context.RouteId.AsSpan()));
        }
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

    private static string Window(int seconds) => seconds switch
    {
        1 => "second",
        60 => "minute",
        _ => "hour",
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
}
