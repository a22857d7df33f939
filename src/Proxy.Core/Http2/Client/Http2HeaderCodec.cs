using System.Buffers.Text;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Http2.HPack;

namespace Proxy.Http2.Client;

/// <summary>
/// Collects a decoded response (or trailer) field block into a <see cref="ResponseHead"/>, laid out like an
/// HTTP/1.1 head (offsets into its buffer), so the forwarder writes it to the client with the same code as an
/// HTTP/1.1 response. Pseudo-header rules of RFC 9113 section 8.3: only <c>:status</c>, once, before regular fields,
/// never in trailers; regular fields as section 8.2.1 says (<see cref="Http2FieldSyntax"/>). Hop-by-hop and framing
/// fields are flagged so they are not relayed.
/// </summary>
internal struct ResponseFieldSink : IHeaderSink
{
    private readonly ResponseHead _head;
    private readonly bool _trailers;
    private bool _regularSeen;

    public ResponseFieldSink(ResponseHead head, bool trailers)
    {
        _head = head;
        _trailers = trailers;
    }

    /// <summary>A pseudo-header out of place, a bad or missing :status: the stream is malformed (RFC 9113 section 8.1.1).</summary>
    public bool Malformed { get; private set; }
    public bool StatusSeen { get; private set; }

    public void OnStaticIndexedHeader(int index)
        => OnHeader(HPackStaticTable.Name(index), HPackStaticTable.Value(index), false);

    public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed)
        => OnHeader(HPackStaticTable.Name(index), value, neverIndexed);

    public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed)
    {
        if (name.IsEmpty)
        {
            Malformed = true;
            return;
        }
        if (name[0] == (byte)':')
        {
            if (_trailers || _regularSeen || StatusSeen || !name.SequenceEqual(":status"u8)
                || value.Length != 3 || !Utf8Parser.TryParse(value, out int status, out int used) || used != 3 || status < 100)
            {
                Malformed = true;
                return;
            }
            _head.StatusCode = status;
            StatusSeen = true;
            return;
        }
        _regularSeen = true;
        if (!Http2FieldSyntax.IsValidName(name) || !Http2FieldSyntax.IsValidValue(value))
        {
            // Section 8.2.1: malformed. Relayed to an HTTP/1.1 client, a CR LF in a value would split the response.
            Malformed = true;
            return;
        }
        KnownHeader known = KnownHeaders.Resolve(name);
        int start = _head.Length;
        int needed = start + name.Length + value.Length;
        if (_head.Buffer.Length < needed)
        {
            Array.Resize(ref _head.Buffer, Math.Max(needed, _head.Buffer.Length * 2));
        }
        name.CopyTo(_head.Buffer.AsSpan(start));
        value.CopyTo(_head.Buffer.AsSpan(start + name.Length));
        _head.Length = needed;
        ref HeaderField field = ref _head.AddField();
        field.NameStart = start;
        field.NameLength = name.Length;
        field.ValueStart = start + name.Length;
        field.ValueLength = value.Length;
        field.Known = known;
        field.HopByHop = KnownHeaders.IsHopByHop(known);
        if (known == KnownHeader.ContentLength && !_trailers)
        {
            _head.ContentLength = Utf8Parser.TryParse(value, out long length, out int digits) && digits == value.Length && length >= 0 ? length : -1;
        }
    }
}

/// <summary>Drops a field block that belongs to no live stream; decoding it keeps the HPACK table in step (RFC 7541 section 2.2).</summary>
internal struct DiscardFieldSink : IHeaderSink
{
    public void OnStaticIndexedHeader(int index)
    {
    }

    public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed)
    {
    }

    public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed)
    {
    }
}

/// <summary>
/// Turns the proxy's upstream request (the field lines <c>UpstreamRequestWriter.WriteFields</c>
/// produced, one source of truth for what is added and removed for both protocols) into an HTTP/2 field block:
/// pseudo-headers first (RFC 9113 section 8.3.1), lowercase names (8.2.1), no connection-specific fields (8.2.2).
/// </summary>
internal static class Http2RequestEncoder
{
    /// <summary>
    /// Encodes the block into <paramref name="destination"/>. A false return leaves the dynamic table ahead of the
    /// peer's, so the connection must then fail: callers size <paramref name="destination"/> with <see cref="MaxBlockLength"/>.
    /// A <paramref name="protocol"/> makes the request an extended CONNECT (RFC 8441 section 4): <c>:method CONNECT</c>
    /// and <c>:protocol</c>, the HTTP/1.1 upgrade's Sec-WebSocket-Key left out (RFC 8441 section 5 has none).
    /// <paramref name="path"/> is :path when the route rewrites it; empty: the client's target.
    /// </summary>
    public static bool TryEncode(HPackEncoder encoder, RequestHead head, ReadOnlySpan<byte> scheme, ReadOnlySpan<byte> authority,
        ReadOnlySpan<byte> fieldLines, bool sendContentLength, bool teTrailers, Span<byte> destination, out int written,
        ReadOnlySpan<byte> protocol = default, ReadOnlySpan<byte> path = default)
    {
        written = 0;
        if (!encoder.TryBeginHeaderBlock(destination, out int used))
        {
            return false;
        }
        int total = used;
        // :path for OPTIONS * is "*" (section 8.3.1); the request target is relayed as it came, in origin form.
        bool extendedConnect = !protocol.IsEmpty;
        if (!Encode(encoder, ":method"u8, extendedConnect ? "CONNECT"u8 : head.MethodBytes, destination, ref total)
            || (extendedConnect && !Encode(encoder, ":protocol"u8, protocol, destination, ref total))
            || !Encode(encoder, ":scheme"u8, scheme, destination, ref total)
            || !Encode(encoder, ":authority"u8, authority, destination, ref total)
            || !Encode(encoder, ":path"u8, path.IsEmpty ? head.Target : path, destination, ref total))
        {
            return false;
        }
        Span<byte> lower = stackalloc byte[256];
        while (!fieldLines.IsEmpty)
        {
            int end = fieldLines.IndexOf((byte)'\n');
            ReadOnlySpan<byte> line = end < 0 ? fieldLines : fieldLines[..end];
            fieldLines = end < 0 ? default : fieldLines[(end + 1)..];
            if (!line.IsEmpty && line[^1] == (byte)'\r')
            {
                line = line[..^1];
            }
            int colon = line.IndexOf((byte)':');
            if (colon <= 0)
            {
                continue;
            }
            ReadOnlySpan<byte> name = line[..colon];
            ReadOnlySpan<byte> value = line[(colon + 1)..].TrimStart((byte)' ');
            if (IsConnectionSpecific(name) || (extendedConnect && name.EqualsIgnoreCaseAscii("sec-websocket-key"u8)))
            {
                continue;
            }
            Span<byte> nameLower = name.Length <= lower.Length ? lower[..name.Length] : new byte[name.Length];
            System.Text.Ascii.ToLower(name, nameLower, out _);
            if (!Encode(encoder, nameLower, value, destination, ref total))
            {
                return false;
            }
        }
        if (teTrailers && !Encode(encoder, "te"u8, "trailers"u8, destination, ref total))
        {
            return false;
        }
        if (sendContentLength)
        {
            Span<byte> digits = stackalloc byte[20];
            Utf8Formatter.TryFormat(head.ContentLength, digits, out int length);
            if (!Encode(encoder, "content-length"u8, digits[..length], destination, ref total))
            {
                return false;
            }
        }
        written = total;
        return true;
    }

    /// <summary>Encodes a trailer section (HTTP/1.1 field lines, see <see cref="TrailerFields"/>) as a field block: lowercase names, no pseudo-fields.</summary>
    public static bool TryEncodeTrailers(HPackEncoder encoder, ReadOnlySpan<byte> section, Span<byte> destination, out int written)
    {
        written = 0;
        if (!encoder.TryBeginHeaderBlock(destination, out int total))
        {
            return false;
        }
        Span<byte> lower = stackalloc byte[256];
        var fields = new TrailerFields(section);
        while (fields.MoveNext(out ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value, out _))
        {
            Span<byte> nameLower = name.Length <= lower.Length ? lower[..name.Length] : new byte[name.Length];
            System.Text.Ascii.ToLower(name, nameLower, out _);
            if (!Encode(encoder, nameLower, value, destination, ref total))
            {
                return false;
            }
        }
        written = total;
        return true;
    }

    /// <summary>
    /// An upper bound of the encoded block: a field costs at most its name and value plus a few octets of prefixes
    /// (RFC 7541 section 5.1), while each field line already spends 4 (": ", CRLF) on the same bytes.
    /// </summary>
    public static int MaxBlockLength(RequestHead head, int authorityLength, int fieldLinesLength)
        => 2 * fieldLinesLength + head.MethodBytes.Length + head.Target.Length + authorityLength + 512;

    private static bool Encode(HPackEncoder encoder, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, Span<byte> destination, ref int total)
    {
        if (!encoder.TryEncode(name, value, HPackIndexing.Auto, destination[total..], out int written))
        {
            return false;
        }
        total += written;
        return true;
    }

    /// <summary>Host becomes :authority; the rest are connection-specific (RFC 9113 section 8.2.2) or framing we do ourselves.</summary>
    private static bool IsConnectionSpecific(ReadOnlySpan<byte> name) => KnownHeaders.Resolve(name) switch
    {
        KnownHeader.Host or KnownHeader.Connection or KnownHeader.KeepAlive or KnownHeader.ProxyConnection
            or KnownHeader.TransferEncoding or KnownHeader.Upgrade or KnownHeader.TE or KnownHeader.ContentLength => true,
        _ => false,
    };
}
