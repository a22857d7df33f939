namespace Proxy.Pipeline.Filters;

/// <summary>
/// The decision counts of one built-in policy, exported as <c>proxy_policy_decisions_total{policy, decision}</c>; each
/// kind uses the fields of its own decisions. Kept apart from the filter so that a reload that keeps the policy (the
/// same name, the same kind) hands the running instance to the filter it builds, whatever else changed: the counts run
/// for the life of the process rather than of one compiled config, as a Prometheus counter should, and requests still
/// finishing on the replaced filter count in the same place as the new filter's.
/// </summary>
/// <remarks>
/// Concurrency: the fields change only through <c>Interlocked.Increment</c> (from the filters of both
/// snapshots during a reload) and are read with <c>Volatile.Read</c>. The request path pays what it paid
/// when the fields were the filter's own: one interlocked add, through one more reference.
/// </remarks>
internal sealed class PolicyDecisionCounts
{
    public long Allowed;
    /// <summary><c>jwt</c>, <c>api_key</c>, <c>introspection</c>: answered 401 or 403.</summary>
    public long Rejected;
    /// <summary><c>ip_filter</c>, <c>deny</c>: answered 403.</summary>
    public long Denied;
    /// <summary><c>rate_limit</c>: answered 429 for the rate.</summary>
    public long Limited;
    /// <summary><c>rate_limit</c>: answered 429 for the quota.</summary>
    public long QuotaExceeded;
    /// <summary><c>rate_limit</c>: decisions the shared store could not make.</summary>
    public long StoreErrors;
    /// <summary><c>introspection</c>: answered 503, the server could not be asked.</summary>
    public long Unavailable;
    /// <summary><c>request_body</c>: answered 400 or 415.</summary>
    public long Refused;
    /// <summary><c>deny</c>: request trailer fields dropped.</summary>
    public long TrailersDropped;
    /// <summary>
    /// <c>jwt</c>: tokens checked against their key (cache misses that got that far), exported as
    /// <c>proxy_jwt_signature_checks_total</c> rather than as a decision: a check is work done, not an answer.
    /// </summary>
    public long SignatureChecks;

    /// <summary>
    /// The counts a filter being built starts from: those of <paramref name="running"/>, the running filter's, when a
    /// reload keeps the policy (the compiler passes only a running filter of the same name and kind), else new ones.
    /// </summary>
    public static PolicyDecisionCounts ContinueFrom(PolicyDecisionCounts? running) => running ?? new PolicyDecisionCounts();
}
