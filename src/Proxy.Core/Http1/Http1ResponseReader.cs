using System.Buffers;
using Proxy.Http;

namespace Proxy.Http1;

/// <summary>Frames and parses an upstream HTTP/1.x response head. STUB.</summary>
internal static class Http1ResponseReader
{
    public static HeadStatus TryRead(in ReadOnlySequence<byte> buffer, ResponseHead head, int maxHeadBytes,
        out SequencePosition consumed, out RejectReason reason)
        => throw new NotImplementedException();
}
