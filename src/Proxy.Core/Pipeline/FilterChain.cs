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

    /// <summary>Runs the request-headers phase; <see cref="FilterStatus.Respond"/> when a filter answered.</summary>
    public FilterStatus RunRequestHeaders(RequestContext context)
    {
        foreach (IRequestHeadersFilter filter in RequestHeaders)
        {
            if (filter.OnRequestHeaders(context) != FilterStatus.Continue)
            {
                // A filter that returns Respond without calling Respond would leave no answer: treat it as a 500
                // rather than forwarding a request a filter meant to stop.
                if (context.ReplyStatus == 0)
                {
                    return context.Respond(500, "filter_no_reply", "text/plain"u8, "500 Internal Server Error: filter_no_reply\n"u8);
                }
                return FilterStatus.Respond;
            }
        }
        return FilterStatus.Continue;
    }
}
