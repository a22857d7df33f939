namespace Proxy.Pipeline;

/// <summary>
/// The filters one route runs on one listener, in order: the listener's default policies, then the route's own.
/// Built when the config is compiled and never changed; a request walks the array and stops at the first filter
/// that answers.
/// </summary>
internal sealed class FilterChain
{
    public static FilterChain Empty { get; } = new([], []);

    public FilterChain(IRequestHeadersFilter[] requestHeaders, string[] policyNames)
    {
        RequestHeaders = requestHeaders;
        PolicyNames = policyNames;
    }

    /// <summary>Request-headers phase filters in run order.</summary>
    public IRequestHeadersFilter[] RequestHeaders { get; }

    /// <summary>The policy behind each filter (same order), for diagnostics and tests.</summary>
    public string[] PolicyNames { get; }

    public bool IsEmpty => RequestHeaders.Length == 0;

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
