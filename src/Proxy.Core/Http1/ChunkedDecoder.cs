using System.Buffers;
using System.Runtime.CompilerServices;
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

/// <summary>
/// Resumable chunked transfer-coding decoder (RFC 9112 section 7.1). A mutable struct held in a field
/// of the connection (never copied while in use); framing bytes are eaten as they arrive, payload is
/// handed out as slices of the caller's buffer, so nothing is copied or allocated.
/// <code>
/// chunked-body   = *chunk last-chunk trailer-section CRLF
/// chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// chunk-size     = 1*HEXDIG
/// last-chunk     = 1*("0") [ chunk-ext ] CRLF
/// chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// trailer-section = *( field-line CRLF )
/// </code>
/// </summary>
internal struct ChunkedDecoder
{
    /// <summary>Longest chunk-size line (size, extensions) we read: extensions are never used, only a cost.</summary>
    public const int MaxChunkLine = 4 * 1024;
    /// <summary>Largest trailer section we accept (validated, then kept for the relay in a pooled buffer).</summary>
    public const int MaxTrailerBytes = 32 * 1024;
    /// <summary>First rent for a trailer section: gRPC's grpc-status + grpc-message fit with room to spare.</summary>
    private const int InitialTrailerBuffer = 256;
    /// <summary>16 hex digits hold a 64-bit size; more is an overflow attempt (or padding we refuse).</summary>
    private const int MaxSizeDigits = 16;
    /// <summary>
    /// Framing allowed per chunk beyond what its payload earns (twice its size): "1\r\nX\r\n" streams a byte at a time
    /// for 4 bytes of framing, well inside it; "1;" + 4000 bytes of extension does not. Go's rule (CVE-2023-39326).
    /// </summary>
    private const int FramingPerChunk = 16;
    /// <summary>Framing beyond the allowance, summed over the body (never below 0), past which the body is refused.</summary>
    public const int MaxFramingExcess = 16 * 1024;

    private enum State : byte
    {
        Size,
        SizeWhitespace,
        Extension,
        SizeLf,
        Data,
        DataCr,
        DataLf,
        TrailerLineStart,
        TrailerName,
        TrailerValue,
        TrailerLf,
        TrailerEndLf,
        Done,
        Error,
    }

    private State _state;
    private int _digits;
    private int _lineBytes;
    private int _trailerBytes;
    private long _size;
    private long _remaining;
    private long _payloadBytes;
    /// <summary>Framing bytes read beyond the allowance (<see cref="FramingPerChunk"/> plus twice each chunk's size).</summary>
    private int _framingExcess;
    private RejectReason _error;
    /// <summary>The trailer section's field lines as received (CRLF each, no final empty line); rented only when one arrives.</summary>
    private byte[]? _trailers;
    private int _trailerLength;

    /// <summary>Payload bytes handed out so far (the caller enforces its body limit on this).</summary>
    public readonly long PayloadBytes => _payloadBytes;

    /// <summary>True once the last chunk and trailer section were read.</summary>
    public readonly bool IsDone => _state == State.Done;

    /// <summary>
    /// The validated trailer section of the body just read (RFC 9112 section 7.1.2): its field lines, each with CRLF,
    /// without the final empty line; empty when there was none. Valid from <see cref="ChunkStatus.Done"/> until
    /// <see cref="Reset"/> or <see cref="ReleaseTrailers"/>. Read it with <see cref="TrailerFields"/>, which also drops
    /// the fields that must not be forwarded.
    /// </summary>
    public readonly ReadOnlySpan<byte> TrailerSection => _trailers is null ? default : _trailers.AsSpan(0, _trailerLength);

    /// <summary>True when the body ended with at least one trailer field.</summary>
    public readonly bool HasTrailers => _trailerLength > 0;

    /// <summary>Forgets the state, handing a trailer buffer back to the pool.</summary>
    public void Reset()
    {
        ReleaseTrailers();
        this = default;
    }

    /// <summary>Returns the trailer buffer to the pool (the section reads empty afterwards).</summary>
    public void ReleaseTrailers()
    {
        if (_trailers is { } buffer)
        {
            _trailers = null;
            _trailerLength = 0;
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Keeps one byte of a trailer field line; the section is already capped at <see cref="MaxTrailerBytes"/>.</summary>
    private void KeepTrailerByte(byte b)
    {
        byte[]? buffer = _trailers;
        if (buffer is null || _trailerLength == buffer.Length)
        {
            buffer = ArrayPool<byte>.Shared.Rent(Math.Max(InitialTrailerBuffer, _trailerLength * 2));
            if (_trailers is { } old)
            {
                old.AsSpan(0, _trailerLength).CopyTo(buffer);
                ArrayPool<byte>.Shared.Return(old);
            }
            _trailers = buffer;
        }
        buffer[_trailerLength++] = b;
    }

    /// <summary>
    /// The first framing error in <paramref name="buffer"/> read as the start of a chunked body; None when what is there is
    /// well formed so far (or ends the body). Runs a scratch decoder: nothing is consumed, no caller state changes.
    /// </summary>
    public static RejectReason FindError(in ReadOnlySequence<byte> buffer)
    {
        ChunkedDecoder scratch = default;
        ReadOnlySequence<byte> rest = buffer;
        ChunkStatus status;
        RejectReason reason;
        while ((status = scratch.Read(rest, out _, out SequencePosition consumed, out reason)) == ChunkStatus.Data)
        {
            rest = rest.Slice(consumed);
        }
        scratch.Reset(); // a trailer section read on the way holds a pooled buffer
        return status == ChunkStatus.Error ? reason : RejectReason.None;
    }

    public ChunkStatus Read(in ReadOnlySequence<byte> buffer, out ReadOnlySequence<byte> data,
        out SequencePosition consumed, out RejectReason reason)
    {
        data = default;
        reason = RejectReason.None;
        SequenceReader<byte> reader = new(buffer);
        while (true)
        {
            switch (_state)
            {
                case State.Data:
                    long available = reader.Remaining;
                    if (available == 0)
                    {
                        consumed = reader.Position;
                        return ChunkStatus.NeedMore;
                    }
                    long take = Math.Min(available, _remaining);
                    SequencePosition start = reader.Position;
                    reader.Advance(take);
                    consumed = reader.Position;
                    data = buffer.Slice(start, consumed);
                    _remaining -= take;
                    _payloadBytes += take;
                    if (_remaining == 0)
                    {
                        _state = State.DataCr;
                    }
                    return ChunkStatus.Data;
                case State.Done:
                    consumed = reader.Position;
                    return ChunkStatus.Done;
                case State.Error:
                    consumed = reader.Position;
                    reason = _error;
                    return ChunkStatus.Error;
            }

            if (!reader.TryRead(out byte b))
            {
                // All framing bytes seen so far are remembered in the state: let the caller drop them.
                consumed = reader.Position;
                return ChunkStatus.NeedMore;
            }
            RejectReason error = Step(b);
            if (error != RejectReason.None)
            {
                _error = error;
                _state = State.Error;
            }
        }
    }

    /// <summary>Advances the framing state machine by one byte; returns a reason on malformed input.</summary>
    private RejectReason Step(byte b)
    {
        switch (_state)
        {
            case State.Size:
                int hex = Http1Syntax.HexValue(b);
                if (hex >= 0)
                {
                    // The digit cap alone allows 0x8000... (negative as long): check the top nibble too.
                    if (_digits == MaxSizeDigits || _size > (long.MaxValue >> 4))
                    {
                        return RejectReason.InvalidChunkSize;
                    }
                    _size = (_size << 4) | (uint)hex;
                    _digits++;
                    _lineBytes++;
                    return RejectReason.None;
                }
                if (_digits == 0)
                {
                    return RejectReason.InvalidChunkSize;
                }
                return AfterSize(b);
            case State.SizeWhitespace:
                // BWS is allowed only before ';' (RFC 9112 section 7.1.1): "5 \r\n" is refused, since
                // implementations disagree on it.
                if (++_lineBytes > MaxChunkLine)
                {
                    return RejectReason.InvalidChunkExtension;
                }
                if (Http1Syntax.IsOws(b))
                {
                    return RejectReason.None;
                }
                if (b == (byte)';')
                {
                    _state = State.Extension;
                    return RejectReason.None;
                }
                return RejectReason.InvalidChunkSize;
            case State.Extension:
                if (b == (byte)'\r')
                {
                    _state = State.SizeLf;
                    return RejectReason.None;
                }
                if (b == (byte)'\n')
                {
                    return RejectReason.InvalidChunkSize;
                }
                if (++_lineBytes > MaxChunkLine || (b < 0x20 && b != (byte)'\t') || b == 0x7F)
                {
                    return RejectReason.InvalidChunkExtension;
                }
                return RejectReason.None;
            case State.SizeLf:
                if (b != (byte)'\n')
                {
                    return RejectReason.InvalidChunkSize;
                }
                if (ChargeFraming())
                {
                    return RejectReason.ChunkFramingExcess;
                }
                if (_size == 0)
                {
                    _state = State.TrailerLineStart;
                }
                else
                {
                    _remaining = _size;
                    _state = State.Data;
                }
                return RejectReason.None;
            case State.DataCr:
                if (b != (byte)'\r')
                {
                    return RejectReason.InvalidChunkTerminator;
                }
                _state = State.DataLf;
                return RejectReason.None;
            case State.DataLf:
                if (b != (byte)'\n')
                {
                    return RejectReason.InvalidChunkTerminator;
                }
                _state = State.Size;
                _size = 0;
                _digits = 0;
                _lineBytes = 0;
                return RejectReason.None;
            default:
                return StepTrailer(b);
        }
    }

    /// <summary>
    /// A chunk-size line just ended: charges its framing (the line, its CRLF, the CRLF after the data) against what the
    /// chunk earns. True when the excess passed <see cref="MaxFramingExcess"/>. The line is capped at
    /// <see cref="MaxChunkLine"/>, so the sum stays far from overflowing.
    /// </summary>
    private bool ChargeFraming()
    {
        long earned = FramingPerChunk + 2 * Math.Min(_size, MaxFramingExcess);
        long excess = _framingExcess + _lineBytes + 4 - earned;
        _framingExcess = (int)Math.Max(0, excess);
        return _framingExcess > MaxFramingExcess;
    }

    private RejectReason AfterSize(byte b)
    {
        switch (b)
        {
            case (byte)'\r':
                _state = State.SizeLf;
                return RejectReason.None;
            case (byte)';':
                _state = State.Extension;
                return RejectReason.None;
            case (byte)' ' or (byte)'\t':
                _state = State.SizeWhitespace;
                return RejectReason.None;
            default:
                return RejectReason.InvalidChunkSize;
        }
    }

    /// <summary>
    /// Trailer fields (RFC 9112 section 7.1.2) follow the header field-line rules: token name, no
    /// whitespace before the colon, no obs-fold, no CTL in the value, CRLF only. Every byte of a field line is kept
    /// (<see cref="TrailerSection"/>); the empty line that ends the section is not.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private RejectReason StepTrailer(byte b)
    {
        if (++_trailerBytes > MaxTrailerBytes)
        {
            return RejectReason.InvalidTrailer;
        }
        switch (_state)
        {
            case State.TrailerLineStart:
                if (b == (byte)'\r')
                {
                    _state = State.TrailerEndLf;
                    return RejectReason.None;
                }
                if (!Http1Syntax.Token.Contains(b))
                {
                    return RejectReason.InvalidTrailer;
                }
                _state = State.TrailerName;
                KeepTrailerByte(b);
                return RejectReason.None;
            case State.TrailerName:
                if (b == (byte)':')
                {
                    _state = State.TrailerValue;
                }
                else if (!Http1Syntax.Token.Contains(b))
                {
                    return RejectReason.InvalidTrailer;
                }
                KeepTrailerByte(b);
                return RejectReason.None;
            case State.TrailerValue:
                if (b == (byte)'\r')
                {
                    _state = State.TrailerLf;
                }
                else if (Http1Syntax.InvalidFieldValue.Contains(b))
                {
                    return RejectReason.InvalidTrailer;
                }
                KeepTrailerByte(b);
                return RejectReason.None;
            case State.TrailerLf:
                if (b != (byte)'\n')
                {
                    return RejectReason.InvalidTrailer;
                }
                _state = State.TrailerLineStart;
                KeepTrailerByte(b);
                return RejectReason.None;
            case State.TrailerEndLf:
                if (b != (byte)'\n')
                {
                    return RejectReason.InvalidTrailer;
                }
                _state = State.Done;
                return RejectReason.None;
            default:
                return RejectReason.InvalidTrailer;
        }
    }
}
