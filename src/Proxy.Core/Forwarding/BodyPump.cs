using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Proxy.Http;
using Proxy.Http1;

namespace Proxy.Forwarding;

/// <summary>How a message body is delimited on the wire (RFC 9112 section 6).</summary>
internal enum BodyFraming : byte
{
    None = 0,
    ContentLength,
    Chunked,
    /// <summary>Response body ends when the upstream closes (RFC 9112 section 6.3, rule 8).</summary>
    CloseDelimited,
}

internal enum PumpResult : byte
{
    Completed = 0,
    /// <summary>The source ended or failed before the body was complete.</summary>
    SourceFailed,
    /// <summary>The source sent malformed framing; see <see cref="BodyPump.Reject"/>.</summary>
    SourceInvalid,
    /// <summary>More than the allowed body size.</summary>
    TooLarge,
    /// <summary>The destination stopped accepting bytes.</summary>
    DestinationFailed,
    /// <summary>A read was cancelled: timeout or drain; the owner knows which.</summary>
    Cancelled,
}

/// <summary>
/// Moves one message body from a <see cref="PipeReader"/> to a <see cref="PipeWriter"/> (or nowhere, to discard
/// it), decoding the incoming framing and writing the outgoing one. Flushes once per read so backpressure flows
/// both ways and no more than one read's worth of bytes is ever held. One instance per direction per
/// connection, reused for every message; the owner arms timeouts through <see cref="IBodyPumpTimer"/>.
/// </summary>
internal sealed class BodyPump
{
    private ChunkedDecoder _decoder;

    public long BytesRead { get; private set; }

    /// <summary>Forgets the previous body's count (a request that sends or relays no body must not report it).</summary>
    public void ResetCount() => BytesRead = 0;

    /// <summary>Counts bytes moved outside this pump (the HTTP/2 upstream path relays bodies itself).</summary>
    public void Count(long bytes) => BytesRead += bytes;
    public RejectReason Reject { get; private set; }

    /// <summary>
    /// Set by a caller that relays the body itself in another framing (an HTTP/2 upstream sends request trailers as
    /// a HEADERS frame): the trailer section of a chunked source is then kept after <see cref="CopyAsync"/> completes,
    /// readable through <see cref="TrailerSection"/> until <see cref="ReleaseTrailers"/> or the next copy. Otherwise the
    /// section is written to a chunked destination (or dropped) and its buffer returned at once.
    /// </summary>
    public bool KeepTrailers { get; set; }

    /// <summary>The last chunked body's trailer section (see <see cref="ChunkedDecoder.TrailerSection"/>); empty when none or released.</summary>
    public ReadOnlySpan<byte> TrailerSection => _decoder.TrailerSection;

    /// <summary>Hands a kept trailer buffer back to the pool.</summary>
    public void ReleaseTrailers() => _decoder.ReleaseTrailers();

    /// <summary>
    /// Copies a body. The destination may already hold an unflushed head: the first flush sends it along with
    /// the first body bytes, so a small message leaves in one send. A <paramref name="replay"/> buffer, when given, keeps
    /// a copy of the decoded content and trailer section for a retry (it drops the copy itself past its limit).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<PumpResult> CopyAsync(
        PipeReader source, PipeWriter? destination, BodyFraming inFraming, long contentLength,
        BodyFraming outFraming, long maxBytes, IBodyPumpTimer timer, RequestReplayBuffer? replay = null)
    {
        BytesRead = 0;
        Reject = RejectReason.None;
        // A kept section of the previous body is not wanted any more.
        _decoder.Reset();
        if (inFraming == BodyFraming.None)
        {
            return PumpResult.Completed;
        }
        long remaining = contentLength;

        while (true)
        {
            ReadResult result;
            timer.ArmRead(source);
            try
            {
                result = await source.ReadAsync().ConfigureAwait(false);
            }
            catch (Exception)
            {
                timer.DisarmPump();
                return PumpResult.SourceFailed;
            }
            timer.DisarmPump();
            if (result.IsCanceled)
            {
                return PumpResult.Cancelled;
            }

            ReadOnlySequence<byte> buffer = result.Buffer;
            SequencePosition consumed = buffer.Start;
            bool done = false;

            switch (inFraming)
            {
                case BodyFraming.ContentLength:
                {
                    long take = Math.Min(remaining, buffer.Length);
                    if (take > 0)
                    {
                        ReadOnlySequence<byte> slice = buffer.Slice(0, take);
                        WriteData(destination, outFraming, slice);
                        replay?.Append(slice);
                        consumed = slice.End;
                        remaining -= take;
                        BytesRead += take;
                    }
                    done = remaining == 0;
                    break;
                }
                case BodyFraming.Chunked:
                {
                    ReadOnlySequence<byte> rest = buffer;
                    while (true)
                    {
                        ChunkStatus status = _decoder.Read(rest, out ReadOnlySequence<byte> data, out SequencePosition at, out RejectReason reason);
                        if (status == ChunkStatus.Error)
                        {
                            source.AdvanceTo(at, buffer.End);
                            _decoder.ReleaseTrailers();
                            Reject = reason;
                            return PumpResult.SourceInvalid;
                        }
                        if (status == ChunkStatus.Data)
                        {
                            BytesRead += data.Length;
                            if (BytesRead > maxBytes)
                            {
                                source.AdvanceTo(at);
                                Reject = RejectReason.BodyTooLarge;
                                return PumpResult.TooLarge;
                            }
                            WriteData(destination, outFraming, data);
                            replay?.Append(data);
                        }
                        consumed = at;
                        rest = buffer.Slice(at);
                        if (status == ChunkStatus.Done)
                        {
                            done = true;
                            break;
                        }
                        if (status == ChunkStatus.NeedMore)
                        {
                            break;
                        }
                    }
                    break;
                }
                case BodyFraming.CloseDelimited:
                {
                    if (!buffer.IsEmpty)
                    {
                        WriteData(destination, outFraming, buffer);
                        BytesRead += buffer.Length;
                        consumed = buffer.End;
                    }
                    done = result.IsCompleted;
                    break;
                }
            }

            if (done && replay is not null && _decoder.HasTrailers)
            {
                replay.SetTrailers(_decoder.TrailerSection);
            }
            if (done && destination is not null && outFraming == BodyFraming.Chunked)
            {
                WriteLastChunk(destination);
            }
            if (done && !KeepTrailers)
            {
                // Idle connections hold no buffer: the section was relayed (or has nowhere to go, RFC 9110 section 6.5.1: it may be discarded).
                _decoder.ReleaseTrailers();
            }

            if (done)
            {
                // Bytes after the body (a pipelined request) are not examined: the next read must see them at once.
                source.AdvanceTo(consumed);
            }
            else
            {
                // Everything was looked at: an incomplete chunk line waits for more bytes.
                source.AdvanceTo(consumed, buffer.End);
            }

            if (destination is not null)
            {
                FlushResult flush;
                if (done)
                {
                    timer.LastFlush(this);
                }
                timer.ArmWrite();
                try
                {
                    flush = await destination.FlushAsync().ConfigureAwait(false);
                }
                catch (Exception)
                {
                    timer.DisarmPump();
                    return PumpResult.DestinationFailed;
                }
                timer.DisarmPump();
                if (flush.IsCanceled || (flush.IsCompleted && !done))
                {
                    return PumpResult.DestinationFailed;
                }
            }

            if (done)
            {
                return PumpResult.Completed;
            }
            if (result.IsCompleted)
            {
                // The source closed before the body ended.
                Reject = RejectReason.UnexpectedEndOfBody;
                return PumpResult.SourceFailed;
            }
        }
    }

    /// <summary>
    /// The last chunk and the trailer section (RFC 9112 section 7.1.2): the source's trailer fields when it was chunked,
    /// minus those that must not be forwarded (<see cref="TrailerFilter"/>), then the empty line.
    /// </summary>
    private void WriteLastChunk(PipeWriter destination)
    {
        if (!_decoder.HasTrailers)
        {
            destination.Write(ChunkedWriter.LastChunk);
            return;
        }
        destination.Write("0\r\n"u8);
        TrailerFields.WriteHttp1(destination, _decoder.TrailerSection);
        destination.Write("\r\n"u8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteData(PipeWriter? destination, BodyFraming outFraming, in ReadOnlySequence<byte> data)
    {
        if (destination is null || data.IsEmpty)
        {
            return;
        }
        if (outFraming == BodyFraming.Chunked)
        {
            destination.WriteChunkHeader(data.Length);
            destination.Write(data);
            destination.Write("\r\n"u8);
        }
        else
        {
            destination.Write(data);
        }
    }
}

/// <summary>Lets the owning connection bound each wait of a pump with its heartbeat deadline.</summary>
internal interface IBodyPumpTimer
{
    void ArmRead(PipeReader source);
    void ArmWrite();
    void DisarmPump();

    /// <summary>Called before the flush that carries the body's last bytes (the owner may release per-request slots).</summary>
    void LastFlush(BodyPump pump);
}
