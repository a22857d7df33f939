using System.Buffers;
using System.Runtime.CompilerServices;
using Proxy.Http;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Http1;

internal enum HeadStatus : byte
{
    /// <summary>A whole head was read and parsed; <c>consumed</c> is just past its empty line.</summary>
    Complete,
    /// <summary>Not enough bytes yet; nothing consumed. Call again with more.</summary>
    Incomplete,
    /// <summary>Malformed or over a limit; <c>reason</c> says why. The connection answers and closes.</summary>
    Rejected,
}

/// <summary>
/// Frames and parses an HTTP/1.1 request head (RFC 9112 sections 2-3, 5, 6) from the connection's
/// receive buffer. Strict by design: anything two HTTP implementations could read differently
/// (bare LF, bare CR, obs-fold, CL with TE, duplicate differing CL, dot segments) is refused.
/// See docs/http1-parsing.md for the table of cases.
/// </summary>
internal static class Http1RequestReader
{
    /// <summary>
    /// Looks for a complete request head at the start of <paramref name="buffer"/>. On Complete the
    /// head bytes are copied into <paramref name="head"/> and parsed. On Incomplete the buffer is
    /// checked against the limits, so an over-long request line (414) or header block (431) is
    /// rejected without waiting for the end.
    /// </summary>
    public static HeadStatus TryRead(in ReadOnlySequence<byte> buffer, RequestHead head, HttpLimits limits,
        out SequencePosition consumed, out RejectReason reason)
    {
        consumed = buffer.Start;
        reason = RejectReason.None;

        // Everything a head may hold; scanning stops here, so a flood of bytes costs at most this much.
        long maxHead = (long)limits.MaxRequestLine + 2 + limits.MaxHeaderBytes + 2;
        long headStart;
        long headEnd;

        // Fast path: the whole head in the first segment, found with one vectorised search.
        ReadOnlySpan<byte> first = buffer.FirstSpan;
        int skip = 0;
        while (skip + 1 < first.Length && skip < maxHead && first[skip] == (byte)'\r' && first[skip + 1] == (byte)'\n')
        {
            skip += 2;
        }
        int end = skip < first.Length
            ? first.Slice(skip, (int)Math.Min(first.Length - skip, maxHead)).IndexOf("\r\n\r\n"u8)
            : -1;
        if (end >= 0)
        {
            headStart = skip;
            headEnd = skip + end + 4;
            first.Slice(skip, end + 4).CopyTo(head.PrepareBuffer(end + 4));
        }
        else
        {
            ReadOnlySequence<byte> window = buffer.Length > maxHead ? buffer.Slice(0, maxHead) : buffer;
            HeadScan scan = Http1Fields.Scan(window, skipLeadingEmptyLines: true, limits.MaxRequestLine,
                limits.MaxHeaderBytes, out headStart, out headEnd);
            switch (scan)
            {
                case HeadScan.Incomplete:
                    return HeadStatus.Incomplete;
                case HeadScan.BareLineFeed:
                    return Reject(head, RejectReason.BareLineFeed, out reason);
                case HeadScan.FirstLineTooLong:
                    return Reject(head, RejectReason.RequestLineTooLong, out reason);
                case HeadScan.SectionTooLarge:
                    return Reject(head, TooManyFieldLines(window, limits.MaxHeaders) ? RejectReason.TooManyHeaders : RejectReason.HeadersTooLarge, out reason);
            }
            int length = (int)(headEnd - headStart);
            window.Slice(headStart, length).CopyTo(head.PrepareBuffer(length));
        }

        reason = Parse(head, (int)headStart, limits);
        if (reason != RejectReason.None)
        {
            return HeadStatus.Rejected;
        }
        consumed = buffer.GetPosition(headEnd);
        return HeadStatus.Complete;
    }

    /// <summary>
    /// A head over max_header_bytes that already holds more than max_headers field lines within that size (a flood of
    /// tiny fields) hit the count limit first: it is reported as too_many_headers, not headers_too_large (both 431).
    /// Only on the reject path.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static bool TooManyFieldLines(in ReadOnlySequence<byte> window, int maxHeaders)
    {
        long lineFeeds = 0;
        foreach (ReadOnlyMemory<byte> segment in window)
        {
            lineFeeds += segment.Span.Count((byte)'\n');
        }
        return lineFeeds - 1 > maxHeaders; // the request line's LF is not a field's
    }

    /// <summary>
    /// Refused before the head was copied: <paramref name="head"/> is cleared, so the answer and its access-log line
    /// show no method, target or request id of the connection's previous request.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static HeadStatus Reject(RequestHead head, RejectReason why, out RejectReason reason)
    {
        head.Reset();
        reason = why;
        return HeadStatus.Rejected;
    }

    /// <summary>Parses the head already copied into <paramref name="head"/> (it ends with CRLF CRLF).</summary>
    private static RejectReason Parse(RequestHead head, int leadingBytes, HttpLimits limits)
    {
        int length = head.Length;
        byte[] buffer = head.Buffer;
        head.Reset();
        head.Length = length;

        ReadOnlySpan<byte> raw = buffer.AsSpan(0, length);
        int lf = raw.IndexOf((byte)'\n');
        if (lf <= 0 || raw[lf - 1] != (byte)'\r')
        {
            return RejectReason.BareLineFeed;
        }
        int lineLength = lf - 1;
        if (leadingBytes + lineLength > limits.MaxRequestLine)
        {
            return RejectReason.RequestLineTooLong;
        }
        int fieldsStart = lf + 1;
        // Field lines with their CRLFs; the final empty line is not counted.
        if (length - 2 - fieldsStart > limits.MaxHeaderBytes)
        {
            return RejectReason.HeadersTooLarge;
        }

        RejectReason reason = ParseRequestLine(head, raw.Slice(0, lineLength), out int authorityStart, out int authorityLength,
            out bool https);
        if (reason != RejectReason.None)
        {
            return reason;
        }

        FieldFacts facts = FieldFacts.Create();
        reason = Http1Fields.Parse(buffer, fieldsStart, length, ref head.Fields, ref head.FieldCount, limits.MaxHeaders,
            isRequest: true, ref facts);
        if (reason != RejectReason.None)
        {
            return reason;
        }

        // RFC 9112 section 3.2: an HTTP/1.1 request without Host is a 400.
        head.HostIndex = facts.HostIndex;
        if (facts.HostIndex < 0 && head.Version == HttpVersion.Http11)
        {
            return RejectReason.MissingHost;
        }
        // RFC 9112 section 3.2.2 says to ignore Host for absolute-form; we require it to agree, so
        // whatever routes on Host and whatever follows the URI cannot pick different origins.
        if (authorityLength > 0
            && (facts.HostIndex < 0 || !SameAuthority(head.Host, raw.Slice(authorityStart, authorityLength), https)))
        {
            return RejectReason.InvalidHost;
        }

        if (facts.HasTransferEncoding)
        {
            // RFC 9112 section 6.1: CL with TE is a smuggling vector; we refuse instead of preferring TE.
            if (facts.ContentLength >= 0)
            {
                return RejectReason.ContentLengthWithTransferEncoding;
            }
            // RFC 9112 section 6.1: TE in HTTP/1.0 means faulty framing.
            if (head.Version != HttpVersion.Http11)
            {
                return RejectReason.InvalidTransferEncoding;
            }
            reason = facts.TransferEncodingVerdict();
            if (reason != RejectReason.None)
            {
                return reason;
            }
            head.Chunked = true;
        }
        head.ContentLength = facts.ContentLength;
        // RFC 9110 section 10.1.1: a 100-continue expectation in HTTP/1.0 MUST be ignored.
        head.ExpectContinue = facts.ExpectContinue && head.Version == HttpVersion.Http11;
        head.Connection = facts.Connection;
        head.HasUpgradeField = facts.HasUpgradeField;
        // RFC 9110 section 7.8: Upgrade in an HTTP/1.0 request MUST be ignored. An upgrade to HTTP/2 (h2c, deprecated by
        // RFC 9113 section 3.1) is never passed on either: after the upstream's 101 the connection would be a blind
        // tunnel, and every request the client sent through it would skip routing and policies ("h2c smuggling"; Envoy
        // strips it too). Either way the request goes on as an ordinary one, without Upgrade, and a 101 is then a 502.
        if (head.Version != HttpVersion.Http11 || facts.UpgradeOffersHttp2)
        {
            head.Connection &= ~ConnectionOptions.Upgrade;
        }
        if (facts.ConnectionNamesFields)
        {
            Http1Fields.MarkConnectionOptions(buffer, head.Fields, head.FieldCount);
        }
        return RejectReason.None;
    }

    /// <summary>
    /// <code>
    /// request-line = method SP request-target SP HTTP-version     (RFC 9112 section 3)
    /// HTTP-version = "HTTP/" DIGIT "." DIGIT                        (RFC 9112 section 2.3, case-sensitive)
    /// </code>
    /// Exactly one SP between the parts: the lenient "any whitespace" reading of section 3 is refused.
    /// </summary>
    private static RejectReason ParseRequestLine(RequestHead head, ReadOnlySpan<byte> line, out int authorityStart,
        out int authorityLength, out bool https)
    {
        authorityStart = 0;
        authorityLength = 0;
        https = false;

        int sp1 = line.IndexOf((byte)' ');
        if (sp1 <= 0)
        {
            return LineError(line);
        }
        ReadOnlySpan<byte> method = line.Slice(0, sp1);
        int bad = method.IndexOfAnyExcept(Http1Syntax.Token);
        if (bad >= 0)
        {
            return method[bad] == (byte)'\r' ? RejectReason.BareCarriageReturn : RejectReason.InvalidMethod;
        }
        ReadOnlySpan<byte> rest = line.Slice(sp1 + 1);
        int sp2 = rest.IndexOf((byte)' ');
        if (sp2 <= 0)
        {
            return LineError(line);
        }
        ReadOnlySpan<byte> target = rest.Slice(0, sp2);
        ReadOnlySpan<byte> version = rest.Slice(sp2 + 1);

        if (version.Length != 8 || !version.StartsWith("HTTP/"u8) || !char.IsAsciiDigit((char)version[5])
            || version[6] != (byte)'.' || !char.IsAsciiDigit((char)version[7]))
        {
            return LineError(line);
        }
        if (version[5] != (byte)'1' || version[7] > (byte)'1')
        {
            return RejectReason.UnsupportedVersion;
        }
        head.Version = version[7] == (byte)'1' ? HttpVersion.Http11 : HttpVersion.Http10;

        bad = target.IndexOfAnyExcept(Http1Syntax.TargetChar);
        if (bad >= 0)
        {
            return target[bad] == (byte)'\r' ? RejectReason.BareCarriageReturn : RejectReason.InvalidRequestTarget;
        }

        head.MethodStart = 0;
        head.MethodLength = sp1;
        head.Method = ResolveMethod(method);

        // RFC 9112 section 3.2: the four request-target forms.
        int targetStart = sp1 + 1;
        if (head.Method == HttpMethod.Connect)
        {
            // authority-form only, with a port (RFC 9110 section 9.3.6).
            if (!Http1Syntax.IsValidHost(target, requirePort: true))
            {
                return RejectReason.InvalidRequestTarget;
            }
            SetTarget(head, targetStart, target.Length, target.Length);
            return RejectReason.None;
        }
        if (target[0] == (byte)'*')
        {
            if (target.Length != 1 || head.Method != HttpMethod.Options)
            {
                return RejectReason.InvalidRequestTarget;
            }
            SetTarget(head, targetStart, 1, 1);
            return RejectReason.None;
        }
        if (target[0] != (byte)'/')
        {
            // absolute-form: "http" / "https" "://" authority path-abempty [ "?" query ].
            int schemeLength = StartsWithIgnoreCase(target, "http://"u8) ? 7 : StartsWithIgnoreCase(target, "https://"u8) ? 8 : 0;
            if (schemeLength == 0)
            {
                return RejectReason.InvalidRequestTarget;
            }
            ReadOnlySpan<byte> afterScheme = target.Slice(schemeLength);
            int pathAt = afterScheme.IndexOfAny((byte)'/', (byte)'?');
            // No path ("http://a" or "http://a?q") is refused: origin-form needs at least "/".
            if (pathAt <= 0 || afterScheme[pathAt] != (byte)'/')
            {
                return RejectReason.InvalidRequestTarget;
            }
            ReadOnlySpan<byte> authority = afterScheme.Slice(0, pathAt);
            // userinfo ('@') is deprecated for http(s) URIs (RFC 9110 section 4.2.4) and a classic spoofing tool.
            if (!Http1Syntax.IsValidHost(authority, requirePort: false))
            {
                return RejectReason.InvalidRequestTarget;
            }
            authorityStart = targetStart + schemeLength;
            authorityLength = authority.Length;
            https = schemeLength == 8;
            targetStart += schemeLength + pathAt;
            target = afterScheme.Slice(pathAt);
        }

        int query = target.IndexOf((byte)'?');
        int pathLength = query < 0 ? target.Length : query;
        if (Http1Syntax.HasDotSegment(target.Slice(0, pathLength)))
        {
            return RejectReason.InvalidRequestTarget;
        }
        SetTarget(head, targetStart, target.Length, pathLength);
        return target.Slice(0, pathLength).Contains((byte)'%') ? NormalizePercentEncoding(head) : RejectReason.None;
    }

    /// <summary>
    /// RFC 3986 section 6.2.2.2: a percent-encoded unreserved character ("%61" for 'a') is the character itself. The
    /// path is decoded in place before routing sees it, and forwarded so: a route for "/admin" must match
    /// "/%61dmin", which the upstream will read as "/admin" (nginx and Envoy's normalize_path decode them too).
    /// Other escapes ("%2F", "%20") stay escaped, their hex digits upper-cased (section 6.2.2.1: "%c3%a9" is "%C3%A9",
    /// and a route for one must not be walked around by spelling the other). A '%' not followed by two hex digits is
    /// not a URI (section 2.1): 400.
    /// </summary>
    private static RejectReason NormalizePercentEncoding(RequestHead head)
    {
        Span<byte> target = head.Buffer.AsSpan(head.TargetStart, head.TargetLength);
        int pathLength = Http1Syntax.DecodeUnreserved(target.Slice(0, head.PathLength));
        if (pathLength < 0)
        {
            return RejectReason.InvalidRequestTarget;
        }
        if (pathLength < head.PathLength)
        {
            target.Slice(head.PathLength).CopyTo(target.Slice(pathLength));
            head.TargetLength -= head.PathLength - pathLength;
            head.PathLength = pathLength;
        }
        return RejectReason.None;
    }

    /// <summary>
    /// The Host field and an absolute-form URI's authority name the same origin: equal ASCII case-insensitively once
    /// the scheme's default port is dropped from either (RFC 9110 sections 4.2.1 and 4.2.2, and RFC 3986 section
    /// 6.2.3: "http://a:80/x" is "http://a/x"), so "GET http://a:80/x" with "Host: a" is one origin, not a conflict.
    /// </summary>
    private static bool SameAuthority(ReadOnlySpan<byte> host, ReadOnlySpan<byte> authority, bool https)
    {
        ReadOnlySpan<byte> defaultPort = https ? ":443"u8 : ":80"u8;
        if (host.EndsWith(defaultPort))
        {
            host = host.Slice(0, host.Length - defaultPort.Length);
        }
        if (authority.EndsWith(defaultPort))
        {
            authority = authority.Slice(0, authority.Length - defaultPort.Length);
        }
        return System.Text.Ascii.EqualsIgnoreCase(host, authority);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static RejectReason LineError(ReadOnlySpan<byte> line)
        => line.Contains((byte)'\r') ? RejectReason.BareCarriageReturn : RejectReason.InvalidRequestLine;

    private static void SetTarget(RequestHead head, int start, int length, int pathLength)
    {
        head.TargetStart = start;
        head.TargetLength = length;
        head.PathLength = pathLength;
    }

    private static bool StartsWithIgnoreCase(ReadOnlySpan<byte> value, ReadOnlySpan<byte> lowerCasePrefix)
        => value.Length >= lowerCasePrefix.Length && System.Text.Ascii.EqualsIgnoreCase(value.Slice(0, lowerCasePrefix.Length), lowerCasePrefix);

    /// <summary>Methods are case-sensitive (RFC 9110 section 9.1): "get" is a valid custom method, not GET.</summary>
    internal static HttpMethod ResolveMethod(ReadOnlySpan<byte> method) => method.Length switch
    {
        3 when method.SequenceEqual("GET"u8) => HttpMethod.Get,
        3 when method.SequenceEqual("PUT"u8) => HttpMethod.Put,
        4 when method.SequenceEqual("POST"u8) => HttpMethod.Post,
        4 when method.SequenceEqual("HEAD"u8) => HttpMethod.Head,
        5 when method.SequenceEqual("PATCH"u8) => HttpMethod.Patch,
        5 when method.SequenceEqual("TRACE"u8) => HttpMethod.Trace,
        6 when method.SequenceEqual("DELETE"u8) => HttpMethod.Delete,
        7 when method.SequenceEqual("OPTIONS"u8) => HttpMethod.Options,
        7 when method.SequenceEqual("CONNECT"u8) => HttpMethod.Connect,
        _ => HttpMethod.Custom,
    };
}
