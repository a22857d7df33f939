using System.Buffers;
using System.Net;
using System.Text;
using Proxy.Http;

namespace Proxy.Pipeline;

/// <summary>
/// The request as filters see it: a read-only view of the parsed head (bytes straight from the receive buffer,
/// nothing materialised) plus a way to answer locally. One instance per in-flight request, pooled with the
/// connection's request state and reset before each request's chain runs: do not keep a reference to it, or to
/// a span it returned, after the phase returns.
/// </summary>
public sealed partial class RequestContext
{
    /// <summary>Cap on a local answer's extra headers plus body: local replies are short by design.</summary>
    public const int MaxReplyBytes = 16 * 1024;

    private static readonly SearchValues<byte> s_fieldForbidden = SearchValues.Create("\r\n\0"u8);

    private RequestHead _head = null!;
    private IPAddress _clientAddress = IPAddress.None;
    private string _routeId = "";
    private string _listenerName = "";
    private string? _clientCertificateSubject;

    // The local answer: extra header lines ("name: value\r\n"...) then the body, in one buffer kept across
    // requests so that answering (a 429 under a flood) allocates nothing once the buffer has grown.
    private byte[] _reply = [];
    private int _replyHeadersLength;
    private int _replyBodyLength;
    private byte[] _contentType = [];

    internal RequestContext()
    {
    }

    /// <summary>The request method as sent ("GET").</summary>
    public ReadOnlySpan<byte> Method => _head.MethodBytes;

    /// <summary>The path part of the request target, as sent (not percent-decoded), without the query.</summary>
    public ReadOnlySpan<byte> Path => _head.Path;

    /// <summary>The query string without the leading '?', empty when there is none.</summary>
    public ReadOnlySpan<byte> Query => _head.Query;

    /// <summary>The Host field's value as sent (may include a port), empty when absent.</summary>
    public ReadOnlySpan<byte> Host => _head.Host;

    /// <summary>
    /// The address of the connection's peer (the socket's remote address; IPv4-mapped IPv6 addresses are reported as
    /// IPv4). X-Forwarded-For is not consulted.
    /// </summary>
    public IPAddress ClientAddress => _clientAddress;

    /// <summary>
    /// The verified identity, set by authentication filters (JWT, API keys) for the filters after them; empty until
    /// one does.
    /// </summary>
    public RequestIdentity Identity { get; } = new();

    /// <summary>The id of the route the request matched.</summary>
    public string RouteId => _routeId;

    /// <summary>The name of the listener the request arrived on.</summary>
    public string ListenerName => _listenerName;

    /// <summary>
    /// The subject of the client's TLS certificate ("CN=alice, O=Example") when the listener asks for client certificates
    /// and the client presented one that chains to the configured CA; null otherwise (cleartext, no certificate).
    /// </summary>
    public string? ClientCertificateSubject => _clientCertificateSubject;

    /// <summary>
    /// The first field named <paramref name="name"/> (ASCII, compared case-insensitively, RFC 9110 section 5.1).
    /// Repeated fields are not combined.
    /// </summary>
    public bool TryGetHeader(ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value)
    {
        int i = IndexOfHeader(name, 0);
        value = i >= 0 ? _head.Value(i) : default;
        return i >= 0;
    }

    /// <summary>
    /// As <see cref="TryGetHeader(ReadOnlySpan{byte}, out ReadOnlySpan{byte})"/>, and whether another field of the name
    /// is there, before or after, also spelled with '_' for '-' (<c>x_api_key</c>): a credential checked in one copy
    /// must not travel next to an unchecked second, and CGI-style upstreams read both spellings as one variable
    /// (as <see cref="Forwarding.ProxyOwnedFields"/> says).
    /// </summary>
    internal bool TryGetHeader(ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value, out bool repeated)
    {
        RequestHead head = _head;
        int found = -1;
        repeated = false;
        for (int i = 0; i < head.FieldCount; i++)
        {
            ReadOnlySpan<byte> field = head.Name(i);
            if (field.Length != name.Length)
            {
                continue;
            }
            if (found < 0 && Ascii.EqualsIgnoreCase(field, name))
            {
                found = i;
            }
            else if (Forwarding.ProxyOwnedFields.SameName(field, name))
            {
                repeated = true;
            }
        }
        value = found >= 0 ? head.Value(found) : default;
        return found >= 0;
    }

    /// <summary>The index of the first field named <paramref name="name"/> at or after <paramref name="start"/>; -1 when none.</summary>
    private int IndexOfHeader(ReadOnlySpan<byte> name, int start)
    {
        RequestHead head = _head;
        for (int i = start; i < head.FieldCount; i++)
        {
            if (Ascii.EqualsIgnoreCase(head.Name(i), name))
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>
    /// Adds a header line to the response: to the local answer when a filter then calls <see cref="Respond"/>,
    /// otherwise (the chain continues) to the response the client gets, forwarded from the upstream or written by the
    /// route's <c>respond</c>. In the response-headers phase it adds to the response being written. The proxy writes
    /// Content-Type (of a local answer), Content-Length, Transfer-Encoding, Date and Connection itself. Throws
    /// <see cref="ArgumentException"/> on CR, LF or NUL, or for a framing field (Content-Length, Transfer-Encoding,
    /// Connection).
    /// </summary>
    public void AddResponseHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        if (name.IsEmpty || name.ContainsAny(s_fieldForbidden) || name.Contains((byte)':') || value.ContainsAny(s_fieldForbidden)
            || IsFramingField(name))
        {
            ThrowInvalidField();
        }
        int length = name.Length + value.Length + 4;
        // The response-headers phase may add fields after Respond stored the body behind them: move the body along.
        Reserve(_replyHeadersLength, length + _replyBodyLength);
        if (_replyBodyLength != 0)
        {
            _reply.AsSpan(_replyHeadersLength, _replyBodyLength).CopyTo(_reply.AsSpan(_replyHeadersLength + length));
        }
        Span<byte> span = _reply.AsSpan(_replyHeadersLength, length);
        HttpWriting.FormatField(span, name, value);
        _replyHeadersLength += length;
    }

    /// <summary>
    /// Answers the request locally and returns <see cref="FilterStatus.Respond"/> for the phase to return.
    /// <paramref name="details"/> is a stable snake_case code ("rate_limited") for logs, metrics and the access log's
    /// <c>policy</c> field (kept by reference): pass a constant, never text from the request. The body and the
    /// headers added before share <see cref="MaxReplyBytes"/>.
    /// </summary>
    public FilterStatus Respond(int status, string details, ReadOnlySpan<byte> contentType, ReadOnlySpan<byte> body)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(status, 200);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(status, 599);
        ArgumentException.ThrowIfNullOrEmpty(details);
        if (contentType.ContainsAny(s_fieldForbidden))
        {
            ThrowInvalidField();
        }
        body.CopyTo(Reserve(_replyHeadersLength, body.Length));
        _replyBodyLength = body.Length;
        if (!contentType.SequenceEqual(_contentType))
        {
            // Filters pass the same constant each time, so this copy happens once per distinct type.
            _contentType = contentType.ToArray();
        }
        ReplyStatus = status;
        ReplyDetails = details;
        return FilterStatus.Respond;
    }

    /// <summary>Status of the local answer; 0 until <see cref="Respond"/> is called.</summary>
    internal int ReplyStatus { get; private set; }

    internal string ReplyDetails { get; private set; } = "";

    /// <summary>The parsed head the context was bound to (tests rebind it per simulated request).</summary>
    internal RequestHead Head => _head;

    /// <summary>The filter that returned <see cref="FilterStatus.Pause"/> (index in the chain).</summary>
    internal int PausedAt { get; set; }

    internal ReadOnlySpan<byte> ReplyHeaders => _reply.AsSpan(0, _replyHeadersLength);

    internal ReadOnlySpan<byte> ReplyBody => _reply.AsSpan(_replyHeadersLength, _replyBodyLength);

    internal ReadOnlySpan<byte> ReplyContentType => _contentType;

    /// <summary>Binds the context to a request before its chain runs.</summary>
    internal void Begin(RequestHead head, IPAddress clientAddress, string routeId, string listenerName, string? clientCertificateSubject = null)
    {
        _head = head;
        _clientCertificateSubject = clientCertificateSubject;
        _clientAddress = clientAddress;
        _routeId = routeId;
        _listenerName = listenerName;
        _replyHeadersLength = 0;
        _replyBodyLength = 0;
        ReplyStatus = 0;
        ReplyDetails = "";
        Identity.Reset();
        ResetUpstreamEdits();
        ResetLaterPhases();
    }

    private Span<byte> Reserve(int offset, int length)
    {
        int needed = offset + length;
        if (needed > MaxReplyBytes)
        {
            ThrowTooLarge();
        }
        if (needed > _reply.Length)
        {
            // Grows to at most MaxReplyBytes once per pooled context; the body (if any) is written after this.
            Array.Resize(ref _reply, Math.Min(MaxReplyBytes, Math.Max(needed, Math.Max(512, _reply.Length * 2))));
        }
        return _reply.AsSpan(offset, length);
    }

    private static void ThrowInvalidField() => throw new ArgumentException("A header name or value contains CR, LF, NUL or (in a name) ':'.");

    private static void ThrowTooLarge() => throw new ArgumentException($"A local answer's headers and body are limited to {MaxReplyBytes} bytes.");
}
