namespace Proxy.Model;

/// <summary>
/// A cluster's <c>health_check:</c> block: an active probe <c>GET {path} HTTP/1.1</c> on its own connection to
/// every destination each <see cref="Interval"/>.
/// </summary>
internal sealed class HealthCheckModel
{
    public string Path { get; init; } = "/healthz";
    public TimeSpan Interval { get; init; } = TimeSpan.FromSeconds(5);
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>Consecutive passing probes that bring a destination marked down back up.</summary>
    public int HealthyThreshold { get; init; } = 2;
    /// <summary>Consecutive failing probes that mark a destination down.</summary>
    public int UnhealthyThreshold { get; init; } = 2;
    /// <summary>Inclusive status ranges a probe answer must fall in to pass (<c>expected_statuses</c>); default 2xx.</summary>
    public (int Low, int High)[] ExpectedStatuses { get; init; } = [(200, 299)];

    public bool Passes(int status)
    {
        foreach (var (low, high) in ExpectedStatuses)
        {
            if (status >= low && status <= high)
            {
                return true;
            }
        }
        return false;
    }
}

/// <summary>A cluster's <c>outlier_detection:</c> block: passive ejection on consecutive failures seen by real traffic.</summary>
internal sealed class OutlierDetectionModel
{
    public int ConsecutiveFailures { get; init; } = 5;
    /// <summary>The first ejection lasts this long; the n-th lasts n times as long (capped, see ClusterHealth).</summary>
    public TimeSpan BaseEjection { get; init; } = TimeSpan.FromSeconds(30);
    public int MaxEjectionPercent { get; init; } = 50;
}

/// <summary>Conditions under which a request may be retried (<c>retry.on</c>).</summary>
[Flags]
internal enum RetryOn : byte
{
    None = 0,
    /// <summary>The connection to the destination could not be opened (refused or timed out).</summary>
    ConnectFailure = 1,
    /// <summary>The connection broke before any byte of the response head arrived.</summary>
    Reset = 2,
    Status502 = 4,
    Status503 = 8,
    Status504 = 16,
    /// <summary>The try's <c>per_try_timeout</c> ran out before its response head; set whenever a per-try timeout is.</summary>
    PerTryTimeout = 32,
    /// <summary>A gRPC response head with <c>grpc-status: 14</c> (UNAVAILABLE, trailers-only); Envoy's <c>retry_grpc_on: unavailable</c>.</summary>
    Unavailable = 64,
}

/// <summary>A cluster's <c>retry:</c> block.</summary>
internal sealed class RetryModel
{
    /// <summary>Additional tries after the first (0-10).</summary>
    public int Attempts { get; init; } = 2;
    public RetryOn On { get; init; } = RetryOn.ConnectFailure | RetryOn.Reset;
    public TimeSpan BackoffBase { get; init; } = TimeSpan.FromMilliseconds(25);
    public TimeSpan BackoffMax { get; init; } = TimeSpan.FromMilliseconds(250);
    /// <summary>Retries in flight may be at most this percent of the cluster's requests in flight (never fewer than one).</summary>
    public int BudgetPercent { get; init; } = 20;
    /// <summary>Longest wait for one try's response head (<c>per_try_timeout</c>); zero: none. A try that runs out is retried.</summary>
    public TimeSpan PerTryTimeout { get; init; }
    /// <summary>
    /// <c>non_idempotent</c>: requests of any method may be replayed (RFC 9110 section 9.2.2 allows it when the
    /// user agent knows the request is safe to repeat; gRPC calls are POSTs). A request with a body is replayed only
    /// while its body fits <see cref="MaxReplayBodyBytes"/>.
    /// </summary>
    public bool NonIdempotent { get; init; }

    /// <summary>Largest value <c>max_replay_body_bytes</c> accepts: a kept copy is memory held per request in flight.</summary>
    public const long MaxReplayBodyLimit = 16 * 1024 * 1024;

    /// <summary>
    /// <c>max_replay_body_bytes</c>: a request body (content plus trailer section) up to this size is kept in pooled blocks
    /// while it streams to the first try, so a retry can send it again; a larger one drops its copy and is not retried
    /// (Envoy's per_request_buffer_limit_bytes). Zero: requests with a body are never retried.
    /// </summary>
    public long MaxReplayBodyBytes { get; init; } = 64 * 1024;

    public bool RetriesStatus(int status) => status switch
    {
        502 => (On & RetryOn.Status502) != 0,
        503 => (On & RetryOn.Status503) != 0,
        504 => (On & RetryOn.Status504) != 0,
        _ => false,
    };
}

/// <summary>A cluster's <c>circuit_breaker:</c> block: limits past which requests are refused at once with 503.</summary>
internal sealed class CircuitBreakerModel
{
    /// <summary>Open upstream connections across all of the cluster's destinations.</summary>
    public int MaxConnections { get; init; } = 1024;
    /// <summary>Requests waiting for an upstream connection to open.</summary>
    public int MaxPending { get; init; } = 1024;
    /// <summary>Requests in flight to the cluster.</summary>
    public int MaxRequests { get; init; } = 10_000;
}
