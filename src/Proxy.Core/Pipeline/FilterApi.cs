namespace Proxy.Pipeline;

/// <summary>What a filter phase tells the chain runner (Envoy's <c>FilterHeadersStatus</c>, reduced to what we run).</summary>
public enum FilterStatus : byte
{
    /// <summary>Run the next filter; after the last one the request is forwarded (or answered by its route).</summary>
    Continue = 0,

    /// <summary>
    /// Stop: the filter answered through <see cref="RequestContext.Respond"/>. No later filter runs and nothing
    /// reaches the upstream.
    /// </summary>
    Respond = 1,
}

/// <summary>
/// The request-headers phase (Pingora's <c>request_filter</c>): runs once per request after routing, before the
/// request is forwarded or answered by its route, with the full request head available and the body not yet read.
/// </summary>
/// <remarks>
/// One instance is built per policy when the config is compiled and is shared by every route, listener and
/// connection that uses the policy, so implementations must be thread-safe and should be immutable (keep shared
/// mutable state such as counters lock-free). The phase runs on the connection's I/O thread: it must not block
/// and should not allocate in steady state.
/// </remarks>
public interface IRequestHeadersFilter
{
    /// <summary>
    /// Inspects the request. Return <see cref="FilterStatus.Continue"/> to let it through, or the result of
    /// <see cref="RequestContext.Respond"/> to answer locally.
    /// </summary>
    FilterStatus OnRequestHeaders(RequestContext context);
}
