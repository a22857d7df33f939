namespace Proxy.Forwarding;

/// <summary>Which side of the proxy a failure came from.</summary>
internal enum ErrorSource : byte
{
    Downstream,
    Upstream,
    Internal,
}

/// <summary>
/// Why the proxy answered a request itself instead of relaying an upstream response. Mapped to a status
/// code and a stable details code in one place, for the answer, the log line and metrics.
/// </summary>
internal enum ProxyError : byte
{
    None = 0,
    NoRoute,
    MethodNotAllowed,
    NoDestination,
    /// <summary>Every destination is down (health checks, ejections) and the cluster is not in panic mode.</summary>
    NoHealthyDestination,
    /// <summary>A circuit breaker limit (max_requests, max_pending, max_connections) was reached.</summary>
    UpstreamOverloaded,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamPoolExhausted,
    UpstreamResponseTimeout,
    /// <summary>The route's or cluster's <c>request_timeout</c> (the whole exchange) ran out before the response head.</summary>
    UpstreamRequestTimeout,
    /// <summary>The last try's <c>retry.per_try_timeout</c> ran out.</summary>
    UpstreamPerTryTimeout,
    UpstreamReset,
    UpstreamInvalidResponse,
    /// <summary>The response body's framing is malformed (a broken chunked coding) and none of the response was relayed yet.</summary>
    UpstreamInvalidBody,
    UpstreamRequestWriteFailed,
    RequestBodyFailed,
    /// <summary>An upstream-request phase filter threw: the request is not sent (it may lack an edit the filter meant).</summary>
    FilterFailed,
    /// <summary>
    /// The client connection was aborted while its request was with the upstream (the client left, its HTTP/2 stream
    /// was reset, or shutdown's deadline passed): logged as 499, like nginx's "client closed request"; never answered.
    /// </summary>
    ClientAborted,
}

internal static class ProxyErrorExtensions
{
    public static int StatusCode(this ProxyError error) => error switch
    {
        ProxyError.NoRoute => 404,
        ProxyError.MethodNotAllowed => 405,
        ProxyError.NoDestination or ProxyError.NoHealthyDestination or ProxyError.UpstreamOverloaded
            or ProxyError.UpstreamPoolExhausted => 503,
        ProxyError.UpstreamConnectTimeout or ProxyError.UpstreamResponseTimeout or ProxyError.UpstreamRequestTimeout
            or ProxyError.UpstreamPerTryTimeout => 504,
        ProxyError.RequestBodyFailed => 400,
        ProxyError.FilterFailed => 500,
        ProxyError.ClientAborted => 499,
        _ => 502,
    };

    public static string DetailsCode(this ProxyError error) => error switch
    {
        ProxyError.NoRoute => "no_route",
        ProxyError.MethodNotAllowed => "method_not_allowed",
        ProxyError.NoDestination => "no_destination",
        ProxyError.NoHealthyDestination => "no_healthy_destination",
        ProxyError.UpstreamOverloaded => "upstream_overloaded",
        ProxyError.UpstreamConnectFailed => "upstream_connect_failed",
        ProxyError.UpstreamConnectTimeout => "upstream_connect_timeout",
        ProxyError.UpstreamPoolExhausted => "upstream_pool_exhausted",
        ProxyError.UpstreamResponseTimeout => "upstream_response_timeout",
        ProxyError.UpstreamRequestTimeout => "upstream_request_timeout",
        ProxyError.UpstreamPerTryTimeout => "upstream_per_try_timeout",
        ProxyError.UpstreamReset => "upstream_reset",
        ProxyError.UpstreamInvalidResponse => "upstream_invalid_response",
        ProxyError.UpstreamInvalidBody => "upstream_invalid_body",
        ProxyError.UpstreamRequestWriteFailed => "upstream_request_write_failed",
        ProxyError.RequestBodyFailed => "request_body_failed",
        ProxyError.FilterFailed => "filter_failed",
        ProxyError.ClientAborted => "client_aborted",
        _ => "none",
    };

    public static ErrorSource Source(this ProxyError error) => error switch
    {
        ProxyError.NoRoute or ProxyError.MethodNotAllowed or ProxyError.RequestBodyFailed or ProxyError.ClientAborted => ErrorSource.Downstream,
        ProxyError.NoDestination or ProxyError.NoHealthyDestination or ProxyError.UpstreamOverloaded
            or ProxyError.FilterFailed => ErrorSource.Internal,
        _ => ErrorSource.Upstream,
    };
}
