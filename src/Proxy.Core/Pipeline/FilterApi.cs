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

    /// <summary>
    /// The filter needs I/O before it can decide (a shared rate-limit store): the chain runner awaits its
    /// <see cref="IAsyncRequestHeadersFilter.ResumeRequestHeadersAsync"/>, then goes on. Only filters implementing
    /// <see cref="IAsyncRequestHeadersFilter"/> may return it.
    /// </summary>
    Pause = 2,
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

/// <summary>
/// A request-headers filter that sometimes needs I/O to decide. <see cref="IRequestHeadersFilter.OnRequestHeaders"/>
/// runs first, synchronously: answer from local state when possible, and return <see cref="FilterStatus.Pause"/>
/// only when the decision needs a round trip. The runner then awaits <see cref="ResumeRequestHeadersAsync"/> (off the
/// synchronous path, so a request that never pauses costs no state machine) and runs the next filters after it.
/// </summary>
public interface IAsyncRequestHeadersFilter : IRequestHeadersFilter
{
    /// <summary>
    /// Finishes a decision <see cref="IRequestHeadersFilter.OnRequestHeaders"/> paused: <see cref="FilterStatus.Continue"/>
    /// or the result of <see cref="RequestContext.Respond"/> (not <see cref="FilterStatus.Pause"/> again). The context
    /// and the request head stay valid until the returned task completes.
    /// </summary>
    ValueTask<FilterStatus> ResumeRequestHeadersAsync(RequestContext context);
}
