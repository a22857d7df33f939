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

[InlineArray(MaxConsumer)]
internal struct ConsumerBytes
{
    /// <summary>Consumer names and JWT subjects are short; a longer one is cut here (and flagged in the line).</summary>
    public const int MaxConsumer = 64;
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
    /// <summary>The details code of the filter that answered (a static string such as <c>rate_limited</c>), or of the parser or head limit that refused the head; null when the chain let the request through.</summary>
    public string? Policy;
    /// <summary>As in the metrics (a standard method or OTHER); null when a refused request line never gave one.</summary>
    public string? Method;
    public IPAddress? Client;
    public int ClientPort;
    public int Status;
    public int PathLength;
    public bool PathTruncated;
    public bool HasTrace;
    /// <summary>The upstream call's span id is set (a trace, and an upstream request was written).</summary>
    public bool HasSpan;
    public int RequestIdLength;
    /// <summary>Bytes of <see cref="Consumer"/> in use; 0 for an anonymous request.</summary>
    public int ConsumerLength;
    public bool ConsumerTruncated;
    public PathBytes Path;
    public TraceIdHex TraceId;
    public SpanIdHex SpanId;
    public RequestIdBytes RequestId;
    /// <summary>The verified consumer (an API key's owner), else the JWT subject: bytes as the key store or token had them.</summary>
    public ConsumerBytes Consumer;

    /// <summary>
    /// The line of a request refused before routing (a malformed or over-limit head, plain HTTP on a TLS port): no
    /// route, cluster or destination, duration 0, the details code as <see cref="Policy"/>, no trace, no consumer.
    /// </summary>
    public void SetRefused(long startUtcTicks, long bytesIn, string listener, string details, string? method, IPAddress? client,
        int status, ReadOnlySpan<byte> path, ReadOnlySpan<byte> requestId)
    {
        StartUtcTicks = startUtcTicks;
        DurationTicks = 0;
        UpstreamTicks = -1;
        BytesIn = bytesIn;
        BytesOut = 0;
        Listener = listener;
        Route = null;
        Cluster = null;
        Destination = null;
        Policy = details;
        Method = method;
        Client = client;
        Status = status;
        SetPath(path);
        HasTrace = false;
        HasSpan = false;
        requestId.CopyTo(RequestId);
        RequestIdLength = requestId.Length;
        SetConsumer(default);
    }

    /// <summary>Copies the request's path into <see cref="Path"/>, cut at <see cref="PathBytes.MaxPath"/> bytes (<see cref="PathTruncated"/>).</summary>
    public void SetPath(ReadOnlySpan<byte> path)
    {
        PathTruncated = path.Length > PathBytes.MaxPath;
        path = PathTruncated ? path[..PathBytes.MaxPath] : path;
        path.CopyTo(Path);
        PathLength = path.Length;
    }

    /// <summary>
    /// Copies the identity into <see cref="Consumer"/>, cut at <see cref="ConsumerBytes.MaxConsumer"/> bytes on a UTF-8
    /// character boundary (a cut inside a character would make the writer fall back to Latin-1 for a valid name).
    /// </summary>
    public void SetConsumer(ReadOnlySpan<byte> value)
    {
        ConsumerTruncated = value.Length > ConsumerBytes.MaxConsumer;
        if (ConsumerTruncated)
        {
            int cut = ConsumerBytes.MaxConsumer;
            // Back off over continuation bytes (10xxxxxx, RFC 3629 section 3) to the start of the cut character.
            while (cut > 0 && (value[cut] & 0xC0) == 0x80)
            {
                cut--;
            }
            value = value[..cut];
        }
        value.CopyTo(Consumer);
        ConsumerLength = value.Length;
    }
}
