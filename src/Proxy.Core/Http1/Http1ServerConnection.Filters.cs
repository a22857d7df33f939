using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Model;
using Proxy.Pipeline;
using Proxy.Transport;

namespace Proxy.Http1;

// The filter chain's part of the connection: run the route's request-headers phase, and write the answer a filter
// chose. Kept in its own file so the connection's request loop changes by one call.
internal sealed partial class Http1ServerConnection
{
    /// <summary>
    /// The filters' context of the current request when its route ran a chain (its upstream field edits apply),
    /// else null. Read by the forwarder while writing the upstream request.
    /// </summary>
    internal RequestContext? FilterContext => _route?.Filters(Listener.Index) is { IsEmpty: false } ? _state?.Filters : null;

    /// <summary>
    /// Runs the route's request-headers filters: <see cref="FilterStatus.Respond"/> when one answered (its answer
    /// waits in the context), <see cref="FilterStatus.Pause"/> when one needs I/O (<see cref="ResumeFiltersAsync"/>).
    /// </summary>
    private FilterStatus RunFilters(FilterChain chain, RouteModel route)
    {
        RequestContext context = State.Filters;
        context.Begin(Head, RemoteAddress, route.Id, Listener.Name, _transport.ClientCertificateSubject);
        try
        {
            return chain.RunRequestHeaders(context);
        }
        catch (Exception e)
        {
            // A filter bug must not take the connection down without an answer, nor let the request through.
            FilterFailed(context, e);
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
        }
        catch (Exception e)
        {
            FilterFailed(context, e);
            status = FilterStatus.Respond;
        }
        return status == FilterStatus.Continue
            ? await AfterFilters(route).ConfigureAwait(false)
            : await FilterReplyAsync().ConfigureAwait(false);
    }

    /// <summary>A request the filters let through: the route's own answer, or the upstream's.</summary>
    private ValueTask<bool> AfterFilters(RouteModel route)
        => route.Respond is { } respond ? DirectResponseAsync(respond) : _forwarder.ForwardAsync(route);

    /// <summary>
    /// The header lines filters added for a request they let through (RateLimit fields), written into the forwarded
    /// or route-answered response head. Nothing when the route ran no filters (the context then holds a previous
    /// request's lines).
    /// </summary>
    internal void WriteFilterFields(PipeWriter output)
    {
        if (_route?.Filters(Listener.Index) is { IsEmpty: false })
        {
            output.Write(State.Filters.ReplyHeaders);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool FilterFailed(RequestContext context, Exception e)
    {
        ProxyLog.Error("filter_failed", ("listener", Listener.Name), ("route", context.RouteId), ("error", e.ToString()));
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
        _lingerOnClose |= !keepAlive;
        _runtime.Metrics.LocalReply(Listener, status, context.ReplyDetails);
        if (ProxyLog.IsEnabled(LogLevel.Info))
        {
            ProxyLog.Write(LogLevel.Info, "local_reply", ("status", status), ("details", context.ReplyDetails),
                ("listener", Listener.Name), ("route", context.RouteId), ("client", ProxyLog.Format(RemoteEndPoint)));
        }
        WriteFilterReply(context, keepAlive);
        return await FlushClientAsync().ConfigureAwait(false) && keepAlive;
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
}
