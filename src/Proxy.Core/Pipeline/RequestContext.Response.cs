using System.Diagnostics;
using System.Text;
using Proxy.Http;

namespace Proxy.Pipeline;

// The phases after the request-headers one: the try being sent upstream, the response head on its way to the client,
// and the summary the logging phase reads. Everything here is fields on the pooled context, set by the connection
// just before a phase runs: nothing is allocated per request.
public sealed partial class RequestContext
{
    // The upstream edits the request-headers phase left (lengths into the edit buffers): each try's upstream-request
    // phase starts again from here, so a retry does not carry the previous try's fields twice.
    private int _upstreamAddedMark;
    private int _upstreamRemovedMark;
    private string _upstreamDestination = "";
    private int _upstreamTry;

    // The response head being written (null for a local answer) and where in the reply-fields buffer the fields added
    // by the response-headers phase start (a proxy error answer writes only those).
    private ResponseHead? _response;
    private int _responseStatus;
    private bool _isLocalReply;
    private int _responsePhaseStart;
    private bool _inResponsePhase;

    private long _upstreamStartedTicks;
    private long _upstreamRespondedTicks;

    /// <summary>
    /// Upstream-request phase: the chosen destination's address as configured ("http://10.0.0.5:8080"); empty
    /// before the first try.
    /// </summary>
    public string UpstreamDestination => _upstreamDestination;

    /// <summary>Upstream-request phase: 0 for the first try, 1 for the first retry, and so on.</summary>
    public int UpstreamTry => _upstreamTry;

    /// <summary>
    /// The status of the response to the client: set for the response-headers phase (the upstream's final status or
    /// the local answer's) and kept for the logging phase (0 there when nothing was written: the client went away
    /// first).
    /// </summary>
    public int ResponseStatus => _responseStatus;

    /// <summary>True when the response is the proxy's own answer (a filter, a route's <c>respond</c>, an error), not the upstream's.</summary>
    public bool IsLocalReply => _isLocalReply;

    /// <summary>Response-headers phase: number of fields in the upstream's response head, as received (0 for a local answer).</summary>
    public int ResponseFieldCount => _response?.FieldCount ?? 0;

    /// <summary>Response-headers phase: the name of the upstream's response field <paramref name="index"/>, as sent.</summary>
    public ReadOnlySpan<byte> ResponseFieldName(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)ResponseFieldCount, nameof(index));
        return _response!.Name(index);
    }

    /// <summary>Response-headers phase: the value of the upstream's response field <paramref name="index"/>.</summary>
    public ReadOnlySpan<byte> ResponseFieldValue(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)ResponseFieldCount, nameof(index));
        return _response!.Value(index);
    }

    /// <summary>
    /// Response-headers phase: the first upstream response field named <paramref name="name"/> (case-insensitive) that
    /// will be forwarded (not hop-by-hop, not removed). Fields added by filters are not searched.
    /// </summary>
    public bool TryGetResponseHeader(ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value)
    {
        if (_response is { } response)
        {
            for (int i = 0; i < response.FieldCount; i++)
            {
                if (!response.Fields[i].HopByHop && Ascii.EqualsIgnoreCase(response.Name(i), name))
                {
                    value = response.Value(i);
                    return true;
                }
            }
        }
        value = default;
        return false;
    }

    /// <summary>
    /// Response-headers phase: drops every upstream response field named <paramref name="name"/> (case-insensitive)
    /// and returns how many. Fields filters added are kept; a local answer has no upstream fields (returns 0). The
    /// framing fields (Content-Length, Transfer-Encoding, Connection) are the proxy's: naming one throws
    /// <see cref="ArgumentException"/>, as does calling this outside the phase.
    /// </summary>
    public int RemoveResponseHeader(ReadOnlySpan<byte> name)
    {
        if (!_inResponsePhase)
        {
            ThrowNotInResponsePhase();
        }
        if (name.IsEmpty || name.ContainsAny(s_fieldForbidden) || name.Contains((byte)':') || IsFramingField(name))
        {
            ThrowInvalidResponseField();
        }
        if (_response is not { } response)
        {
            return 0;
        }
        int removed = 0;
        for (int i = 0; i < response.FieldCount; i++)
        {
            if (!response.Fields[i].HopByHop && Ascii.EqualsIgnoreCase(response.Name(i), name))
            {
                // The head writer skips hop-by-hop fields: marking the field is the whole removal (no copy).
                response.Fields[i].HopByHop = true;
                removed++;
            }
        }
        return removed;
    }

    /// <summary>Response-headers phase: replaces every upstream field named <paramref name="name"/> by one with <paramref name="value"/>.</summary>
    public void SetResponseHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        RemoveResponseHeader(name);
        AddResponseHeader(name, value);
    }

    /// <summary>Logging phase: how the exchange ended.</summary>
    public RequestOutcome Outcome { get; private set; }

    /// <summary>
    /// Logging phase: the details code of a local answer ("no_route", "rate_limited", "upstream_connect_failed",
    /// "direct_response" for a route's <c>respond</c>); empty when the upstream answered.
    /// </summary>
    public string ResponseDetails { get; private set; } = "";

    /// <summary>Logging phase: bytes of the request as received: its head plus the body bytes read (framing included).</summary>
    public long RequestBytes { get; private set; }

    /// <summary>Logging phase: bytes of response body sent to the client (as read from the upstream, framing included).</summary>
    public long ResponseBytes { get; private set; }

    /// <summary>Logging phase: from the request head parsed to the response written (or the failure).</summary>
    public TimeSpan Duration { get; private set; }

    /// <summary>
    /// From the last try's upstream-request phase to the upstream's final response head: set from the
    /// response-headers phase on; <see cref="TimeSpan.Zero"/> when no upstream answered.
    /// </summary>
    public TimeSpan UpstreamDuration => _upstreamRespondedTicks != 0 && _upstreamStartedTicks != 0
        ? Stopwatch.GetElapsedTime(_upstreamStartedTicks, _upstreamRespondedTicks) : TimeSpan.Zero;

    /// <summary>The fields the response-headers phase added, for an answer that writes only those (a proxy error).</summary>
    internal ReadOnlySpan<byte> ResponsePhaseFields => _reply.AsSpan(_responsePhaseStart, _replyHeadersLength - _responsePhaseStart);

    /// <summary>Called when the request-headers phase is over: later phases' upstream edits start from here.</summary>
    internal void MarkUpstreamEdits()
    {
        _upstreamAddedMark = _upstreamAddedLength;
        _upstreamRemovedMark = _upstreamRemovedLength;
    }

    /// <summary>Before a try's upstream-request phase: drops the previous try's edits, records where this one goes.</summary>
    // startedAt: the forwarder's timestamp of the try's start (shared with the upstream duration metric); 0: read the clock.
    internal void BeginUpstreamTry(string destination, int attempt, long startedAt = 0)
    {
        _upstreamAddedLength = _upstreamAddedMark;
        _upstreamRemovedLength = _upstreamRemovedMark;
        _upstreamDestination = destination;
        _upstreamTry = attempt;
        _upstreamStartedTicks = startedAt != 0 ? startedAt : Stopwatch.GetTimestamp();
        _upstreamRespondedTicks = 0;
    }

    /// <summary>Before the response-headers phase: the head about to be written (null: a local answer with <paramref name="status"/>).</summary>
    internal void BeginResponse(ResponseHead? response, int status, long respondedAt = 0)
    {
        _response = response;
        _responseStatus = status;
        _isLocalReply = response is null;
        _responsePhaseStart = _replyHeadersLength;
        if (response is not null && _upstreamStartedTicks != 0)
        {
            _upstreamRespondedTicks = respondedAt != 0 ? respondedAt : Stopwatch.GetTimestamp();
        }
        _inResponsePhase = true;
    }

    /// <summary>After the response-headers phase: the upstream's head is not the context's to keep.</summary>
    internal void EndResponse()
    {
        _response = null;
        _inResponsePhase = false;
    }

    /// <summary>Before the logging phase: what happened.</summary>
    internal void Complete(int status, RequestOutcome outcome, string details, long requestBytes, long responseBytes, TimeSpan duration)
    {
        _responseStatus = status;
        Outcome = outcome;
        ResponseDetails = details;
        RequestBytes = requestBytes;
        ResponseBytes = responseBytes;
        Duration = duration;
    }

    private void ResetLaterPhases()
    {
        _upstreamAddedMark = 0;
        _upstreamRemovedMark = 0;
        _upstreamDestination = "";
        _upstreamTry = 0;
        _response = null;
        _responseStatus = 0;
        _isLocalReply = false;
        _responsePhaseStart = 0;
        _inResponsePhase = false;
        _upstreamStartedTicks = 0;
        _upstreamRespondedTicks = 0;
        Outcome = RequestOutcome.Relayed;
        ResponseDetails = "";
        RequestBytes = 0;
        ResponseBytes = 0;
        Duration = TimeSpan.Zero;
    }

    /// <summary>The fields that describe the body's framing and the connection: the proxy writes them (RFC 9112 sections 6 and 9.6).</summary>
    internal static bool IsFramingField(ReadOnlySpan<byte> name)
        => Ascii.EqualsIgnoreCase(name, "content-length"u8) || Ascii.EqualsIgnoreCase(name, "transfer-encoding"u8)
            || Ascii.EqualsIgnoreCase(name, "connection"u8);

    private static void ThrowInvalidResponseField()
        => throw new ArgumentException("A response field name is empty, contains CR, LF, NUL or ':', or names a framing field (Content-Length, Transfer-Encoding, Connection).");

    private static void ThrowNotInResponsePhase()
        => throw new InvalidOperationException("Response fields can be removed only in the response-headers phase.");
}
