using System.Net;
using System.Runtime.CompilerServices;
using Proxy.Diagnostics.Tracing;

namespace Proxy.Diagnostics.AccessLog;

[InlineArray(MaxPath)]
internal struct PathBytes
{
    public const int MaxPath = 256;
    private byte _element;
}

[InlineArray(Http.RequestId.MaxLength)]
internal struct RequestIdBytes
{
    private byte _element;
}

/// <summary>
/// One request as the access log sees it: fixed size, filled on the I/O thread by copying values (no formatting, no
/// allocation: strings here are references to names that already exist in the config snapshot or the destination),
/// and turned into JSON later by the background writer.
/// </summary>
internal struct AccessLogRecord
{
    /// <summary>UTC ticks (<see cref="DateTime.Ticks"/>) of the moment the request head was parsed.</summary>
    public long StartUtcTicks;
    public long DurationTicks;
    /// <summary>From the upstream request head written to its response head, in <see cref="System.Diagnostics.Stopwatch"/> ticks; -1 when no upstream answered.</summary>
    public long UpstreamTicks;
    public long BytesIn;
    public long BytesOut;
    public string Listener;
    public string? Route;
    public string? Cluster;
    public string? Destination;
    public string Method;
    public IPAddress? Client;
    public int ClientPort;
    public int Status;
    public int PathLength;
    public bool PathTruncated;
    public bool HasTrace;
    /// <summary>The upstream call's span id is set (a trace, and an upstream request was written).</summary>
    public bool HasSpan;
    public int RequestIdLength;
    public PathBytes Path;
    public TraceIdHex TraceId;
    public SpanIdHex SpanId;
    public RequestIdBytes RequestId;
}
