using System.Buffers;
using System.IO.Pipelines;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Transport;

namespace Proxy.Forwarding;

/// <summary>
/// A bounded copy of one request body, kept while the body streams to the first try so that a retry can send it
/// again (Envoy's per_request_buffer_limit_bytes for retries). The copy lives in pooled blocks; past the limit it is
/// dropped at once and the request is no longer replayable (<see cref="IsOverLimit"/>). Holds the decoded content
/// (framing removed) and, for a chunked body, its trailer section, so a replay may use any framing: HTTP/1.1
/// content-length or chunked (<see cref="WriteHttp1"/>), or HTTP/2 DATA frames and a trailing HEADERS frame
/// (<see cref="SegmentCount"/>, <see cref="GetSegment"/>, <see cref="TrailerSection"/>).
/// One instance per client connection, created on the first request that needs one, reused for every request;
/// <see cref="Reset"/> gives every block back. Not thread-safe: used by the connection's forward loop only.
/// </summary>
internal sealed class RequestReplayBuffer
{
    private readonly BlockMemoryPool _pool;
    private readonly int _blockSize;
    // Grows to the largest block count a limit needs and stays: steady state rents blocks, never arrays.
    private IMemoryOwner<byte>[] _blocks = [];
    private int _blockCount;
    private long _length;
    private long _limit;
    private byte[]? _trailers;
    // Sequence nodes over the blocks for the request-body phase (AsSequence): created once, relinked per request.
    private Segment[] _segments = [];
    private int _trailerLength;
    // Blocks held by every buffer in the process: one interlocked add per 16 KiB block, so tests and diagnostics can
    // prove that each exchange gives its blocks back (the pool's own free count moves with every socket read).
    private static long s_blocksHeld;

    public RequestReplayBuffer(BlockMemoryPool pool)
    {
        _pool = pool;
        _blockSize = pool.BlockSize;
    }

    /// <summary>Blocks currently held by all replay buffers of the process.</summary>
    public static long BlocksHeld => Interlocked.Read(ref s_blocksHeld);

    /// <summary>Content bytes kept (the trailer section not included).</summary>
    public long Length => _length;

    /// <summary>The body (content and trailer section) passed the limit: nothing is kept, the request cannot be replayed.</summary>
    public bool IsOverLimit { get; private set; }

    /// <summary>Blocks holding the content, in order; every one full but the last.</summary>
    public int SegmentCount => _blockCount;

    /// <summary>The kept trailer section of a chunked body (field lines, as <see cref="ChunkedDecoder.TrailerSection"/>); empty when none.</summary>
    public ReadOnlySpan<byte> TrailerSection => _trailers is null ? default : _trailers.AsSpan(0, _trailerLength);

    /// <summary>Arms the buffer for a new body of at most <paramref name="limit"/> bytes; anything kept before is released.</summary>
    public void Start(long limit)
    {
        Reset();
        _limit = limit;
    }

    /// <summary>The content bytes of block <paramref name="index"/>.</summary>
    public ReadOnlyMemory<byte> GetSegment(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)_blockCount);
        int length = index < _blockCount - 1 ? _blockSize : (int)(_length - (long)index * _blockSize);
        return _blocks[index].Memory[..length];
    }

    /// <summary>
    /// The kept content as one sequence over the blocks (the request-body phase hands it to filters). Valid until the
    /// next change to the buffer; allocates only the first time a body needs more nodes than any before it.
    /// </summary>
    public ReadOnlySequence<byte> AsSequence()
    {
        if (_blockCount == 0)
        {
            return ReadOnlySequence<byte>.Empty;
        }
        if (_blockCount == 1)
        {
            return new ReadOnlySequence<byte>(GetSegment(0));
        }
        if (_segments.Length < _blockCount)
        {
            int old = _segments.Length;
            Array.Resize(ref _segments, _blocks.Length);
            for (int i = old; i < _segments.Length; i++)
            {
                _segments[i] = new Segment();
            }
        }
        Segment? previous = null;
        for (int i = 0; i < _blockCount; i++)
        {
            Segment segment = _segments[i];
            segment.Set(GetSegment(i), previous is null ? 0 : previous.RunningIndex + previous.Memory.Length);
            previous?.Link(segment);
            previous = segment;
        }
        previous!.Link(null);
        Segment last = _segments[_blockCount - 1];
        return new ReadOnlySequence<byte>(_segments[0], 0, last, last.Memory.Length);
    }

    /// <summary>Keeps a copy of the next body bytes; past the limit drops everything kept and returns false.</summary>
    public bool Append(in ReadOnlySequence<byte> data)
    {
        if (IsOverLimit)
        {
            return false;
        }
        if (_length + data.Length + _trailerLength > _limit)
        {
            Overflow();
            return false;
        }
        if (data.IsSingleSegment)
        {
            AppendSpan(data.FirstSpan);
        }
        else
        {
            foreach (ReadOnlyMemory<byte> segment in data)
            {
                AppendSpan(segment.Span);
            }
        }
        return true;
    }

    /// <inheritdoc cref="Append(in ReadOnlySequence{byte})"/>
    public bool Append(ReadOnlySpan<byte> data)
    {
        if (IsOverLimit)
        {
            return false;
        }
        if (_length + data.Length + _trailerLength > _limit)
        {
            Overflow();
            return false;
        }
        AppendSpan(data);
        return true;
    }

    /// <summary>Keeps a chunked body's trailer section (counted against the limit like content).</summary>
    public bool SetTrailers(ReadOnlySpan<byte> section)
    {
        if (IsOverLimit)
        {
            return false;
        }
        if (_length + section.Length > _limit)
        {
            Overflow();
            return false;
        }
        ReleaseTrailers();
        if (!section.IsEmpty)
        {
            // A section is small and rare (gRPC requests carry none): the shared array pool serves it without a block.
            _trailers = ArrayPool<byte>.Shared.Rent(section.Length);
            section.CopyTo(_trailers);
            _trailerLength = section.Length;
        }
        return true;
    }

    /// <summary>Writes the kept content as it is (no framing), e.g. after a content-length head.</summary>
    public void CopyTo(PipeWriter output)
    {
        for (int i = 0; i < _blockCount; i++)
        {
            output.Write(GetSegment(i).Span);
        }
    }

    /// <summary>
    /// Writes the kept body in HTTP/1.1 framing (RFC 9112 section 6): the content as is for content-length, or as one
    /// chunk, then the last chunk with the kept trailer fields (minus those never forwarded, <see cref="TrailerFields"/>)
    /// and the empty line for chunked (RFC 9112 section 7.1). Chunk boundaries carry no meaning, so one chunk serves.
    /// Does not flush.
    /// </summary>
    public void WriteHttp1(PipeWriter output, BodyFraming framing, ITrailerFieldFilter? owned = null)
    {
        if (framing != BodyFraming.Chunked)
        {
            CopyTo(output);
            return;
        }
        if (_length > 0)
        {
            output.WriteChunkHeader(_length);
            CopyTo(output);
            output.Write("\r\n"u8);
        }
        if (_trailerLength == 0)
        {
            output.Write(ChunkedWriter.LastChunk);
            return;
        }
        output.Write("0\r\n"u8);
        TrailerFields.WriteHttp1(output, TrailerSection, owned);
        output.Write("\r\n"u8);
    }

    /// <summary>Gives every block and the trailer buffer back; the buffer is empty and within its (zero) limit again.</summary>
    public void Reset()
    {
        ReleaseBlocks();
        ReleaseTrailers();
        IsOverLimit = false;
        _limit = 0;
    }

    private void AppendSpan(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            int used = (int)(_length - (long)(_blockCount - 1) * _blockSize);
            if (_blockCount == 0 || used == _blockSize)
            {
                AddBlock();
                used = 0;
            }
            Span<byte> free = _blocks[_blockCount - 1].Memory.Span[used.._blockSize];
            int take = Math.Min(free.Length, data.Length);
            data[..take].CopyTo(free);
            data = data[take..];
            _length += take;
        }
    }

    private void AddBlock()
    {
        if (_blockCount == _blocks.Length)
        {
            Array.Resize(ref _blocks, Math.Max(4, _blocks.Length * 2));
        }
        _blocks[_blockCount++] = _pool.Rent(_blockSize);
        Interlocked.Increment(ref s_blocksHeld);
    }

    private void Overflow()
    {
        IsOverLimit = true;
        ReleaseBlocks();
        ReleaseTrailers();
    }

    private void ReleaseBlocks()
    {
        if (_blockCount == 0)
        {
            _length = 0;
            return;
        }
        Interlocked.Add(ref s_blocksHeld, -_blockCount);
        for (int i = 0; i < _blockCount; i++)
        {
            _blocks[i].Dispose();
            _blocks[i] = null!;
        }
        _blockCount = 0;
        _length = 0;
    }

    private void ReleaseTrailers()
    {
        if (_trailers is not null)
        {
            ArrayPool<byte>.Shared.Return(_trailers);
            _trailers = null;
        }
        _trailerLength = 0;
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public void Set(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public void Link(Segment? next) => Next = next;
    }
}
