using System.Buffers;
using Proxy.Http;

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
/// receive buffer. STUB: replaced by the codec implementation.
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
        => throw new NotImplementedException();
}
