using System.Buffers;
using Proxy.Http;

namespace Proxy.Http1;

/// <summary>
/// Frames and parses an upstream HTTP/1.x response head (RFC 9112 sections 4-6). Same field rules as
/// requests: an upstream that frames ambiguously is refused (502) rather than guessed at, because a
/// guess could desynchronise a pooled connection.
/// </summary>
internal static class Http1ResponseReader
{
    public static HeadStatus TryRead(in ReadOnlySequence<byte> buffer, ResponseHead head, int maxHeadBytes,
        out SequencePosition consumed, out RejectReason reason)
    {
        consumed = buffer.Start;
        reason = RejectReason.None;
        ReadOnlySequence<byte> window = buffer.Length > maxHeadBytes ? buffer.Slice(0, maxHeadBytes) : buffer;

        long headEnd;
        ReadOnlySpan<byte> first = window.FirstSpan;
        int end = first.IndexOf("\r\n\r\n"u8);
        if (end >= 0)
        {
            headEnd = end + 4;
            first.Slice(0, end + 4).CopyTo(head.PrepareBuffer(end + 4));
        }
        else
        {
            HeadScan scan = Http1Fields.Scan(window, skipLeadingEmptyLines: false, maxHeadBytes, maxHeadBytes,
                out _, out headEnd);
            if (scan == HeadScan.Incomplete && buffer.Length < maxHeadBytes)
            {
                return HeadStatus.Incomplete;
            }
            if (scan != HeadScan.Complete)
            {
                reason = RejectReason.InvalidResponse;
                return HeadStatus.Rejected;
            }
            window.Slice(0, headEnd).CopyTo(head.PrepareBuffer((int)headEnd));
        }

        reason = Parse(head);
        if (reason != RejectReason.None)
        {
            return HeadStatus.Rejected;
        }
        consumed = buffer.GetPosition(headEnd);
        return HeadStatus.Complete;
    }

    private static RejectReason Parse(ResponseHead head)
    {
        int length = head.Length;
        byte[] buffer = head.Buffer;
        head.Reset();
        head.Length = length;

        ReadOnlySpan<byte> raw = buffer.AsSpan(0, length);
        int lf = raw.IndexOf((byte)'\n');
        if (lf <= 0 || raw[lf - 1] != (byte)'\r')
        {
            return RejectReason.InvalidStatusLine;
        }
        if (!ParseStatusLine(head, raw.Slice(0, lf - 1)))
        {
            return RejectReason.InvalidStatusLine;
        }

        FieldFacts facts = FieldFacts.Create();
        RejectReason reason = Http1Fields.Parse(buffer, lf + 1, length, ref head.Fields, ref head.FieldCount, int.MaxValue,
            isRequest: false, ref facts);
        if (reason != RejectReason.None)
        {
            return RejectReason.InvalidResponse;
        }
        if (facts.HasTransferEncoding)
        {
            // CL with TE, TE in HTTP/1.0 (faulty framing, RFC 9112 section 6.1), a final coding other than
            // chunked (read-until-close, RFC 9112 section 6.3) or codings we cannot decode: all refused.
            if (facts.ContentLength >= 0 || head.Version != HttpVersion.Http11
                || facts.TransferEncodingVerdict() != RejectReason.None)
            {
                return RejectReason.InvalidResponse;
            }
            head.Chunked = true;
        }
        head.ContentLength = facts.ContentLength;
        head.Connection = facts.Connection;
        head.HasUpgradeField = facts.HasUpgradeField;
        if (facts.ConnectionNamesFields)
        {
            Http1Fields.MarkConnectionOptions(buffer, head.Fields, head.FieldCount);
        }
        return RejectReason.None;
    }

    /// <summary>
    /// <code>
    /// status-line = HTTP-version SP status-code SP [ reason-phrase ]   (RFC 9112 section 4)
    /// reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
    /// </code>
    /// "HTTP/1.1 200" without the second SP is tolerated (section 4 asks recipients to accept a missing
    /// reason). A minor version above 1 is read as 1.1 (RFC 9110 section 6.2).
    /// </summary>
    private static bool ParseStatusLine(ResponseHead head, ReadOnlySpan<byte> line)
    {
        if (line.Length < 12 || !line.StartsWith("HTTP/1."u8) || !char.IsAsciiDigit((char)line[7]) || line[8] != (byte)' ')
        {
            return false;
        }
        byte d0 = line[9], d1 = line[10], d2 = line[11];
        if (d0 < (byte)'1' || d0 > (byte)'9' || !char.IsAsciiDigit((char)d1) || !char.IsAsciiDigit((char)d2))
        {
            return false;
        }
        head.Version = line[7] == (byte)'0' ? HttpVersion.Http10 : HttpVersion.Http11;
        head.StatusCode = (d0 - '0') * 100 + (d1 - '0') * 10 + (d2 - '0');
        head.ReasonStart = 12;
        if (line.Length == 12)
        {
            return true;
        }
        if (line[12] != (byte)' ')
        {
            return false;
        }
        ReadOnlySpan<byte> reasonPhrase = line.Slice(13);
        if (reasonPhrase.IndexOfAny(Http1Syntax.InvalidFieldValue) >= 0)
        {
            return false;
        }
        head.ReasonStart = 13;
        head.ReasonLength = reasonPhrase.Length;
        return true;
    }
}
