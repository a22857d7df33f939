using System.Security.Cryptography;
using Proxy.Diagnostics;

namespace Proxy.Pipeline.Filters;

/// <summary>Where a <c>jwt</c> policy's remote key set comes from and how often it is refreshed.</summary>
internal sealed record JwksSourceOptions
{
    public required Uri Url { get; init; }
    /// <summary>Refetch period (<c>jwks_refresh</c>).</summary>
    public TimeSpan Refresh { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>Least time between two fetches caused by an unknown <c>kid</c> (<c>jwks_min_refetch</c>).</summary>
    public TimeSpan MinRefetch { get; init; } = TimeSpan.FromSeconds(30);
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// A JWKS fetched over HTTP (RFC 7517 section 5) in the background: once when the policy is compiled, then every
/// <c>jwks_refresh</c>, and early when a token names an unknown <c>kid</c> (key rotation), at most once per
/// <c>jwks_min_refetch</c> so a flood of made-up kids cannot turn into a flood of fetches. A failed fetch keeps the
/// last good set. The data plane only reads <see cref="Keys"/> (one volatile read) and never waits for a fetch.
/// A fetch that brings a different set publishes a new array, and the policy's verified tokens, which name the array
/// they were checked against, are checked again against it; a fetch that brings the same body keeps the array, so a
/// scheduled refresh costs no signature check.
/// </summary>
/// <remarks>
/// Concurrency: <see cref="Keys"/> is an immutable array swapped whole; fetches are serialised by <c>_fetching</c>,
/// which also guards <c>_keysSha256</c> (read and written by fetches only).
/// Lifetime: the timer holds only a weak reference to this source, so when a reload drops the policy's filter, the
/// timer stops itself at its next tick.
/// </remarks>
internal sealed class JwksSource
{
    /// <summary>
    /// Largest key set read. Real ones are a few KiB (a dozen RSA keys with certificate chains stay under 64 KiB); a
    /// larger body fails the fetch, so a broken or hostile key server cannot make the proxy buffer without bound.
    /// </summary>
    public const int MaxResponseBytes = 1024 * 1024;

    private static readonly HttpClient s_client = new(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(5) })
    {
        // GetAsync buffers the body and fails once it passes this (at once when Content-Length declares more).
        MaxResponseContentBufferSize = MaxResponseBytes,
    };

    private readonly TimeProvider _time;
    private readonly string _policyName;
    private ITimer? _timer;
    private JsonWebKey[] _keys = [];
    /// <summary>The SHA-256 of the body <see cref="_keys"/> was parsed from; null for a seed or before the first fetch.</summary>
    private byte[]? _keysSha256;
    private long _lastFetchTimestamp = long.MinValue;
    private int _fetching;
    private long _fetchCount;

    /// <param name="policyName">The <c>jwt</c> policy, named in the fetch's log lines.</param>
    /// <param name="options">The URL and the schedule.</param>
    /// <param name="time">The clock; <see cref="TimeProvider.System"/> when null.</param>
    /// <param name="seed">The keys to serve until the first fetch succeeds: on a reload, the last good set of the source
    /// this one replaces (same URL), so tokens go on verifying while it fetches, or while the key server is down.</param>
    public JwksSource(string policyName, JwksSourceOptions options, TimeProvider? time = null, JsonWebKey[]? seed = null)
    {
        _policyName = policyName;
        Options = options;
        _time = time ?? TimeProvider.System;
        _keys = seed ?? [];
    }

    public JwksSourceOptions Options { get; }

    /// <summary>The clock of the refresh timer and of the refetch interval.</summary>
    internal TimeProvider Time => _time;

    /// <summary>The current keys; empty until the first successful fetch.</summary>
    public JsonWebKey[] Keys => Volatile.Read(ref _keys);

    /// <summary>Completed fetch attempts (successful or not).</summary>
    public long FetchCount => Volatile.Read(ref _fetchCount);

    /// <summary>Starts the first fetch and the refresh timer.</summary>
    public void Start()
    {
        // The callback state holds the source weakly and the timer through a box, so the timer can stop itself
        // once the source (and the filter owning it) is gone.
        var box = new ITimer?[1];
        _timer = _time.CreateTimer(static state =>
        {
            var (reference, timer) = ((WeakReference<JwksSource>, ITimer?[]))state!;
            if (reference.TryGetTarget(out var source))
            {
                source.TriggerFetch(force: true);
            }
            else
            {
                timer[0]?.Dispose();
            }
        }, (new WeakReference<JwksSource>(this), box), Options.Refresh, Options.Refresh);
        box[0] = _timer;
        TriggerFetch(force: true);
    }

    /// <summary>
    /// Called on the data plane when a token names a kid the set does not hold: fetches again unless the last fetch
    /// started less than <c>jwks_min_refetch</c> ago. Never blocks; the token at hand is refused either way.
    /// </summary>
    public void OnUnknownKey() => TriggerFetch(force: false);

    /// <summary>Fetches now and waits (tests and the first fetch of a reload).</summary>
    public Task<bool> FetchAsync() => FetchCoreAsync();

    private void TriggerFetch(bool force)
    {
        long now = _time.GetTimestamp();
        long last = Volatile.Read(ref _lastFetchTimestamp);
        if (!force && last != long.MinValue && _time.GetElapsedTime(last, now) < Options.MinRefetch)
        {
            return;
        }
        if (Interlocked.CompareExchange(ref _fetching, 1, 0) != 0)
        {
            return;
        }
        Volatile.Write(ref _lastFetchTimestamp, now);
        _ = Task.Run(async () =>
        {
            try
            {
                await FetchOnceAsync().ConfigureAwait(false);
            }
            finally
            {
                Volatile.Write(ref _fetching, 0);
            }
        });
    }

    private async Task<bool> FetchCoreAsync()
    {
        while (Interlocked.CompareExchange(ref _fetching, 1, 0) != 0)
        {
            await Task.Delay(10).ConfigureAwait(false);
        }
        try
        {
            Volatile.Write(ref _lastFetchTimestamp, _time.GetTimestamp());
            return await FetchOnceAsync().ConfigureAwait(false);
        }
        finally
        {
            Volatile.Write(ref _fetching, 0);
        }
    }

    private async Task<bool> FetchOnceAsync()
    {
        try
        {
            using var cts = new CancellationTokenSource(Options.Timeout);
            using var response = await s_client.GetAsync(Options.Url, cts.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                ProxyLog.Error("jwks_fetch_failed", ("policy", _policyName), ("url", Options.Url.ToString()), ("error", $"HTTP {(int)response.StatusCode}"));
                return false;
            }
            byte[] body = await response.Content.ReadAsByteArrayAsync(cts.Token).ConfigureAwait(false);
            byte[] sha256 = SHA256.HashData(body);
            if (_keysSha256 is { } current && current.AsSpan().SequenceEqual(sha256))
            {
                // The same set: the array (and every cache entry naming it) stays. A body that differs only in
                // spacing or key order is taken as a new set, which costs one check per token in use, nothing more.
                return true;
            }
            JsonWebKey[] keys = JsonWebKeySet.Parse(body);
            if (keys.Length == 0)
            {
                ProxyLog.Error("jwks_fetch_failed", ("policy", _policyName), ("url", Options.Url.ToString()), ("error", "no usable signing key"));
                return false;
            }
            _keysSha256 = sha256;
            Volatile.Write(ref _keys, keys);
            return true;
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException or FormatException or IOException)
        {
            // The last good set stays in use; an empty set (never fetched) refuses tokens with jwt_keys_unavailable.
            ProxyLog.Error("jwks_fetch_failed", ("policy", _policyName), ("url", Options.Url.ToString()), ("error", e.Message));
            return false;
        }
        finally
        {
            Interlocked.Increment(ref _fetchCount);
        }
    }
}
