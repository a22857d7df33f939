using System.Buffers;
using Proxy.Http;

namespace Proxy.Http1;

/// <summary>What the field section said about framing and the connection; folded into the head afterwards.</summary>
internal struct FieldFacts
{
    public int HostIndex;
    public long ContentLength;
    public bool HasTransferEncoding;
    public int ChunkedCount;
    public bool LastCodingChunked;
    public bool UnsupportedCoding;
    public bool ExpectContinue;
    public ConnectionOptions Connection;
    public bool HasUpgradeField;
    public bool HasAuthorization;
    /// <summary>An Upgrade field offers HTTP/2 (<c>h2c</c>, <c>h2</c>, <c>HTTP/2</c>), which is never passed on.</summary>
    public bool UpgradeOffersHttp2;
    /// <summary>A Connection token other than close/keep-alive/upgrade names a field to drop.</summary>
    public bool ConnectionNamesFields;

    public static FieldFacts Create() => new() { HostIndex = -1, ContentLength = -1 };

    /// <summary>
    /// Transfer-Encoding verdict (RFC 9112 sections 6.1 and 6.3). Any coding other than chunked is one we
    /// do not implement: 501 (RFC 9112 section 6.1), also for "gzip" alone, where section 6.3 would allow
    /// 400; either way the connection closes without reading a body, so nothing can be smuggled. "chunked"
    /// twice is malformed: 400.
    /// </summary>
    public readonly RejectReason TransferEncodingVerdict()
    {
        if (ChunkedCount > 1)
        {
            return RejectReason.InvalidTransferEncoding;
        }
        if (UnsupportedCoding)
        {
            return RejectReason.UnsupportedTransferCoding;
        }
        return LastCodingChunked ? RejectReason.None : RejectReason.InvalidTransferEncoding;
    }
}

/// <summary>Outcome of scanning the receive buffer for the end of a head.</summary>
internal enum HeadScan : byte
{
    Complete,
    Incomplete,
    BareLineFeed,
    FirstLineTooLong,
    SectionTooLarge,
}

/// <summary>
/// Field-section parsing shared by the request and response readers (RFC 9112 section 5, RFC 9110
/// section 5). Works on the head's own buffer once the whole head is there, so every field is recorded
/// as offsets and nothing is copied out.
/// </summary>
internal static class Http1Fields
{
    /// <summary>
    /// Parses field lines from <paramref name="start"/> up to and including the empty line that ends
    /// the head at <paramref name="length"/>.
    /// <code>
    /// field-line = field-name ":" OWS field-value OWS CRLF    (RFC 9112 section 5)
    /// </code>
    /// </summary>
    public static RejectReason Parse(byte[] buffer, int start, int length, ref HeaderField[] fields, ref int fieldCount,
        int maxFields, bool isRequest, ref FieldFacts facts)
    {
        int position = start;
        while (true)
        {
            ReadOnlySpan<byte> rest = buffer.AsSpan(position, length - position);
            int lf = rest.IndexOf((byte)'\n');
            if (lf < 0)
            {
                // Unreachable: the framing scan guarantees the head ends with CRLF CRLF.
                return RejectReason.InvalidHeaderName;
            }
            // RFC 9112 section 2.2 allows a recipient to accept a bare LF; we do not, because a peer
            // that splits on CRLF only would see a different message (request smuggling).
            if (lf == 0 || rest[lf - 1] != (byte)'\r')
            {
                return RejectReason.BareLineFeed;
            }
            ReadOnlySpan<byte> line = rest.Slice(0, lf - 1);
            if (line.IsEmpty)
            {
                return RejectReason.None;
            }
            int lineStart = position;
            position += lf + 1;

            // RFC 9112 section 5.2: obs-fold is refused (400) rather than unfolded.
            if (Http1Syntax.IsOws(line[0]))
            {
                return RejectReason.ObsoleteLineFolding;
            }
            int colon = line.IndexOf((byte)':');
            if (colon <= 0)
            {
                return colon < 0 && line.Contains((byte)'\r') ? RejectReason.BareCarriageReturn : RejectReason.InvalidHeaderName;
            }
            ReadOnlySpan<byte> name = line.Slice(0, colon);
            int bad = name.IndexOfAnyExcept(Http1Syntax.Token);
            if (bad >= 0)
            {
                // RFC 9112 section 5.1: whitespace between name and colon MUST be rejected with 400.
                return Http1Syntax.IsOws(name[^1]) ? RejectReason.WhitespaceBeforeColon
                    : name[bad] == (byte)'\r' ? RejectReason.BareCarriageReturn
                    : RejectReason.InvalidHeaderName;
            }
            ReadOnlySpan<byte> rawValue = line.Slice(colon + 1);
            bad = rawValue.IndexOfAny(Http1Syntax.InvalidFieldValue);
            if (bad >= 0)
            {
                return rawValue[bad] == (byte)'\r' ? RejectReason.BareCarriageReturn : RejectReason.InvalidHeaderValue;
            }
            if (fieldCount >= maxFields)
            {
                return RejectReason.TooManyHeaders;
            }

            int valueStart = lineStart + colon + 1;
            int valueLength = 0;
            int first = rawValue.IndexOfAnyExcept((byte)' ', (byte)'\t');
            if (first >= 0)
            {
                int last = rawValue.LastIndexOfAnyExcept((byte)' ', (byte)'\t');
                valueStart += first;
                valueLength = last - first + 1;
            }

            KnownHeader known = KnownHeaders.Resolve(name);
            if (fieldCount == fields.Length)
            {
                // Grows once per connection at most; the array is kept for later requests.
                Array.Resize(ref fields, fields.Length * 2);
            }
            int index = fieldCount++;
            ref HeaderField field = ref fields[index];
            field.NameStart = lineStart;
            field.NameLength = colon;
            field.ValueStart = valueStart;
            field.ValueLength = valueLength;
            field.Known = known;
            field.HopByHop = KnownHeaders.IsHopByHop(known);

            if (known != KnownHeader.None)
            {
                RejectReason reason = OnKnownField(known, buffer.AsSpan(valueStart, valueLength), index, isRequest, ref facts);
                if (reason != RejectReason.None)
                {
                    return reason;
                }
            }
        }
    }

    private static RejectReason OnKnownField(KnownHeader known, ReadOnlySpan<byte> value, int index, bool isRequest,
        ref FieldFacts facts)
    {
        switch (known)
        {
            case KnownHeader.Host when isRequest:
                // RFC 9112 section 3.2: more than one Host, or an invalid one, is a 400.
                if (facts.HostIndex >= 0)
                {
                    return RejectReason.MultipleHost;
                }
                facts.HostIndex = index;
                return Http1Syntax.IsValidHost(value, requirePort: false) ? RejectReason.None : RejectReason.InvalidHost;
            case KnownHeader.Authorization when isRequest:
                // One credential per request (RFC 9110 section 11.6.2, a singleton field). With two, a policy would
                // check one while the upstream may read the other; nginx refuses them too.
                if (facts.HasAuthorization)
                {
                    return RejectReason.MultipleAuthorization;
                }
                facts.HasAuthorization = true;
                return RejectReason.None;
            case KnownHeader.ContentLength:
                return ParseContentLength(value, ref facts.ContentLength);
            case KnownHeader.TransferEncoding:
                return ParseTransferEncoding(value, ref facts);
            case KnownHeader.Connection:
                return ParseConnection(value, ref facts);
            case KnownHeader.Upgrade:
                facts.HasUpgradeField = true;
                facts.UpgradeOffersHttp2 |= OffersHttp2(value);
                return RejectReason.None;
            case KnownHeader.Expect when isRequest:
                // RFC 9110 section 10.1.1: only 100-continue is defined; other expectations are ignored
                // (the field is hop-by-hop, so it is not forwarded either).
                int position = 0;
                while (Http1Syntax.NextListElement(value, ref position, out ReadOnlySpan<byte> element))
                {
                    if (System.Text.Ascii.EqualsIgnoreCase(element, "100-continue"u8))
                    {
                        facts.ExpectContinue = true;
                    }
                }
                return RejectReason.None;
            default:
                return RejectReason.None;
        }
    }

    /// <summary>
    /// Content-Length = 1*DIGIT (RFC 9110 section 8.6). A list of identical values ("5, 5"), or repeated
    /// identical fields, may be accepted as one; differing values are a 400 (RFC 9112 section 6.3 item 5).
    /// No sign, no empty element, no overflow.
    /// </summary>
    private static RejectReason ParseContentLength(ReadOnlySpan<byte> value, ref long contentLength)
    {
        int position = 0;
        while (Http1Syntax.NextListElement(value, ref position, out ReadOnlySpan<byte> element))
        {
            if (element.IsEmpty || element.IndexOfAnyExceptInRange((byte)'0', (byte)'9') >= 0)
            {
                return RejectReason.InvalidContentLength;
            }
            long parsed = 0;
            foreach (byte b in element)
            {
                int digit = b - '0';
                if (parsed > (long.MaxValue - digit) / 10)
                {
                    return RejectReason.InvalidContentLength;
                }
                parsed = parsed * 10 + digit;
            }
            if (contentLength >= 0 && contentLength != parsed)
            {
                return RejectReason.ConflictingContentLength;
            }
            contentLength = parsed;
        }
        return RejectReason.None;
    }

    /// <summary>
    /// Transfer-Encoding = #transfer-coding (RFC 9112 section 6.1); repeated fields form one list.
    /// "chunked" takes no parameters.
    /// </summary>
    private static RejectReason ParseTransferEncoding(ReadOnlySpan<byte> value, ref FieldFacts facts)
    {
        facts.HasTransferEncoding = true;
        int position = 0;
        while (Http1Syntax.NextListElement(value, ref position, out ReadOnlySpan<byte> element))
        {
            // RFC 9110 section 5.6.1 lets recipients skip empty elements, but a peer that reads
            // ", chunked" as an unknown coding would frame the body differently: refused.
            if (element.IsEmpty)
            {
                return RejectReason.InvalidTransferEncoding;
            }
            int semicolon = element.IndexOf((byte)';');
            ReadOnlySpan<byte> coding = semicolon < 0 ? element : Http1Syntax.TrimOws(element.Slice(0, semicolon));
            if (!Http1Syntax.IsToken(coding))
            {
                return RejectReason.InvalidTransferEncoding;
            }
            if (System.Text.Ascii.EqualsIgnoreCase(coding, "chunked"u8))
            {
                if (semicolon >= 0)
                {
                    return RejectReason.InvalidTransferEncoding;
                }
                facts.ChunkedCount++;
                facts.LastCodingChunked = true;
            }
            else
            {
                facts.UnsupportedCoding = true;
                facts.LastCodingChunked = false;
            }
        }
        return RejectReason.None;
    }

    /// <summary>
    /// <code>Upgrade = #protocol; protocol = protocol-name ["/" protocol-version]</code> (RFC 9110 section 7.8): true when
    /// one of them is HTTP/2, by its ALPN names or as HTTP/2. Case-insensitive, to catch every spelling an upstream
    /// might accept.
    /// </summary>
    internal static bool OffersHttp2(ReadOnlySpan<byte> value)
    {
        int position = 0;
        while (Http1Syntax.NextListElement(value, ref position, out ReadOnlySpan<byte> protocol))
        {
            int slash = protocol.IndexOf((byte)'/');
            ReadOnlySpan<byte> name = slash < 0 ? protocol : protocol[..slash];
            if (System.Text.Ascii.EqualsIgnoreCase(name, "h2c"u8) || System.Text.Ascii.EqualsIgnoreCase(name, "h2"u8)
                || (System.Text.Ascii.EqualsIgnoreCase(name, "http"u8) && slash >= 0 && protocol[(slash + 1)..].StartsWith("2"u8)))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Connection = #connection-option (RFC 9110 section 7.6.1); options are tokens, case-insensitive.</summary>
    private static RejectReason ParseConnection(ReadOnlySpan<byte> value, ref FieldFacts facts)
    {
        int position = 0;
        while (Http1Syntax.NextListElement(value, ref position, out ReadOnlySpan<byte> element))
        {
            if (element.IsEmpty)
            {
                continue;
            }
            if (!Http1Syntax.IsToken(element))
            {
                return RejectReason.InvalidHeaderValue;
            }
            if (System.Text.Ascii.EqualsIgnoreCase(element, "close"u8))
            {
                facts.Connection |= ConnectionOptions.Close;
            }
            else if (System.Text.Ascii.EqualsIgnoreCase(element, "keep-alive"u8))
            {
                facts.Connection |= ConnectionOptions.KeepAlive;
            }
            else if (System.Text.Ascii.EqualsIgnoreCase(element, "upgrade"u8))
            {
                facts.Connection |= ConnectionOptions.Upgrade;
            }
            else
            {
                facts.ConnectionNamesFields = true;
            }
        }
        return RejectReason.None;
    }

    /// <summary>
    /// Marks every field named by a Connection option as hop-by-hop (RFC 9110 section 7.6.1), wherever
    /// it appears relative to the Connection field. Host is never marked: "Connection: host" would
    /// otherwise strip the routing key (an old hop-by-hop abuse). Runs only when such an option exists.
    /// </summary>
    public static void MarkConnectionOptions(byte[] buffer, HeaderField[] fields, int fieldCount)
    {
        for (int i = 0; i < fieldCount; i++)
        {
            if (fields[i].Known != KnownHeader.Connection)
            {
                continue;
            }
            ReadOnlySpan<byte> value = buffer.AsSpan(fields[i].ValueStart, fields[i].ValueLength);
            int position = 0;
            while (Http1Syntax.NextListElement(value, ref position, out ReadOnlySpan<byte> option))
            {
                if (option.IsEmpty)
                {
                    continue;
                }
                for (int j = 0; j < fieldCount; j++)
                {
                    ref HeaderField candidate = ref fields[j];
                    if (!candidate.HopByHop && candidate.Known != KnownHeader.Host
                        && candidate.NameLength == option.Length
                        && System.Text.Ascii.EqualsIgnoreCase(buffer.AsSpan(candidate.NameStart, candidate.NameLength), option))
                    {
                        candidate.HopByHop = true;
                    }
                }
            }
        }
    }

    /// <summary>
    /// Finds the end of a head (the first empty line) in a possibly multi-segment buffer, line by line,
    /// so that limits and bare LFs are caught before the head is complete. <paramref name="headStart"/>
    /// is past the skipped leading empty lines (RFC 9112 section 2.2), <paramref name="headEnd"/> past
    /// the final LF. The first line (with leading empty lines) may hold <paramref name="maxFirstLine"/>
    /// bytes before its CRLF; the field lines after it <paramref name="maxSection"/> bytes with their
    /// CRLFs, the final empty line not counted.
    /// </summary>
    public static HeadScan Scan(in ReadOnlySequence<byte> buffer, bool skipLeadingEmptyLines, long maxFirstLine,
        long maxSection, out long headStart, out long headEnd)
    {
        headStart = 0;
        headEnd = 0;
        long offset = 0;
        long lineStart = 0;
        long sectionStart = -1;
        byte previous = 0;
        foreach (ReadOnlyMemory<byte> memory in buffer)
        {
            ReadOnlySpan<byte> span = memory.Span;
            int i = 0;
            while (i < span.Length)
            {
                int lf = span.Slice(i).IndexOf((byte)'\n');
                if (lf < 0)
                {
                    break;
                }
                lf += i;
                byte before = lf > 0 ? span[lf - 1] : previous;
                long lfAt = offset + lf;
                if (before != (byte)'\r' || lfAt == lineStart)
                {
                    return HeadScan.BareLineFeed;
                }
                long contentLength = lfAt - 1 - lineStart;
                if (sectionStart < 0)
                {
                    if (skipLeadingEmptyLines && contentLength == 0)
                    {
                        headStart = lfAt + 1;
                        if (headStart > maxFirstLine)
                        {
                            return HeadScan.FirstLineTooLong;
                        }
                    }
                    else if (lfAt - 1 > maxFirstLine)
                    {
                        return HeadScan.FirstLineTooLong;
                    }
                    else
                    {
                        sectionStart = lfAt + 1;
                    }
                }
                else if (contentLength == 0)
                {
                    if (lineStart - sectionStart > maxSection)
                    {
                        return HeadScan.SectionTooLarge;
                    }
                    headEnd = lfAt + 1;
                    return HeadScan.Complete;
                }
                else if (lfAt + 1 - sectionStart > maxSection)
                {
                    return HeadScan.SectionTooLarge;
                }
                lineStart = lfAt + 1;
                i = lf + 1;
            }
            if (span.Length > 0)
            {
                previous = span[^1];
            }
            offset += span.Length;
        }

        if (sectionStart < 0)
        {
            // No CRLF within maxFirstLine + 2 bytes: the first line cannot fit any more.
            return offset >= maxFirstLine + 2 ? HeadScan.FirstLineTooLong : HeadScan.Incomplete;
        }
        // A pending line of two or more bytes is a field line (the empty line is at most "\r"), and
        // with its CRLF it will take at least one byte more than it has now.
        long pending = offset - lineStart;
        return pending >= 2 && offset + 1 - sectionStart > maxSection ? HeadScan.SectionTooLarge : HeadScan.Incomplete;
    }
}
