using Proxy.Model;

namespace Proxy.Upstream;

/// <summary>
/// Bounds retries so they cannot multiply load on a struggling cluster (a retry storm): retries in flight may be at
/// most <c>budget_percent</c> of the cluster's requests in flight, but never fewer than <see cref="MinRetries"/>, so a
/// quiet cluster can still retry. Also computes the backoff. Counters are interlocked; one add per request.
/// </summary>
internal sealed class RetryBudget
{
    /// <summary>Retries always allowed in flight whatever the percentage gives (Envoy's min_retry_concurrency is 3; one is safer for small clusters).</summary>
    public const int MinRetries = 1;

    private int _requests;
    private int _retries;
    private long _retried;
    private long _denied;
    private long _bodyTooLarge;

    public RetryBudget(RetryModel model) => Model = model;

    public RetryModel Model { get; }
    public int RequestsInFlight => Volatile.Read(ref _requests);
    public int RetriesInFlight => Volatile.Read(ref _retries);
    /// <summary>Retries made since start.</summary>
    public long Retried => Interlocked.Read(ref _retried);
    /// <summary>Retries wanted but refused by the budget since start.</summary>
    public long Denied => Interlocked.Read(ref _denied);
    /// <summary>Requests whose body passed <c>max_replay_body_bytes</c> since start: their copy was dropped, so they could not be retried.</summary>
    public long SkippedBodyTooLarge => Interlocked.Read(ref _bodyTooLarge);

    /// <summary>A replayable request's body outgrew the replay limit (see <see cref="SkippedBodyTooLarge"/>).</summary>
    public void BodyTooLarge() => Interlocked.Increment(ref _bodyTooLarge);

    public void RequestStarted() => Interlocked.Increment(ref _requests);
    public void RequestEnded() => Interlocked.Decrement(ref _requests);

    /// <summary>How many retries may be in flight with <paramref name="requests"/> requests in flight.</summary>
    public static int Allowed(int requests, int percent) => Math.Max(MinRetries, (int)((long)requests * percent / 100));

    /// <summary>Takes a retry slot; false (and counted as denied) when the budget is spent. Give it back with <see cref="RetryEnded"/>.</summary>
    public bool TryStartRetry()
    {
        int allowed = Allowed(Volatile.Read(ref _requests), Model.BudgetPercent);
        if (Interlocked.Increment(ref _retries) <= allowed)
        {
            Interlocked.Increment(ref _retried);
            return true;
        }
        Interlocked.Decrement(ref _retries);
        Interlocked.Increment(ref _denied);
        return false;
    }

    public void RetryEnded() => Interlocked.Decrement(ref _retries);

    /// <summary>
    /// Exponential backoff with full jitter: the n-th retry (1-based) waits a uniform random time in
    /// [0, min(max, base * 2^(n-1))], so retries from many clients spread out instead of arriving in waves.
    /// </summary>
    public static TimeSpan Backoff(int retry, TimeSpan backoffBase, TimeSpan backoffMax, double random)
    {
        double ceiling = backoffBase.TotalMilliseconds * Math.Pow(2, Math.Max(0, retry - 1));
        ceiling = Math.Min(ceiling, backoffMax.TotalMilliseconds);
        return TimeSpan.FromMilliseconds(ceiling * random);
    }
}
