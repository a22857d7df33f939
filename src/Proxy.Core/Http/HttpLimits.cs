namespace Proxy.Http;

/// <summary>Per-listener message limits, resolved from config (server-wide defaults, listener overrides).</summary>
internal sealed record HttpLimits
{
    public int MaxRequestLine { get; init; } = 8 * 1024;
    public int MaxHeaderBytes { get; init; } = 32 * 1024;
    public int MaxHeaders { get; init; } = 100;
    public long MaxBodyBytes { get; init; } = 10 * 1024 * 1024;
    public TimeSpan HeaderTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan KeepAliveTimeout { get; init; } = TimeSpan.FromSeconds(75);
    /// <summary>Longest wait for the next body byte from a client before 408.</summary>
    public TimeSpan BodyTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public int MaxConnections { get; init; } = 10_000;
    /// <summary>Open connections per client IP address; 0: no cap (docs/resilience.md, "Per-client caps").</summary>
    public int MaxConnectionsPerIp { get; init; }
    /// <summary>Requests in flight per client IP address; 0: no cap.</summary>
    public int MaxRequestsPerIp { get; init; }
    /// <summary>HTTP/2 server limits (<c>limits.http2</c>).</summary>
    public Http2Limits Http2 { get; init; } = Http2Limits.Default;

    public static HttpLimits Default { get; } = new();
}

/// <summary>
/// HTTP/2 server limits (<c>limits.http2</c>): what we announce in SETTINGS and the thresholds of the attack guards
/// (rapid reset, control-frame floods, zero-window stalls). See docs/http2.md.
/// </summary>
internal sealed record Http2Limits
{
    /// <summary>SETTINGS_MAX_CONCURRENT_STREAMS; a HEADERS frame above it is refused with REFUSED_STREAM.</summary>
    public int MaxConcurrentStreams { get; init; } = 100;
    /// <summary>SETTINGS_MAX_HEADER_LIST_SIZE (decoded, name + value + 32 per field) and the cap on one encoded header block.</summary>
    public int MaxHeaderListSize { get; init; } = 32 * 1024;
    /// <summary>SETTINGS_INITIAL_WINDOW_SIZE: request body octets a stream may have in flight.</summary>
    public int InitialWindowSize { get; init; } = 256 * 1024;
    /// <summary>Connection receive window (raised from 65,535 with a WINDOW_UPDATE at start).</summary>
    public int ConnectionWindowSize { get; init; } = 1024 * 1024;
    /// <summary>SETTINGS_MAX_FRAME_SIZE we accept.</summary>
    public int MaxFrameSize { get; init; } = 16_384;
    /// <summary>Streams the client may reset within <see cref="RapidResetWindow"/> before GOAWAY ENHANCE_YOUR_CALM (CVE-2023-44487).</summary>
    public int RapidResetMax { get; init; } = 200;
    public TimeSpan RapidResetWindow { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>SETTINGS, PING, PRIORITY and empty DATA/CONTINUATION frames per second before GOAWAY ENHANCE_YOUR_CALM.</summary>
    public int MaxControlFramesPerSecond { get; init; } = 1000;
    /// <summary>Longest a stream may wait for the client to open a zero send window before it is reset.</summary>
    public TimeSpan SendStallTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public static Http2Limits Default { get; } = new();
}
