using System.Buffers;
using Proxy.Http;

namespace Proxy.Http1;

internal enum ChunkStatus : byte
{
    /// <summary><c>data</c> holds payload bytes; advance to <c>consumed</c> and call again.</summary>
    Data,
    /// <summary>Need more input; advance to <c>consumed</c> (framing bytes may have been eaten) and read again.</summary>
    NeedMore,
    /// <summary>Last chunk and trailer section read; <c>consumed</c> is just past the body.</summary>
    Done,
    /// <summary>Malformed; <c>reason</c> says why.</summary>
    Error,
}

/// <summary>Resumable chunked transfer-coding decoder (RFC 9112 section 7.1). STUB.</summary>
internal struct ChunkedDecoder
{
    public void Reset() => throw new NotImplementedException();

    public ChunkStatus Read(in ReadOnlySequence<byte> buffer, out ReadOnlySequence<byte> data,
        out SequencePosition consumed, out RejectReason reason)
        => throw new NotImplementedException();
}
