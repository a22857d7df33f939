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

    /// <summary>Request bodies: trailer fields not relayed besides <see cref="TrailerFilter"/>'s (see <see cref="ITrailerFieldFilter"/>).</summary>
    public ITrailerFieldFilter? TrailerFieldFilter { get; set; }

    /// <summary>The last chunked body's trailer section (see <see cref="ChunkedDecoder.TrailerSection"/>); empty when none or released.</summary>
    public ReadOnlySpan<byte> TrailerSection => _decoder.TrailerSection;

    /// <summary>Hands a kept trailer buffer back to the pool.</summary>
    public void ReleaseTrailers() => _decoder.ReleaseTrailers();

    // The long-lived copy loop (see CopyAsync): the job's arguments, read once by the loop at the start of each job.
    private PipeReader? _source;
    private PipeWriter? _destination;
    private BodyFraming _inFraming;
    private BodyFraming _outFraming;
    private long _contentLength;
    private long _maxBytes;
    private IBodyPumpTimer? _timer;
    private RequestReplayBuffer? _replay;
    private readonly ReusableValueTaskSource<PumpResult> _result = new();
    private readonly ReusableValueTaskSource<bool> _work = new();
    private Task? _loop;
    /// <summary>
    /// The loop published its last result and waits (or is about to wait) for the next body. A pump whose loop still
    /// runs a body (an exchange abandoned mid-body by a dropped HTTP/2 bridge returns its state to the pool) is never
    /// handed a second one: a second awaiter would break the result source.
    /// </summary>
    private volatile bool _parked = true;

    /// <summary>
    /// Copies a body. The destination may already hold an unflushed head: the first flush sends it along with
    /// the first body bytes, so a small message leaves in one send. A <paramref name="replay"/> buffer, when given, keeps
    /// a copy of the decoded content and trailer section for a retry (it drops the copy itself past its limit).
    /// <para>The copy runs in <see cref="CopyLoopAsync"/>, one long-lived loop per pump (pumps are pooled with the
    /// connection state), and the caller awaits a reusable source, as with the forwarder's loop: a body that does not
    /// arrive in one read makes an async method per body suspend, and each suspension rents a box from the pooling
    /// builder, whose small per-thread caches miss when many connections interleave (200 KB responses through the HTTP/2
    /// bridge at 16 connections: these boxes and the forwarder's were about two thirds of 558 B per request). A body
    /// that is already buffered completes before this call returns.</para>
    /// </summary>
    public ValueTask<PumpResult> CopyAsync(
        PipeReader source, PipeWriter? destination, BodyFraming inFraming, long contentLength,
        BodyFraming outFraming, long maxBytes, IBodyPumpTimer timer, RequestReplayBuffer? replay = null)
    {
        _source = source;
        _destination = destination;
        _inFraming = inFraming;
        _outFraming = outFraming;
        _contentLength = contentLength;
        _maxBytes = maxBytes;
        _timer = timer;
        _replay = replay;
        if (!_parked)
        {
            return CopyOnceAsync();
        }
        _parked = false;
        _result.Reset();
        if (_loop is null)
        {
            _loop = CopyLoopAsync(_result, once: false);
        }
        else
        {
            _work.SetResult(true);
        }
        return _result.Task;
    }

    /// <summary>
    /// Copies a Content-Length body that is already buffered in full (a small response arrives with its head) at once,
    /// without handing it to the loop: the loop's resume and park again, with the timer armed and disarmed around a
    /// read and a flush that do not wait, were the largest part of relaying a small body. The caller flushes. False
    /// when the body is not all there, or a cancel is pending (left for <see cref="CopyAsync"/> to see), with nothing
    /// consumed.
    /// </summary>
    public bool TryCopyBuffered(PipeReader source, PipeWriter destination, long contentLength)
    {
        if (!_parked || !source.TryRead(out ReadResult result))
        {
            return false;
        }
        ReadOnlySequence<byte> buffer = result.Buffer;
        if (result.IsCanceled)
        {
            source.AdvanceTo(buffer.Start);
            source.CancelPendingRead(); // TryRead took the cancel: the pump's read must still get it
            return false;
        }
        if (buffer.Length < contentLength)
        {
            source.AdvanceTo(buffer.Start);
            return false;
        }
        _decoder.Reset();
        Reject = RejectReason.None;
        ReadOnlySequence<byte> body = buffer.Slice(0, contentLength);
        WriteData(destination, BodyFraming.ContentLength, body);
        // Bytes after the body are not examined: the next response (never expected) or the close must be seen at once.
        source.AdvanceTo(body.End);
        BytesRead = contentLength;
        return true;
    }

    /// <summary>The rare copy while the loop is still busy with an abandoned body: a loop of its own that runs once.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private ValueTask<PumpResult> CopyOnceAsync()
    {
        ReusableValueTaskSource<PumpResult> result = new();
        _ = CopyLoopAsync(result, once: true);
        return result.Task;
    }

    /// <summary>
    /// One iteration per body: takes the job's arguments, copies, publishes the result, waits for the next body. Runs
    /// inline from <see cref="CopyAsync"/> until its first real wait. Never ends while the pump lives (unless
    /// <paramref name="once"/>); an abandoned loop is collected with its pump.
    /// </summary>
    private async Task CopyLoopAsync(ReusableValueTaskSource<PumpResult> published, bool once)
    {
        while (true)
        {
            // Locals, not fields, from here on: a loop still running an abandoned body must never see the next job's pipes.
            PipeReader source = _source!;
            PipeWriter? destination = _destination;
            BodyFraming inFraming = _inFraming;
            BodyFraming outFraming = _outFraming;
            long contentLength = _contentLength;
            long maxBytes = _maxBytes;
            IBodyPumpTimer timer = _timer!;
            RequestReplayBuffer? replay = _replay;
            _source = null;
            _destination = null;
            _timer = null;
            _replay = null;

            PumpResult outcome = default;
            Exception? error = null;
            // Declared here, not in the read loop, so that they can be cleared before the loop parks (see Copied).
            ReadResult result = default;
            ReadOnlySequence<byte> buffer = default;
            SequencePosition consumed = default;
            try
            {
                BytesRead = 0;
                Reject = RejectReason.None;
                // A kept section of the previous body is not wanted any more.
                _decoder.Reset();
                if (inFraming == BodyFraming.None)
                {
                    outcome = PumpResult.Completed;
                    goto Copied;
                }
                long remaining = contentLength;
                bool firstRead = destination is not null;

                while (true)
                {
                    if (firstRead)
                    {
                        firstRead = false;
                        if (source.TryRead(out result))
                        {
                            goto Read;
                        }
                        // None of the body is here yet: what the caller wrote (the response or request head) goes out now
                        // rather than with the first body bytes. A server-sent event stream or a long poll sends its head
                        // long before its body, and its client waits on the head. A body that came with its head (the
                        // usual case) found bytes above and costs no extra flush.
                        timer.ArmWrite();
                        FlushResult headFlush;
                        try
                        {
                            headFlush = await destination!.FlushAsync().ConfigureAwait(false);
                        }
                        catch (Exception)
                        {
                            timer.DisarmPump();
                            outcome = PumpResult.DestinationFailed;
                            goto Copied;
                        }
                        timer.DisarmPump();
                        if (headFlush.IsCanceled || headFlush.IsCompleted)
                        {
                            outcome = PumpResult.DestinationFailed;
                            goto Copied;
                        }
                    }
                    timer.ArmRead(source);
                    try
                    {
                        result = await source.ReadAsync().ConfigureAwait(false);
                    }
                    catch (Exception)
                    {
                        timer.DisarmPump();
                        outcome = PumpResult.SourceFailed;
                        goto Copied;
                    }
                    timer.DisarmPump();
                Read:
                    if (result.IsCanceled)
                    {
                        outcome = PumpResult.Cancelled;
                        goto Copied;
                    }

                    buffer = result.Buffer;
                    consumed = buffer.Start;
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
                                    outcome = PumpResult.SourceInvalid;
                                    goto Copied;
                                }
                                if (status == ChunkStatus.Data)
                                {
                                    BytesRead += data.Length;
                                    if (BytesRead > maxBytes)
                                    {
                                        source.AdvanceTo(at);
                                        Reject = RejectReason.BodyTooLarge;
                                        outcome = PumpResult.TooLarge;
                                        goto Copied;
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
                            outcome = PumpResult.DestinationFailed;
                            goto Copied;
                        }
                        timer.DisarmPump();
                        if (flush.IsCanceled || (flush.IsCompleted && !done))
                        {
                            outcome = PumpResult.DestinationFailed;
                            goto Copied;
                        }
                    }

                    if (done)
                    {
                        outcome = PumpResult.Completed;
                        goto Copied;
                    }
                    if (result.IsCompleted)
                    {
                        // The source closed before the body ended.
                        Reject = RejectReason.UnexpectedEndOfBody;
                        outcome = PumpResult.SourceFailed;
                        goto Copied;
                    }
                }
            }
            catch (Exception e)
            {
                error = e;
            }
        Copied:
            if (once)
            {
                Publish(published, outcome, error);
                return;
            }
            // The state machine keeps its locals while parked, and a parked pump waits in a pooled exchange state:
            // cleared, so that it does not keep the last connection (the timer is the client connection), its pipes and
            // their segments reachable until the state is used again.
            source = null!;
            destination = null;
            timer = null!;
            replay = null;
            result = default;
            buffer = default;
            consumed = default;
            // Reset and parked before publishing: publishing may run the caller inline up to its next CopyAsync call.
            _work.Reset();
            _parked = true;
            Publish(published, outcome, error);
            error = null;
            await _work.Task.ConfigureAwait(false);
        }
    }

    private static void Publish(ReusableValueTaskSource<PumpResult> published, PumpResult outcome, Exception? error)
    {
        if (error is null)
        {
            published.SetResult(outcome);
        }
        else
        {
            published.SetException(error);
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
        TrailerFields.WriteHttp1(destination, _decoder.TrailerSection, TrailerFieldFilter);
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
