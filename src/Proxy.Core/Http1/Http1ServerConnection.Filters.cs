using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Model;
using Proxy.Pipeline;
using Proxy.Transport;
using Proxy.Upstream;

namespace Proxy.Http1;

// The filter chain's part of the connection: run the route's request-headers phase, and write the answer a filter
// chose. Kept in its own file so the connection's request loop changes by one call.
internal sealed partial class Http1ServerConnection
{
    /// <summary>
    /// The filters' context of the current request when its route ran a chain (its upstream field edits apply),
    /// else null. Read by the forwarder while writing the upstream request.
    /// </summary>
    internal RequestContext? FilterContext => _chain is not null ? _state?.Filters : null;

    /// <summary>
    /// The chain the current request runs (its route's on this listener, or the listener's own for a request no route
    /// matched) once its context is bound; null when it has no filters. Reset when a request starts.
    /// </summary>
    private FilterChain? _chain;

    /// <summary>The current request's details code for the logging phase ("" while the upstream answers).</summary>
    private string _replyDetails = "";

    /// <summary>Response body bytes the proxy wrote itself (local answers).</summary>
    private long _localBodyBytes;

    /// <summary>The upstream's final response head went to the client; <see cref="_relayedBody"/>: with a body pumped.</summary>
    private bool _relayed, _relayedBody;

    /// <summary>
    /// Request body bytes read from the client for the current request (content: chunk framing not counted), on
    /// every path: pumped to an HTTP/1.1 or HTTP/2 upstream, or read and dropped before a local answer.
    /// </summary>
    internal long RequestBodyBytes => Head.HasBody ? RequestPump.BytesRead : 0;

    /// <summary>Response body bytes sent to the client: the proxy's own answer's, or the upstream's as relayed (content).</summary>
    internal long ResponseBodyBytes => !_relayed ? _localBodyBytes : _relayedBody ? ResponsePump.BytesRead : 0;

    /// <summary>Forgets the previous request's filter state (called as each request starts).</summary>
    private void ResetFilterRequest()
    {
        _chain = null;
        _replyDetails = "";
        _localBodyBytes = 0;
        _relayed = _relayedBody = false;
        // The byte counts of the metrics and the access log read the pumps: a request that never pumped reads 0, not the last one's.
        if (_state is { } state)
        {
            state.RequestPump.ResetCount();
            state.ResponsePump.ResetCount();
        }
    }

    /// <summary>
    /// Runs the route's request-headers filters: <see cref="FilterStatus.Respond"/> when one answered (its answer
    /// waits in the context), <see cref="FilterStatus.Pause"/> when one needs I/O (<see cref="ResumeFiltersAsync"/>).
    /// </summary>
    private FilterStatus RunFilters(FilterChain chain, RouteModel route)
    {
        RequestContext context = State.Filters;
        context.Begin(Head, RemoteAddress, route.Id, Listener.Name, _transport.ClientCertificateSubject);
        _chain = chain;
        try
        {
            FilterStatus status = chain.RunRequestHeaders(context);
            context.MarkUpstreamEdits();
            return status;
        }
        catch (Exception e)
        {
            // A filter bug must not take the connection down without an answer, nor let the request through.
            FilterFailed(context, "request_headers", e);
            return FilterStatus.Respond;
        }
    }

    /// <summary>Finishes a chain a filter paused for I/O, then answers or goes on like the synchronous path.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> ResumeFiltersAsync(FilterChain chain, RouteModel route)
    {
        RequestContext context = State.Filters;
        FilterStatus status;
        try
        {
            status = await chain.ResumeRequestHeadersAsync(context).ConfigureAwait(false);
            context.MarkUpstreamEdits();
        }
        catch (Exception e)
        {
            FilterFailed(context, "request_headers", e);
            status = FilterStatus.Respond;
        }
        return status == FilterStatus.Continue
            ? await AfterFilters(route).ConfigureAwait(false)
            : await FilterReplyAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// A request the request-headers phase let through: the request-body phase when the chain has one (the body is
    /// buffered whole first), then the route's own answer or the upstream's. Routes without body filters pay this one test.
    /// </summary>
    private ValueTask<bool> AfterFilters(RouteModel route)
        => _chain is { RequestBody.Length: > 0 } chain ? RequestBodyPhaseAsync(chain, route) : AfterBody(route);

    private ValueTask<bool> AfterBody(RouteModel route)
    {
        if (route.Respond is { } respond)
        {
            return DirectResponseAsync(respond);
        }
        Volatile.Write(ref _reachedForwarder, true);
        return _forwarder.ForwardAsync(route);
    }

    // ---- request-body phase (Envoy's decodeData with StopIterationAndBuffer) ------------------------------------------

    /// <summary>The body the request-body phase read, in pooled blocks; created by the first request that needs it, reused.</summary>
    private RequestReplayBuffer? _bodyBuffer;

    /// <summary>
    /// The current request's body was taken off the connection by the request-body phase: it is in <see cref="_bodyBuffer"/>
    /// (when the phase completed) and must not be read again. Cleared, and the blocks given back, when the request ends.
    /// </summary>
    private bool _bodyTaken;

    /// <summary>
    /// The current request's body, buffered whole by the request-body phase: the forwarder sends it from here on the
    /// first try and on retries. Null when the route streams its bodies.
    /// </summary>
    internal RequestReplayBuffer? BufferedBody => _bodyTaken ? _bodyBuffer : null;

    /// <summary>Gives the buffered body's blocks back at the end of a request (every path: answered, failed, client gone).</summary>
    private void ReleaseRequestBody()
    {
        if (_bodyTaken)
        {
            _bodyTaken = false;
            _bodyBuffer!.Reset();
        }
    }

    /// <summary>
    /// Reads the whole body into <see cref="_bodyBuffer"/> (inviting it with 100-continue when asked), refuses it with
    /// 413 past the chain's limit before anything is sent upstream, runs the body filters over it, then answers or
    /// forwards. A request without a body runs the filters over an empty sequence.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> RequestBodyPhaseAsync(FilterChain chain, RouteModel route)
    {
        RequestHead head = Head;
        long limit = Math.Min(chain.MaxRequestBodyBytes, Listener.Limits.MaxBodyBytes);
        RequestReplayBuffer buffer = _bodyBuffer ??= new RequestReplayBuffer(BlockMemoryPool.Large);
        buffer.Start(limit);
        _bodyTaken = true;
        if (head.HasBody)
        {
            // A declared length past the limit is refused unread; with 100-continue the body was never invited.
            if (!head.Chunked && head.ContentLength > limit)
            {
                return await RequestBodyTooLargeAsync(chain).ConfigureAwait(false);
            }
            if (!await SendContinueIfExpectedAsync().ConfigureAwait(false))
            {
                return false;
            }
            PumpResult result = await RequestPump.CopyAsync(Input, null, head.Chunked ? BodyFraming.Chunked : BodyFraming.ContentLength,
                head.ContentLength, BodyFraming.None, limit, this, buffer).ConfigureAwait(false);
            // The trailer section counts against the limit too: the buffer drops the copy when it passes.
            if (result == PumpResult.TooLarge || (result == PumpResult.Completed && buffer.IsOverLimit))
            {
                return await RequestBodyTooLargeAsync(chain).ConfigureAwait(false);
            }
            if (result != PumpResult.Completed)
            {
                return await RequestBodyReadFailedAsync(result).ConfigureAwait(false);
            }
        }
        RequestContext context = State.Filters;
        FilterStatus status;
        try
        {
            status = chain.RunRequestBody(context, buffer.AsSequence());
        }
        catch (Exception e)
        {
            FilterFailed(context, "request_body", e);
            status = FilterStatus.Respond;
        }
        return status == FilterStatus.Continue
            ? await AfterBody(route).ConfigureAwait(false)
            : await FilterReplyAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// 413 for a body past the phase's limit, closing the connection (the rest of the body is unread). The details code
    /// says whose limit it was: the body filters' (<c>request_body_too_large</c>) or the listener's max_body_bytes.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private async ValueTask<bool> RequestBodyTooLargeAsync(FilterChain chain)
    {
        string details = chain.MaxRequestBodyBytes <= Listener.Limits.MaxBodyBytes ? "request_body_too_large" : RejectReason.BodyTooLarge.DetailsCode();
        await SendErrorAsync(413, details, close: true).ConfigureAwait(false);
        return false;
    }

    /// <summary>The client's side of the body failed while buffering: answer what can be answered, then close.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private async ValueTask<bool> RequestBodyReadFailedAsync(PumpResult result)
    {
        if (result == PumpResult.SourceInvalid)
        {
            RejectReason reason = RequestPump.Reject;
            await SendErrorAsync(reason.StatusCode(), reason.DetailsCode(), close: true).ConfigureAwait(false);
        }
        else if (result == PumpResult.Cancelled && TakeFiredTimeout() != TimeoutKind.None)
        {
            await SendErrorAsync(408, RejectReason.BodyTimeout.DetailsCode(), close: true).ConfigureAwait(false);
        }
        return false;
    }

    /// <summary>
    /// The header lines filters added for a request they let through (RateLimit fields), written into the forwarded
    /// or route-answered response head. Nothing when the route ran no filters (the context then holds a previous
    /// request's lines).
    /// </summary>
    internal ReadOnlySpan<byte> FilterFields => _chain is not null ? State.Filters.ReplyHeaders : default;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool FilterFailed(RequestContext context, string phase, Exception e)
    {
        ProxyLog.Error("filter_failed", ("phase", phase), ("listener", Listener.Name), ("route", context.RouteId), ("error", e.ToString()));
        context.Begin(Head, RemoteAddress, context.RouteId, Listener.Name, _transport.ClientCertificateSubject);
        context.Respond(500, "filter_failed", "text/plain"u8, "500 Internal Server Error: filter_failed\n"u8);
        return true;
    }

    /// <summary>
    /// Sends the answer a filter chose, after consuming the request body so the connection can stay open (with
    /// <c>Expect: 100-continue</c> the body is never invited: answer and close, RFC 9110 section 10.1.1).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> FilterReplyAsync()
    {
        bool keepAlive = await DiscardBodyAsync().ConfigureAwait(false);
        keepAlive &= Head.KeepAlive && !_draining;
        RequestContext context = State.Filters;
        int status = context.ReplyStatus;
        ResponseStatus = IsGrpc ? 200 : status;
        _replyDetails = context.ReplyDetails;
        RunLocalResponseHeadersFilters(ResponseStatus);
        _lingerOnClose |= !keepAlive;
        _runtime.Metrics.LocalReply(Listener, status, context.ReplyDetails);
        LogLocalReply(status, context.ReplyDetails);
        WriteFilterReply(context, keepAlive);
        return await FlushAnswerAsync(closing: !keepAlive).ConfigureAwait(false) && keepAlive;
    }

    /// <summary>RFC 9112 section 4 status line, the filter's fields, then framing we own, then the body, in one write.</summary>
    private void WriteFilterReply(RequestContext context, bool keepAlive)
    {
        PipeWriter output = Output;
        if (IsGrpc)
        {
            // The filter's fields (WWW-Authenticate, RateLimit) still go along; its body and content type do not.
            WriteGrpcReply(output, GrpcStatus.ForHttpStatus(context.ReplyStatus), context.ReplyDetails, context.ReplyHeaders, null, keepAlive);
            return;
        }
        output.Write("HTTP/1.1 "u8);
        output.WriteNumber(context.ReplyStatus);
        output.Write(" "u8);
        string reason = StatusCodes.ReasonPhrase(context.ReplyStatus);
        Span<byte> span = output.GetSpan(reason.Length);
        output.Advance(Encoding.ASCII.GetBytes(reason, span));
        output.Write("\r\n"u8);
        output.Write(context.ReplyHeaders);
        if (!context.ReplyContentType.IsEmpty)
        {
            output.WriteField("content-type"u8, context.ReplyContentType);
        }
        WriteLocalReplyTail(output, context.ReplyBody, extraFields: null, keepAlive);
    }

    // ---- later phases: one call each from the forwarder and the request loop ----------------------------------------

    /// <summary>
    /// The upstream-request phase for one try to <paramref name="destination"/> (<paramref name="retries"/>: 0 for
    /// the first try). False when a filter threw: the caller fails the request with <see cref="ProxyError.FilterFailed"/>.
    /// </summary>
    internal bool RunUpstreamRequestFilters(DestinationState destination, int retries, long startedAt)
    {
        if (_chain is not { } chain)
        {
            return true;
        }
        // Recorded for any chain: a response-headers or logging filter may want the upstream's time.
        RequestContext context = State.Filters;
        context.BeginUpstreamTry(destination.Address, retries, startedAt);
        if (chain.UpstreamRequest.Length == 0)
        {
            return true;
        }
        try
        {
            chain.RunUpstreamRequest(context);
            return true;
        }
        catch (Exception e)
        {
            UpstreamFilterFailed(context, e);
            return false;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void UpstreamFilterFailed(RequestContext context, Exception e)
        => ProxyLog.Error("filter_failed", ("phase", "upstream_request"), ("listener", Listener.Name), ("route", context.RouteId), ("error", e.ToString()));

    /// <summary>
    /// The response-headers phase on the upstream's final response head, just before the forwarder writes it: filters
    /// remove fields (marked, so the writer skips them) and add fields (written with the filter fields).
    /// </summary>
    internal void RunResponseHeadersFilters(ResponseHead response, long respondedAt)
    {
        _relayed = true;
        // RFC 9112 section 6.3: no body after HEAD, 204 or 304, nor with a zero length (the pump then never runs).
        _relayedBody = Head.Method != Http.HttpMethod.Head && response.StatusCode is not (204 or 304)
            && (response.Chunked || response.ContentLength != 0);
        if (_chain is { ResponseHeaders.Length: > 0 } chain)
        {
            RequestContext context = State.Filters;
            context.BeginResponse(response, response.StatusCode, respondedAt);
            chain.RunResponseHeaders(context);
            context.EndResponse();
        }
    }

    /// <summary>The response-headers phase on a local answer with <paramref name="status"/> (no upstream fields).</summary>
    private void RunLocalResponseHeadersFilters(int status)
    {
        if (_chain is { ResponseHeaders.Length: > 0 } chain)
        {
            RequestContext context = State.Filters;
            context.BeginResponse(null, status);
            chain.RunResponseHeaders(context);
            context.EndResponse();
        }
    }

    /// <summary>The logging phase, at the very end of a request: status, outcome, bytes, durations.</summary>
    private void RunResponseCompleteFilters(long started)
    {
        if (_chain is { ResponseComplete.Length: > 0 } chain && _state is { } state)
        {
            CompleteFilters(chain, state, started);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CompleteFilters(FilterChain chain, ExchangeState state, long started)
    {
        RequestContext context = state.Filters;
        RequestHead head = state.Head;
        RequestOutcome outcome = ResponseStatus == 0 || Volatile.Read(ref _aborted) != 0 ? RequestOutcome.Aborted
            : _relayed ? RequestOutcome.Relayed : RequestOutcome.LocalReply;
        long responseBytes = ResponseBodyBytes;
        context.Complete(ResponseStatus, outcome, _replyDetails, head.Length + (head.HasBody ? state.RequestPump.BytesRead : 0),
            responseBytes, Stopwatch.GetElapsedTime(started));
        chain.RunResponseComplete(context);
    }

    /// <summary>
    /// Binds the context for a request no route matched when the listener has default policies: their response-headers
    /// and logging phases still run (their request-headers phase does not: there is no route to protect).
    /// </summary>
    private void BeginUnmatched()
    {
        if (Listener.Unmatched is { } chain)
        {
            State.Filters.Begin(Head, RemoteAddress, "", Listener.Name, _transport.ClientCertificateSubject);
            _chain = chain;
        }
    }
}
