using System.Buffers;
using System.Buffers.Text;
using System.Security.Cryptography;
using Proxy.Http1;
using Proxy.Http2.HPack;

namespace Proxy.Http2.Server;

/// <summary>Why a request header block is malformed (RFC 9113 section 8.1.1): each is a stream PROTOCOL_ERROR.</summary>
internal enum Http2RequestError : byte
{
    None,
    PseudoAfterRegular,
    UnknownPseudo,
    DuplicatePseudo,
    MissingPseudo,
    InvalidPseudoValue,
    UppercaseName,
    InvalidName,
    InvalidValue,
    ConnectionSpecific,
    InvalidTe,
    InvalidContentLength,
    PseudoInTrailers,
    TooLarge,
}

/// <summary>
/// Collects one request header block as the HPACK decoder delivers it, validates it (RFC 9113 section 8.2 and
/// 8.3.1), and writes the equivalent HTTP/1.1 request head so the request runs through the HTTP/1.1 pipeline
/// (routing, filters, forwarding) unchanged. One instance per connection, reused for every block: only one
/// header block is in progress at a time (section 6.10). Buffers grow to the header list limit and stay.
/// </summary>
internal sealed class Http2RequestHead
{
    // Pseudo-header values go into the request line: no whitespace or controls either.
    private static readonly SearchValues<byte> s_badPseudo = SearchValues.Create("\0\r\n \t"u8);

    private readonly int _limit;
    private byte[] _fields = new byte[1024];
    private int _fieldsLength;
    private byte[] _pseudo = new byte[256];
    private int _pseudoLength;
    private byte[] _cookies = new byte[256];
    private int _cookiesLength;
    // Offsets into _pseudo; -1 when absent.
    private int _methodStart, _methodLength, _pathStart, _pathLength, _authorityStart, _authorityLength, _schemeStart, _schemeLength;
    private int _protocolStart, _protocolLength;
    // The Sec-WebSocket-Key the proxy sends on the bridged HTTP/1.1 upgrade (RFC 6455 section 4.1): base64 of 16 random octets.
    private readonly byte[] _webSocketKey = new byte[WebSocketKeyLength];
    private bool _regularSeen;
    private bool _trailers;

    /// <summary>Length of a Sec-WebSocket-Key: 16 octets in base64 (RFC 6455 section 4.1).</summary>
    public const int WebSocketKeyLength = 24;

    public Http2RequestHead(int maxHeaderListSize) => _limit = maxHeaderListSize;

    public Http2RequestError Error { get; private set; }

    /// <summary>Declared content-length, or -1.</summary>
    public long ContentLength { get; private set; }

    public bool IsHead { get; private set; }

    public bool IsConnect { get; private set; }

    /// <summary>
    /// An extended CONNECT (RFC 8441 section 4: <c>:method CONNECT</c> with <c>:protocol</c>): bridged as an HTTP/1.1
    /// <c>GET</c> with <c>Upgrade: &lt;protocol&gt;</c> (RFC 9110 section 7.8), and the stream becomes a tunnel once it is accepted.
    /// </summary>
    public bool IsExtendedConnect { get; private set; }

    /// <summary>The extended CONNECT asks for <c>websocket</c>: the bridged request carries a <see cref="WebSocketKey"/> of ours.</summary>
    public bool IsWebSocket { get; private set; }

    /// <summary>The Sec-WebSocket-Key written into the bridged request (valid when <see cref="IsWebSocket"/>).</summary>
    public ReadOnlySpan<byte> WebSocketKey => _webSocketKey;

    /// <summary>Starts a new block: a request's header section, or (<paramref name="trailers"/>) its trailer section.</summary>
    public void Reset(bool trailers)
    {
        _trailers = trailers;
        _fieldsLength = _pseudoLength = _cookiesLength = 0;
        _methodStart = _pathStart = _authorityStart = _schemeStart = -1;
        _methodLength = _pathLength = _authorityLength = 0;
        _protocolStart = -1;
        _protocolLength = 0;
        _regularSeen = false;
        Error = Http2RequestError.None;
        ContentLength = -1;
        IsHead = IsConnect = IsExtendedConnect = IsWebSocket = false;
    }

    /// <summary>
    /// After a trailer block (<see cref="Reset"/> with <c>trailers: true</c>) completed without error: its fields as
    /// HTTP/1.1 field lines (<c>name: value CRLF</c>, forbidden trailer fields dropped), ready to follow the last chunk.
    /// </summary>
    public ReadOnlySpan<byte> TrailerSection => _trailers ? _fields.AsSpan(0, _fieldsLength) : default;

    /// <summary>The sink handed to <see cref="HPackDecoder.Decode{THandler}(ReadOnlySpan{byte}, bool, ref THandler)"/>.</summary>
    public Sink AsSink() => new(this);

    internal readonly struct Sink(Http2RequestHead owner) : IHeaderSink
    {
        public void OnStaticIndexedHeader(int index) => owner.OnField(HPackStaticTable.Name(index), HPackStaticTable.Value(index));

        public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed) => owner.OnField(HPackStaticTable.Name(index), value);

        public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed) => owner.OnField(name, value);
    }

    internal void OnField(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        if (Error != Http2RequestError.None)
        {
            return; // keep decoding (HPACK state) but nothing more to learn
        }
        if (name.IsEmpty)
        {
            Error = Http2RequestError.InvalidName;
            return;
        }
        if (name[0] == (byte)':')
        {
            OnPseudo(name, value);
            return;
        }
        _regularSeen = true;
        if (!Http2FieldSyntax.IsValidName(name))
        {
            Error = Http2FieldSyntax.HasUppercase(name) ? Http2RequestError.UppercaseName : Http2RequestError.InvalidName;
            return;
        }
        // Section 8.2.1: no NUL/CR/LF, no leading or trailing whitespace; the rest of the value is checked by the
        // HTTP/1.1 parser.
        if (!Http2FieldSyntax.IsValidValue(value))
        {
            Error = Http2RequestError.InvalidValue;
            return;
        }
        if (_trailers)
        {
            // Kept as HTTP/1.1 field lines for the bridged chunked body's trailer section (RFC 9112 section 7.1.2),
            // minus the fields no trailer may carry (RFC 9110 section 6.5.1).
            if (!TrailerFilter.IsForbidden(name))
            {
                AppendField(name, value);
            }
            return;
        }
        switch (name.Length)
        {
            case 2 when name.SequenceEqual("te"u8):
                // Section 8.2.2: only "trailers". Kept in the bridged head: the forwarder reads it to send "te: trailers"
                // to an HTTP/2 upstream (gRPC servers require it) and to keep the response in a framing that carries
                // trailers; the HTTP/1.1 upstream writer drops it with the other hop-by-hop fields. (It used to be dropped
                // here, so an HTTP/2 client's gRPC call reached an h2c upstream without it, and lost grpc-status when
                // the upstream's response had a content-length.)
                if (!value.SequenceEqual("trailers"u8))
                {
                    Error = Http2RequestError.InvalidTe;
                    return;
                }
                break;
            case 4 when name.SequenceEqual("host"u8):
                if (_authorityStart >= 0)
                {
                    return; // :authority wins (section 8.3.1)
                }
                break;
            case 6 when name.SequenceEqual("cookie"u8):
                // Section 8.2.3: split crumbs are joined with "; " for HTTP/1.1.
                AppendCookie(value);
                return;
            case 7 when name.SequenceEqual("upgrade"u8):
            case 10 when name.SequenceEqual("connection"u8) || name.SequenceEqual("keep-alive"u8):
            case 16 when name.SequenceEqual("proxy-connection"u8):
            case 17 when name.SequenceEqual("transfer-encoding"u8):
                Error = Http2RequestError.ConnectionSpecific; // section 8.2.2
                return;
            case 17 when name.SequenceEqual("sec-websocket-key"u8):
                if (_protocolStart >= 0)
                {
                    return; // RFC 8441 section 5: not used over HTTP/2; the bridged upgrade carries a key of ours
                }
                break;
            case 14 when name.SequenceEqual("content-length"u8):
                if (!Utf8Parser.TryParse(value, out long length, out int used) || used != value.Length || length < 0
                    || (ContentLength >= 0 && ContentLength != length))
                {
                    Error = Http2RequestError.InvalidContentLength;
                    return;
                }
                ContentLength = length;
                break;
        }
        AppendField(name, value);
    }

    private void AppendField(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        // name ": " value CRLF
        int size = name.Length + value.Length + 4;
        if (!Ensure(ref _fields, _fieldsLength + size))
        {
            return;
        }
        Span<byte> dest = _fields.AsSpan(_fieldsLength);
        name.CopyTo(dest);
        dest[name.Length] = (byte)':';
        dest[name.Length + 1] = (byte)' ';
        value.CopyTo(dest[(name.Length + 2)..]);
        dest[name.Length + 2 + value.Length] = (byte)'\r';
        dest[name.Length + 3 + value.Length] = (byte)'\n';
        _fieldsLength += size;
    }

    private void OnPseudo(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        if (_trailers)
        {
            Error = Http2RequestError.PseudoInTrailers; // section 8.1
            return;
        }
        if (_regularSeen)
        {
            Error = Http2RequestError.PseudoAfterRegular; // section 8.3
            return;
        }
        if (value.IndexOfAny(s_badPseudo) >= 0)
        {
            Error = Http2RequestError.InvalidPseudoValue;
            return;
        }
        ref int start = ref _methodStart;
        ref int length = ref _methodLength;
        if (name.SequenceEqual(":method"u8))
        {
        }
        else if (name.SequenceEqual(":path"u8))
        {
            start = ref _pathStart;
            length = ref _pathLength;
        }
        else if (name.SequenceEqual(":authority"u8))
        {
            start = ref _authorityStart;
            length = ref _authorityLength;
        }
        else if (name.SequenceEqual(":scheme"u8))
        {
            start = ref _schemeStart;
            length = ref _schemeLength;
        }
        else if (name.SequenceEqual(":protocol"u8))
        {
            // RFC 8441 section 4: allowed because our SETTINGS carry SETTINGS_ENABLE_CONNECT_PROTOCOL = 1; Complete checks the method.
            start = ref _protocolStart;
            length = ref _protocolLength;
        }
        else
        {
            // :status is a response pseudo-header.
            Error = Http2RequestError.UnknownPseudo;
            return;
        }
        if (start >= 0)
        {
            Error = Http2RequestError.DuplicatePseudo;
            return;
        }
        if (!Ensure(ref _pseudo, _pseudoLength + value.Length))
        {
            return;
        }
        value.CopyTo(_pseudo.AsSpan(_pseudoLength));
        start = _pseudoLength;
        length = value.Length;
        _pseudoLength += value.Length;
    }

    private void AppendCookie(ReadOnlySpan<byte> value)
    {
        int separator = _cookiesLength > 0 ? 2 : 0;
        if (!Ensure(ref _cookies, _cookiesLength + separator + value.Length))
        {
            return;
        }
        if (separator > 0)
        {
            _cookies[_cookiesLength] = (byte)';';
            _cookies[_cookiesLength + 1] = (byte)' ';
        }
        value.CopyTo(_cookies.AsSpan(_cookiesLength + separator));
        _cookiesLength += separator + value.Length;
    }

    private bool Ensure(ref byte[] buffer, int needed)
    {
        if (needed <= buffer.Length)
        {
            return true;
        }
        // The decoder already caps the decoded list at the limit; this is a second fence for our own framing bytes.
        if (needed > _limit + 4096)
        {
            Error = Http2RequestError.TooLarge;
            return false;
        }
        Grow(ref buffer, needed);
        return true;
    }

    private static void Grow(ref byte[] buffer, int needed)
    {
        var bigger = new byte[Math.Max(needed, buffer.Length * 2)];
        buffer.AsSpan().CopyTo(bigger);
        buffer = bigger;
    }


    /// <summary>
    /// At the end of the block: checks the required pseudo-headers (section 8.3.1) and fixes the body framing.
    /// <paramref name="endStream"/>: the HEADERS frame ended the stream (no body).
    /// </summary>
    public Http2RequestError Complete(bool endStream)
    {
        if (Error != Http2RequestError.None || _trailers)
        {
            return Error;
        }
        if (_methodStart < 0)
        {
            return Error = Http2RequestError.MissingPseudo;
        }
        ReadOnlySpan<byte> method = _pseudo.AsSpan(_methodStart, _methodLength);
        IsConnect = method.SequenceEqual("CONNECT"u8);
        IsHead = method.SequenceEqual("HEAD"u8);
        if (_protocolStart >= 0)
        {
            // RFC 8441 section 4: :protocol only on CONNECT, and then :scheme and :path are required like any request's.
            if (!IsConnect || _protocolLength == 0)
            {
                return Error = Http2RequestError.UnknownPseudo;
            }
            if (_schemeStart < 0 || _pathStart < 0 || _pathLength == 0 || _authorityStart < 0)
            {
                return Error = Http2RequestError.MissingPseudo;
            }
            if (endStream || ContentLength >= 0)
            {
                return Error = Http2RequestError.InvalidContentLength; // a tunnel: its DATA is the protocol's, never a body
            }
            IsConnect = false;
            IsExtendedConnect = true;
            IsWebSocket = System.Text.Ascii.EqualsIgnoreCase(_pseudo.AsSpan(_protocolStart, _protocolLength), "websocket"u8);
            if (IsWebSocket)
            {
                Span<byte> nonce = stackalloc byte[16];
                RandomNumberGenerator.Fill(nonce);
                Base64.EncodeToUtf8(nonce, _webSocketKey, out _, out _);
            }
        }
        else if (IsConnect)
        {
            // Section 8.5: :authority only.
            if (_schemeStart >= 0 || _pathStart >= 0 || _authorityStart < 0)
            {
                return Error = Http2RequestError.MissingPseudo;
            }
        }
        else if (_schemeStart < 0 || _pathStart < 0 || _pathLength == 0)
        {
            return Error = Http2RequestError.MissingPseudo;
        }
        // Section 8.3.1: an :authority, when sent, names a host (an http or https URI's host is never empty, RFC 9110
        // section 4.2.1); an empty one would be forwarded as an empty Host field.
        if (_authorityStart >= 0 && _authorityLength == 0)
        {
            return Error = Http2RequestError.InvalidPseudoValue;
        }
        // Section 8.3.1: outside CONNECT, :path is origin-form ("/...", with the query) or "*" for OPTIONS; the
        // absolute-form of an HTTP/1.1 proxy request does not exist in HTTP/2 (the authority is :authority's alone).
        if (!IsConnect && _pseudo[_pathStart] != (byte)'/'
            && !(_pathLength == 1 && _pseudo[_pathStart] == (byte)'*' && method.SequenceEqual("OPTIONS"u8)))
        {
            return Error = Http2RequestError.InvalidPseudoValue;
        }
        if (endStream && ContentLength > 0)
        {
            return Error = Http2RequestError.InvalidContentLength; // section 8.1.1: content-length vs DATA (none)
        }
        _endStream = endStream;
        return Http2RequestError.None;
    }

    private bool _endStream;

    /// <summary>True when the HTTP/1.1 head says <c>transfer-encoding: chunked</c> (a body of unknown length); never on a tunnel.</summary>
    public bool Chunked => !_endStream && ContentLength < 0 && !IsExtendedConnect;

    /// <summary>Octets <see cref="WriteTo"/> writes.</summary>
    public int Http1Length
    {
        get
        {
            int length = (IsExtendedConnect ? 3 : _methodLength) + 1 + (IsConnect ? _authorityLength : _pathLength) + 11 + _fieldsLength + 2;
            if (_authorityStart >= 0)
            {
                length += 8 + _authorityLength;
            }
            if (_cookiesLength > 0)
            {
                length += 10 + _cookiesLength;
            }
            if (Chunked)
            {
                length += "transfer-encoding: chunked\r\n".Length;
            }
            if (IsExtendedConnect)
            {
                length += "connection: upgrade\r\nupgrade: \r\n".Length + _protocolLength;
                if (IsWebSocket)
                {
                    length += "sec-websocket-key: \r\n".Length + WebSocketKeyLength;
                }
            }
            return length;
        }
    }

    /// <summary>
    /// Writes the HTTP/1.1 request head (RFC 9113 section 8.3.1 to RFC 9112 section 3): request line, host from
    /// :authority, the fields, the joined cookie, and <c>transfer-encoding: chunked</c> when a body of unknown length follows.
    /// </summary>
    public void WriteTo(IBufferWriter<byte> output)
    {
        // RFC 8441 section 5: the extended CONNECT is the HTTP/1.1 upgrade's GET (RFC 6455 section 4.1).
        output.Write(IsExtendedConnect ? "GET"u8 : _pseudo.AsSpan(_methodStart, _methodLength));
        output.Write(" "u8);
        output.Write(IsConnect ? _pseudo.AsSpan(_authorityStart, _authorityLength) : _pseudo.AsSpan(_pathStart, _pathLength));
        output.Write(" HTTP/1.1\r\n"u8);
        if (_authorityStart >= 0)
        {
            output.Write("host: "u8);
            output.Write(_pseudo.AsSpan(_authorityStart, _authorityLength));
            output.Write("\r\n"u8);
        }
        output.Write(_fields.AsSpan(0, _fieldsLength));
        if (_cookiesLength > 0)
        {
            output.Write("cookie: "u8);
            output.Write(_cookies.AsSpan(0, _cookiesLength));
            output.Write("\r\n"u8);
        }
        if (Chunked)
        {
            output.Write("transfer-encoding: chunked\r\n"u8);
        }
        if (IsExtendedConnect)
        {
            output.Write("connection: upgrade\r\nupgrade: "u8);
            output.Write(_pseudo.AsSpan(_protocolStart, _protocolLength));
            output.Write("\r\n"u8);
            if (IsWebSocket)
            {
                output.Write("sec-websocket-key: "u8);
                output.Write(_webSocketKey);
                output.Write("\r\n"u8);
            }
        }
        output.Write("\r\n"u8);
    }
}
