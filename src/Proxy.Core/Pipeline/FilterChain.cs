namespace Proxy.Pipeline;

/// <summary>
/// The filters one route runs on one listener, in order: the listener's default policies, then the route's own.
/// Built when the config is compiled and never changed. Each phase has its own array (a filter implementing several
/// phase interfaces appears in each, in chain order), so a phase no filter takes part in costs one length test.
/// Phase order for a request: <see cref="RequestHeaders"/>, <see cref="RequestBody"/> (body buffered whole),
/// <see cref="UpstreamRequest"/> per try, <see cref="ResponseHeaders"/>, <see cref="ResponseComplete"/>.
/// </summary>
internal sealed class FilterChain
{
    public static FilterChain Empty { get; } = new([], []);

    /// <summary>Phase failures (a throwing response-headers or logging filter) since the process started.</summary>
    private static long s_phaseFailures;

    public FilterChain(IProxyFilter[] filters, string[] policyNames)
    {
        Filters = filters;
        PolicyNames = policyNames;
        RequestHeaders = Phase<IRequestHeadersFilter>(filters);
        RequestBody = Phase<IRequestBodyFilter>(filters);
        MaxRequestBodyBytes = long.MaxValue;
        foreach (IRequestBodyFilter filter in RequestBody)
        {
            MaxRequestBodyBytes = Math.Min(MaxRequestBodyBytes, Math.Max(0, filter.MaxBodyBytes));
        }
        UpstreamRequest = Phase<IUpstreamRequestFilter>(filters);
        ResponseHeaders = Phase<IResponseHeadersFilter>(filters);
        ResponseComplete = Phase<IResponseCompleteFilter>(filters);
        TrailerScreens = Phase<IRequestTrailerScreen>(filters);
    }

    /// <summary>Every filter in chain order, whatever its phases.</summary>
    public IProxyFilter[] Filters { get; }

    /// <summary>Request-headers phase filters in run order.</summary>
    public IRequestHeadersFilter[] RequestHeaders { get; }

    /// <summary>Request-body phase filters in run order; empty: the route streams bodies and never buffers them.</summary>
    public IRequestBodyFilter[] RequestBody { get; }

    /// <summary>
    /// The largest body the request-body phase buffers: the smallest <see cref="IRequestBodyFilter.MaxBodyBytes"/> of its
    /// filters (a larger body would be refused by at least one of them). <see cref="long.MaxValue"/> without body filters.
    /// </summary>
    public long MaxRequestBodyBytes { get; }

    /// <summary>Upstream-request phase filters (once per try) in run order.</summary>
    public IUpstreamRequestFilter[] UpstreamRequest { get; }

    /// <summary>Response-headers phase filters in run order.</summary>
    public IResponseHeadersFilter[] ResponseHeaders { get; }

    /// <summary>Logging phase filters in run order.</summary>
    public IResponseCompleteFilter[] ResponseComplete { get; }

    /// <summary>Filters that screen request trailer fields (<see cref="IRequestTrailerScreen"/>); empty for most chains.</summary>
    internal IRequestTrailerScreen[] TrailerScreens { get; }

    /// <summary>The policy behind each filter of <see cref="Filters"/> (same order), for diagnostics and tests.</summary>
    public string[] PolicyNames { get; }

    /// <summary>No filter in any phase: the request skips the context entirely.</summary>
    public bool IsEmpty => Filters.Length == 0;

    /// <summary>Response-headers and logging filters that threw, process-wide (tests and diagnostics).</summary>
    public static long PhaseFailures => Volatile.Read(ref s_phaseFailures);

    private static T[] Phase<T>(IProxyFilter[] filters)
        where T : class, IProxyFilter
    {
        var phase = new List<T>();
        foreach (IProxyFilter filter in filters)
        {
            if (filter is T member)
            {
                phase.Add(member);
            }
        }
        return phase.Count == 0 ? [] : phase.ToArray();
    }

    /// <summary>
    /// Runs the request-body phase over the buffered body: <see cref="FilterStatus.Respond"/> when a filter answered.
    /// Exceptions propagate: the caller answers 500 <c>filter_failed</c>.
    /// </summary>
    public FilterStatus RunRequestBody(RequestContext context, in System.Buffers.ReadOnlySequence<byte> body)
    {
        IRequestBodyFilter[] filters = RequestBody;
        for (int i = 0; i < filters.Length; i++)
        {
            if (filters[i].OnRequestBody(context, body) != FilterStatus.Continue)
            {
                return Stopped(context);
            }
        }
        return FilterStatus.Continue;
    }

    /// <summary>Runs the upstream-request phase for one try. Exceptions propagate: the caller fails the request.</summary>
    public void RunUpstreamRequest(RequestContext context)
    {
        IUpstreamRequestFilter[] filters = UpstreamRequest;
        for (int i = 0; i < filters.Length; i++)
        {
            filters[i].OnUpstreamRequest(context);
        }
    }

    /// <summary>Runs the response-headers phase; a filter that throws is logged and counted, and the next one runs.</summary>
    public void RunResponseHeaders(RequestContext context)
    {
        IResponseHeadersFilter[] filters = ResponseHeaders;
        for (int i = 0; i < filters.Length; i++)
        {
            try
            {
                filters[i].OnResponseHeaders(context);
            }
            catch (Exception e)
            {
                PhaseFailed(context, "response_headers", e);
            }
        }
    }

    /// <summary>Runs the logging phase; a filter that throws is logged and counted, and the next one runs.</summary>
    public void RunResponseComplete(RequestContext context)
    {
        IResponseCompleteFilter[] filters = ResponseComplete;
        for (int i = 0; i < filters.Length; i++)
        {
            try
            {
                filters[i].OnResponseComplete(context);
            }
            catch (Exception e)
            {
                PhaseFailed(context, "response_complete", e);
            }
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static void PhaseFailed(RequestContext context, string phase, Exception e)
    {
        Interlocked.Increment(ref s_phaseFailures);
        Proxy.Diagnostics.ProxyLog.Error("filter_failed", ("phase", phase), ("listener", context.ListenerName), ("route", context.RouteId),
            ("error", e.ToString()));
    }

    /// <summary>
    /// Runs the request-headers phase from the first filter: <see cref="FilterStatus.Respond"/> when a filter
    /// answered, <see cref="FilterStatus.Pause"/> when one needs I/O (finish with <see cref="ResumeRequestHeadersAsync"/>).
    /// </summary>
    public FilterStatus RunRequestHeaders(RequestContext context) => Run(context, 0);

    /// <summary>Finishes a paused phase: awaits the paused filter, then runs the rest (pausing again if needed).</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<FilterStatus> ResumeRequestHeadersAsync(RequestContext context)
    {
        while (true)
        {
            int index = context.PausedAt;
            FilterStatus status = RequestHeaders[index] is IAsyncRequestHeadersFilter filter
                ? await filter.ResumeRequestHeadersAsync(context).ConfigureAwait(false)
                : FilterStatus.Respond;
            if (status != FilterStatus.Continue)
            {
                return Stopped(context);
            }
            status = Run(context, index + 1);
            if (status != FilterStatus.Pause)
            {
                return status;
            }
        }
    }

    private FilterStatus Run(RequestContext context, int start)
    {
        IRequestHeadersFilter[] filters = RequestHeaders;
        for (int i = start; i < filters.Length; i++)
        {
            FilterStatus status = filters[i].OnRequestHeaders(context);
            if (status == FilterStatus.Continue)
            {
                continue;
            }
            if (status == FilterStatus.Pause && filters[i] is IAsyncRequestHeadersFilter)
            {
                context.PausedAt = i;
                return FilterStatus.Pause;
            }
            return Stopped(context);
        }
        return FilterStatus.Continue;
    }

    private static FilterStatus Stopped(RequestContext context)
    {
        // A filter that stops without calling Respond (or pauses without being able to resume) would leave no
        // answer: treat it as a 500 rather than forwarding a request a filter meant to stop.
        if (context.ReplyStatus == 0)
        {
            return context.Respond(500, "filter_no_reply", "text/plain"u8, "500 Internal Server Error: filter_no_reply\n"u8);
        }
        return FilterStatus.Respond;
    }
}

/// <summary>
/// A built-in filter that screens the request's header values (<c>deny</c>) and so must screen its trailer fields too:
/// an upstream that merges trailers into headers would otherwise get, from a trailer, what the screen refuses in the
/// head. Trailers arrive after the request went upstream, so a refused field is dropped, not answered with 403.
/// Called on the body's path: it must not allocate.
/// </summary>
internal interface IRequestTrailerScreen : IProxyFilter
{
    /// <summary>True when the field (<paramref name="value"/> OWS trimmed) would have refused the request in its head.</summary>
    bool Refuses(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value);
}
