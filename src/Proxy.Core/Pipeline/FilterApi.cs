using System.Buffers;

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
/// A filter of any phase: what a <see cref="PolicyFactory"/> returns. A filter implements the phase interfaces it
/// needs (<see cref="IRequestHeadersFilter"/>, <see cref="IRequestBodyFilter"/>, <see cref="IUpstreamRequestFilter"/>, <see cref="IResponseHeadersFilter"/>,
/// <see cref="IResponseCompleteFilter"/>) and appears in the chain of each; one that implements none does nothing.
/// </summary>
/// <remarks>
/// Phases run in this order for one request: request headers (once, after routing), request body (once, only on routes
/// with a body filter, the body buffered whole), upstream request (once per try),
/// response headers (once, on the final response head), response complete (once, at the very end). A route whose
/// filters implement none of a phase's interfaces pays one array-length test for that phase.
/// </remarks>
public interface IProxyFilter
{
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
public interface IRequestHeadersFilter : IProxyFilter
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

/// <summary>
/// The request-body phase (Envoy's <c>decodeData</c> returning <c>StopIterationAndBuffer</c>): runs once per request,
/// after the request-headers phase let the request through and before anything is sent upstream (or the route answers),
/// with the whole request body buffered. Only routes whose chain holds such a filter buffer bodies; every other route
/// streams the body to the upstream as it arrives.
/// </summary>
/// <remarks>
/// <para>Limit: each filter declares <see cref="MaxBodyBytes"/>, the largest body it accepts. The chain buffers up to
/// the smallest of its filters' limits (past it at least one filter would refuse, so there is no point reading further),
/// also bounded by the listener's <c>max_body_bytes</c>. A body past the limit is answered with 413
/// <c>request_body_too_large</c> (a gRPC call gets RESOURCE_EXHAUSTED) before any filter of the phase runs and before
/// anything reaches the upstream: at once when Content-Length declares it, else when the chunked body passes it.</para>
/// <para>The body is the decoded content (chunked framing removed; the trailer section is kept and forwarded but not
/// shown). The body is valid only during the call: it lives in pooled blocks that go back to the pool
/// when the request ends; copy what must outlive the call. After the phase the buffered body is forwarded unchanged,
/// on the first try and on every retry.</para>
/// <para>A request without a body (GET, Content-Length: 0) runs the phase with an empty sequence. With
/// <c>Expect: 100-continue</c> the proxy sends "100 Continue" before reading the body (RFC 9110 section 10.1.1).</para>
/// <para>Threading and allocation as for <see cref="IRequestHeadersFilter"/>: one shared instance, thread-safe, runs on
/// the I/O thread, must not block, should not allocate. A filter that throws answers 500 <c>filter_failed</c>.</para>
/// </remarks>
public interface IRequestBodyFilter : IProxyFilter
{
    /// <summary>The largest body (content bytes) this filter accepts; a larger one is refused with 413 before the phase runs.</summary>
    long MaxBodyBytes { get; }

    /// <summary>
    /// Inspects the whole request body. Return <see cref="FilterStatus.Continue"/> to let it through, or the result of
    /// <see cref="RequestContext.Respond"/> to answer locally (nothing reaches the upstream).
    /// </summary>
    FilterStatus OnRequestBody(RequestContext context, ReadOnlySequence<byte> body);
}

/// <summary>
/// The upstream-request phase (Pingora's <c>upstream_request_filter</c>): runs once per try, after the destination of
/// that try is chosen and before the proxy connects to it and writes the request head, so a retry to another
/// destination runs it again. <see cref="RequestContext.UpstreamDestination"/> and <see cref="RequestContext.UpstreamTry"/>
/// say where the request is going.
/// </summary>
/// <remarks>
/// <para>The filter edits the request head sent upstream with <see cref="RequestContext.AddUpstreamHeader"/> and
/// <see cref="RequestContext.RemoveUpstreamHeader"/> (replace: remove, then add). Edits made in this phase apply to this
/// try only: each try starts again from the edits the request-headers phase left, so a retry never carries a field
/// twice.</para>
/// <para>It cannot answer: the decision to answer belongs to the request-headers phase, before any upstream work
/// started (a local answer after a first try went out would depend on which try failed). A filter that throws fails
/// the request with 500 <c>filter_failed</c> and no retry: a filter that meant to remove a credential must not let
/// the request through with it.</para>
/// <para>Threading and allocation as for <see cref="IRequestHeadersFilter"/>: one shared instance, thread-safe, runs
/// on the I/O thread, must not block, should not allocate.</para>
/// </remarks>
public interface IUpstreamRequestFilter : IProxyFilter
{
    /// <summary>Edits the request head about to be sent to <see cref="RequestContext.UpstreamDestination"/>.</summary>
    void OnUpstreamRequest(RequestContext context);
}

/// <summary>
/// The response-headers phase (Pingora's <c>response_filter</c>, Envoy's <c>encodeHeaders</c>): runs once on the final
/// response head before it is written to the client, both for a response relayed from the upstream and for a local
/// answer of the route (a filter's <see cref="RequestContext.Respond"/>, a route's <c>respond</c>, a proxy error such
/// as 502 or 504 once the route is known; see <see cref="RequestContext.IsLocalReply"/>). Interim (1xx) and 101
/// responses skip it.
/// </summary>
/// <remarks>
/// <para>The filter reads <see cref="RequestContext.ResponseStatus"/> and the upstream's fields
/// (<see cref="RequestContext.ResponseFieldCount"/>, <see cref="RequestContext.TryGetResponseHeader"/>; a local answer
/// has none), and edits them: <see cref="RequestContext.AddResponseHeader"/>, <see cref="RequestContext.RemoveResponseHeader"/>,
/// <see cref="RequestContext.SetResponseHeader"/>. The body's framing (Content-Length, Transfer-Encoding, Connection)
/// stays the proxy's: those names are refused. The status and the body cannot change.</para>
/// <para>A filter that throws is logged (<c>filter_failed</c>) and counted; the response goes out with the edits made
/// so far (the upstream already answered: replacing its answer by a 500 would hide what it did).</para>
/// <para>Threading and allocation as for <see cref="IRequestHeadersFilter"/>.</para>
/// </remarks>
public interface IResponseHeadersFilter : IProxyFilter
{
    /// <summary>Reads and edits the response head about to be written to the client.</summary>
    void OnResponseHeaders(RequestContext context);
}

/// <summary>
/// The logging phase (Pingora's <c>logging</c>, Envoy's access loggers): runs once at the very end of every request
/// that reached a route (and, for the listener's default policies, of a request no route matched), after the
/// response was written, or after the exchange failed. Nothing can change any more; the context reports what
/// happened: <see cref="RequestContext.ResponseStatus"/>, <see cref="RequestContext.Outcome"/>,
/// <see cref="RequestContext.ResponseDetails"/>, <see cref="RequestContext.RequestBytes"/>,
/// <see cref="RequestContext.ResponseBytes"/>, <see cref="RequestContext.Duration"/>,
/// <see cref="RequestContext.UpstreamDuration"/>.
/// </summary>
/// <remarks>
/// It must not throw: an exception is caught, logged (<c>filter_failed</c>) and counted, and the other logging
/// filters still run. It runs on the I/O thread before the connection reads its next request: hand slow work
/// (shipping records) to a queue instead of doing it here. Threading and allocation as for <see cref="IRequestHeadersFilter"/>.
/// </remarks>
public interface IResponseCompleteFilter : IProxyFilter
{
    /// <summary>Observes the finished exchange.</summary>
    void OnResponseComplete(RequestContext context);
}

/// <summary>How a request ended, for the logging phase.</summary>
public enum RequestOutcome : byte
{
    /// <summary>The upstream's response was relayed to the client in full.</summary>
    Relayed = 0,

    /// <summary>
    /// The proxy answered itself: a filter, the route's <c>respond</c>, or an error (no route, upstream failure);
    /// <see cref="RequestContext.ResponseDetails"/> holds the details code.
    /// </summary>
    LocalReply = 1,

    /// <summary>The exchange broke off: the client went away, or the upstream failed after its head was relayed.</summary>
    Aborted = 2,
}
