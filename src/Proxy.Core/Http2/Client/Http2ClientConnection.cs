using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Http2.FlowControl;
using Proxy.Http2.HPack;
using Proxy.Upstream;

namespace Proxy.Http2.Client;

/// <summary>
/// The client side of one HTTP/2 connection to a destination (RFC 9113), carrying many concurrent exchanges. A read
/// loop owns the input (frames, HPACK decoding, SETTINGS, PING, GOAWAY, flow control); writers (forwarders opening
/// streams and sending bodies, the read loop's acknowledgements) take turns through one write gate, which also
/// keeps header blocks in HPACK encoding order and stream ids increasing on the wire (section 5.1.1).
/// <para>
/// Concurrency: <c>_sync</c> guards the stream table, the windows and the counters; a stream's own lock guards its
/// state (see <see cref="Http2ClientStream"/>); lock order is stream, then <c>_sync</c>. Nothing that can resume a
/// forwarder inline (pipe flush, completion, cancelled read) runs under either lock.
/// </para>
/// </summary>
internal sealed class Http2ClientConnection
{
    /// <summary>Per-stream receive window: what one slow client can make us buffer for its stream.</summary>
    internal const int StreamWindow = 256 * 1024;
    /// <summary>Connection receive window: raised at once so streams are limited by their own windows only.</summary>
    private const int ConnectionWindow = 16 * 1024 * 1024;
    /// <summary>Our SETTINGS_MAX_FRAME_SIZE stays the default: larger frames only cost buffer.</summary>
    private const uint OurMaxFrameSize = Http2Settings.MinMaxFrameSize;
    private const int MaxHeaderListSize = 64 * 1024;

    private readonly UpstreamConnection _transport;
    private readonly Http2ConnectionPool _pool;
    private readonly PipeWriter _output;
    private readonly Lock _sync = new();
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private readonly Dictionary<int, Http2ClientStream> _streams = [];
    private readonly Stack<Http2ClientStream> _free = new();
    private readonly List<Http2ClientStream> _windowWaiters = [];
    private readonly List<Http2ClientStream> _wake = [];
    private readonly HPackEncoder _encoder = new();
    private readonly HPackDecoder _decoder = new(maxHeaderListSize: MaxHeaderListSize);
    private byte[] _headerBlock = new byte[4096];

    private Http2Settings _peer = Http2Settings.Default;
    private FlowControlWindow _sendWindow = new(FlowControlWindow.DefaultInitialSize);
    private FlowControlWindow _receiveWindow = new(ConnectionWindow);
    private int _receiveUnacked;
    private int _nextStreamId = 1;
    private int _active;
    private int _maxStreams;
    private int _goAwayLastStreamId = int.MaxValue;
    private bool _goingAway;
    private bool _closed;
    /// <summary>Timestamp since which the read loop has held an incomplete frame with no frame completed since (0: none).</summary>
    private long _partialFrameSince;
    /// <summary>The peer's connection preface, a SETTINGS frame, has arrived (read loop only; section 3.4).</summary>
    private bool _prefaceReceived;
    /// <summary>The stream whose header block continues in CONTINUATION frames (section 6.10); 0 when none.</summary>
    private int _continuationStream;
    private Http2ClientStream? _continuationTarget;
    private bool _continuationTrailers;
    private bool _continuationEndStream;
    private ResponseFieldSink _continuationSink;

    // Acknowledgements the read loop owes, written after each batch of frames.
    private bool _settingsAckDue;
    private ulong _pingDue;
    private bool _pingAckDue;
    private int _connectionUpdateDue;
    private Http2ErrorCode _goAwayDue = (Http2ErrorCode)uint.MaxValue;

    public Http2ClientConnection(UpstreamConnection transport, Http2ConnectionPool pool, int maxStreams)
    {
        _transport = transport;
        _pool = pool;
        _output = transport.Output;
        _maxStreams = maxStreams;
        IdleSince = Environment.TickCount64;
    }

    public long IdleSince { get; private set; }
    public int ActiveStreams => Volatile.Read(ref _active);
    public bool IsClosed => Volatile.Read(ref _closed);
    /// <summary>GOAWAY received or sent: no new streams (section 6.8).</summary>
    public bool IsGoingAway => Volatile.Read(ref _goingAway);

    // Completed by the peer's first SETTINGS frame or by the connection's end; one per connection (control plane).
    private readonly TaskCompletionSource _peerSettingsSeen = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Completes when the peer's first SETTINGS frame was applied (or the connection ended). Ordinary requests never
    /// wait for it (section 3.4); an extended CONNECT must, to know whether the peer allows it (RFC 8441 section 3).
    /// </summary>
    public Task PeerSettingsSeen => _peerSettingsSeen.Task;

    /// <summary>The peer sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 section 3).</summary>
    public bool EnableConnectProtocol
    {
        get
        {
            lock (_sync)
            {
                return _peer.EnableConnectProtocol && !_closed;
            }
        }
    }

    /// <summary>
    /// Sends the connection preface, our SETTINGS and the connection window increase (section 3.4), then starts the
    /// read loop. Requests may follow at once: the peer's SETTINGS are applied whenever they arrive (section 3.4).
    /// </summary>
    public async ValueTask<bool> StartAsync()
    {
        await _writeGate.WaitAsync().ConfigureAwait(false);
        try
        {
            _output.Write(Http2Preface.ClientPreface);
            ReadOnlySpan<Http2Setting> settings =
            [
                new(Http2SettingsParameter.SETTINGS_ENABLE_PUSH, 0),
                new(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, StreamWindow),
                new(Http2SettingsParameter.SETTINGS_MAX_HEADER_LIST_SIZE, MaxHeaderListSize),
            ];
            Http2FrameWriter.WriteSettings(_output, settings);
            Http2FrameWriter.WriteWindowUpdate(_output, 0, ConnectionWindow - FlowControlWindow.DefaultInitialSize);
            FlushResult flush = await _output.FlushAsync().ConfigureAwait(false);
            if (flush.IsCompleted || flush.IsCanceled)
            {
                return false;
            }
        }
        catch (Exception)
        {
            return false;
        }
        finally
        {
            _writeGate.Release();
        }
        _ = ReadLoopAsync();
        return true;
    }

    // ---- streams ---------------------------------------------------------------------------------

    /// <summary>
    /// The read loop has held the same incomplete frame for a second or more. A sound peer finishes a frame it started
    /// within moments; one whose frame is declared longer than it sent never will, and a new stream here would wait on
    /// it until its timeout. Such a connection takes no new stream (the pool uses or opens another); the streams waiting
    /// on it fail it when they time out (<see cref="OnStreamTimedOut"/>).
    /// </summary>
    private bool StalledMidFrame()
    {
        long since = Volatile.Read(ref _partialFrameSince);
        return since != 0 && Stopwatch.GetElapsedTime(since) >= TimeSpan.FromSeconds(1);
    }

    /// <summary>Reserves a stream slot when the connection takes new streams and is below its concurrency limit.</summary>
    public Http2ClientStream? TryReserveStream()
    {
        lock (_sync)
        {
            if (_closed || _goingAway || _active >= _maxStreams || _nextStreamId > int.MaxValue - 2 || StalledMidFrame())
            {
                return null;
            }
            _active++;
            _pool.StreamReserved();
            if (!_free.TryPop(out Http2ClientStream? stream))
            {
                stream = new Http2ClientStream(this);
            }
            stream.Reset((int)Math.Min(_peer.InitialWindowSize, Http2Settings.MaxWindowSize), StreamWindow);
            return stream;
        }
    }

    /// <summary>
    /// Opens the stream: encodes the request head (HPACK state and stream ids follow wire order, hence under the
    /// write gate) and sends HEADERS, with END_STREAM when there is no body. False when the connection can no longer
    /// take it (closed or going away): the request was not sent and may go elsewhere.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> SendHeadersAsync(Http2ClientStream stream, RequestHead head, bool secure, byte[] authority,
        int authorityLength, byte[] fieldLines, int fieldLinesLength, bool endStream, bool teTrailers, byte[]? protocol = null,
        byte[]? path = null, int pathLength = 0)
    {
        await _writeGate.WaitAsync().ConfigureAwait(false);
        try
        {
            lock (_sync)
            {
                if (_closed || _goingAway)
                {
                    stream.Refused = stream.Aborted = true;
                    return false;
                }
                stream.Id = _nextStreamId;
                _nextStreamId += 2;
                // The window was set when the stream was reserved, maybe before the peer's SETTINGS arrived; a change
                // since then reached only registered streams (section 6.9.2), so take the value in force now (no DATA yet).
                stream.SendWindow = new FlowControlWindow((int)Math.Min(_peer.InitialWindowSize, Http2Settings.MaxWindowSize));
                _streams.Add(stream.Id, stream);
            }
            int bound = Http2RequestEncoder.MaxBlockLength(head, authorityLength, fieldLinesLength) + pathLength;
            if (_headerBlock.Length < bound)
            {
                _headerBlock = new byte[Math.Max(bound, _headerBlock.Length * 2)];
            }
            bool sendLength = !head.Chunked && head.ContentLength >= 0;
            if (!Http2RequestEncoder.TryEncode(_encoder, head, secure ? "https"u8 : "http"u8, authority.AsSpan(0, authorityLength),
                fieldLines.AsSpan(0, fieldLinesLength), sendLength, teTrailers, _headerBlock, out int length, protocol,
                path is null ? head.Target : path.AsSpan(0, pathLength)))
            {
                // Cannot happen with the bound above; if it did, the encoder's table is ahead of the peer's.
                FailConnection(Http2ErrorCode.INTERNAL_ERROR);
                return false;
            }
            Http2FrameWriter.WriteHeaders(_output, stream.Id, _headerBlock.AsSpan(0, length), endStream, (int)_peer.MaxFrameSize);
            stream.EndSent = endStream;
            return await FlushWrittenAsync().ConfigureAwait(false);
        }
        catch (Exception)
        {
            FailConnection(Http2ErrorCode.NO_ERROR);
            return false;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>
    /// Sends request body bytes as DATA frames within both send windows and the peer's frame size (sections 5.2,
    /// 6.9), waiting for WINDOW_UPDATE when a window is closed. <paramref name="endStream"/> puts END_STREAM on the
    /// last frame (an empty DATA frame when <paramref name="data"/> is empty). False when the stream or connection died.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> SendDataAsync(Http2ClientStream stream, ReadOnlySequence<byte> data, bool endStream)
    {
        while (true)
        {
            int chunk;
            bool wait = false;
            lock (_sync)
            {
                if (_closed || stream.Aborted)
                {
                    return false;
                }
                int wanted = (int)Math.Min(data.Length, _peer.MaxFrameSize);
                chunk = 0;
                if (wanted > 0)
                {
                    int available = Math.Min(_sendWindow.Available, stream.SendWindow.Available);
                    if (available <= 0)
                    {
                        stream.PrepareWindowWait();
                        _windowWaiters.Add(stream);
                        wait = true;
                    }
                    else
                    {
                        chunk = Math.Min(wanted, available);
                        _sendWindow.Take(chunk);
                        stream.SendWindow.Take(chunk);
                    }
                }
            }
            if (wait)
            {
                if (!await stream.WindowWait.ConfigureAwait(false))
                {
                    return false;
                }
                continue;
            }
            bool last = endStream && chunk == data.Length;
            if (!await WriteDataAsync(stream, data.Slice(0, chunk), last).ConfigureAwait(false))
            {
                return false;
            }
            data = data.Slice(chunk);
            if (data.IsEmpty && (last || !endStream))
            {
                return true;
            }
        }
    }

    /// <summary>
    /// Ends the request with a trailing HEADERS frame (RFC 9113 section 8.1) carrying the field lines in
    /// <see cref="Http2ClientStream.RequestTrailers"/> (names lowercased, fields forbidden in trailers already dropped by
    /// the chunked decoder). False when the stream or connection died.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> SendTrailersAsync(Http2ClientStream stream)
    {
        await _writeGate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (IsClosed || stream.Aborted)
            {
                stream.RequestTrailersLength = 0;
                return false;
            }
            // A field costs at most its name and value plus a few octets of prefixes; each line spends 4 on ": " and CRLF.
            int bound = 2 * stream.RequestTrailersLength + 64;
            if (_headerBlock.Length < bound)
            {
                _headerBlock = new byte[Math.Max(bound, _headerBlock.Length * 2)];
            }
            int section = stream.RequestTrailersLength;
            stream.RequestTrailersLength = 0;
            if (!Http2RequestEncoder.TryEncodeTrailers(_encoder, stream.RequestTrailers.AsSpan(0, section), _headerBlock, out int length))
            {
                FailConnection(Http2ErrorCode.INTERNAL_ERROR);
                return false;
            }
            Http2FrameWriter.WriteHeaders(_output, stream.Id, _headerBlock.AsSpan(0, length), endStream: true, (int)_peer.MaxFrameSize);
            stream.EndSent = true;
            return await FlushWrittenAsync().ConfigureAwait(false);
        }
        catch (Exception)
        {
            FailConnection(Http2ErrorCode.NO_ERROR);
            return false;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>Flushes the frames just written (under the write gate); a completed or cancelled output fails the connection.</summary>
    private async ValueTask<bool> FlushWrittenAsync()
    {
        FlushResult flush = await _output.FlushAsync().ConfigureAwait(false);
        if (flush.IsCompleted || flush.IsCanceled)
        {
            FailConnection(Http2ErrorCode.NO_ERROR);
            return false;
        }
        return true;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> WriteDataAsync(Http2ClientStream stream, ReadOnlySequence<byte> data, bool endStream)
    {
        await _writeGate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (IsClosed || stream.Aborted)
            {
                return false;
            }
            Http2FrameWriter.WriteData(_output, stream.Id, data, endStream);
            if (endStream)
            {
                stream.EndSent = true;
            }
            return await FlushWrittenAsync().ConfigureAwait(false);
        }
        catch (Exception)
        {
            FailConnection(Http2ErrorCode.NO_ERROR);
            return false;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>
    /// The forwarder relayed <paramref name="length"/> response body bytes to its client: reopen the stream window
    /// once half of it is used (section 6.9), so the upstream sends as fast as the client reads and no faster.
    /// </summary>
    public ValueTask ConsumedAsync(Http2ClientStream stream, int length)
    {
        int increment = 0;
        lock (_sync)
        {
            stream.ReceiveUnacked += length;
            if (stream.ReceiveUnacked >= StreamWindow / 2 && !stream.EndReceived && !stream.Aborted && !_closed)
            {
                increment = stream.ReceiveUnacked;
                stream.ReceiveUnacked = 0;
                stream.ReceiveWindow.TryAdd(increment);
            }
        }
        return increment == 0 ? ValueTask.CompletedTask : WriteWindowUpdateAsync(stream.Id, increment);
    }

    private ValueTask WriteWindowUpdateAsync(int streamId, int increment) => WriteControlFrameAsync(Http2FrameType.WINDOW_UPDATE, streamId, (uint)increment);

    private ValueTask WriteResetAsync(int streamId, Http2ErrorCode code) => WriteControlFrameAsync(Http2FrameType.RST_STREAM, streamId, (uint)code);

    /// <summary>WINDOW_UPDATE or RST_STREAM for one stream, under the write gate; a write failure fails the connection.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteControlFrameAsync(Http2FrameType type, int streamId, uint value)
    {
        await _writeGate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (IsClosed)
            {
                return;
            }
            if (type == Http2FrameType.WINDOW_UPDATE)
            {
                Http2FrameWriter.WriteWindowUpdate(_output, streamId, (int)value);
            }
            else
            {
                Http2FrameWriter.WriteRstStream(_output, streamId, (Http2ErrorCode)value);
            }
            await _output.FlushAsync().ConfigureAwait(false);
        }
        catch (Exception)
        {
            FailConnection(Http2ErrorCode.NO_ERROR);
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>
    /// Ends the exchange and returns the stream to the pool. A stream not closed both ways is reset with CANCEL
    /// (section 8.1: a client that abandons a response, or a server that answered before the request ended).
    /// </summary>
    public ValueTask ReleaseAsync(Http2ClientStream stream)
    {
        try
        {
            stream.ResponseReader.Complete();
        }
        catch (Exception)
        {
        }
        int resetId = 0;
        bool closeNow;
        bool recycle;
        lock (stream)
        {
            stream.Released = true;
            // The read loop may be flushing or completing the pipe outside its lock (the forwarder can be running
            // inline from it right now): it then recycles the stream when it is done.
            recycle = !stream.Delivering;
            stream.RecyclePending = !recycle;
            if (recycle && !stream.WriterCompleted)
            {
                stream.WriterCompleted = true;
                stream.ResponseWriter.Complete(); // the reader is complete: no continuation runs here
            }
            lock (_sync)
            {
                if (stream.Id != 0 && _streams.Remove(stream.Id) && !(stream.EndSent && stream.EndReceived) && !stream.Aborted && !_closed)
                {
                    resetId = stream.Id;
                }
                if (stream.WaitingForWindow)
                {
                    _windowWaiters.Remove(stream);
                    stream.WaitingForWindow = false;
                }
                if (recycle)
                {
                    stream.ResetPipe();
                    _free.Push(stream);
                }
                _active--;
                IdleSince = Environment.TickCount64;
                closeNow = _active == 0 && (_goingAway || _pool.Retired) && !_closed;
            }
        }
        _pool.StreamReleased(this);
        if (closeNow)
        {
            FailConnection(Http2ErrorCode.NO_ERROR);
        }
        return resetId == 0 ? ValueTask.CompletedTask : WriteResetAsync(resetId, Http2ErrorCode.CANCEL);
    }

    /// <summary>Resets a live stream from our side (the client's request body failed): the response side ends aborted.</summary>
    public ValueTask CancelAsync(Http2ClientStream stream)
    {
        int id;
        lock (stream)
        {
            if (stream.Released)
            {
                return ValueTask.CompletedTask;
            }
            id = stream.Id;
            AbortStream(stream, Http2ErrorCode.CANCEL, refused: false);
        }
        CompleteResponse(stream);
        return id == 0 ? ValueTask.CompletedTask : WriteResetAsync(id, Http2ErrorCode.CANCEL);
    }

    /// <summary>Idle eviction, reload, shutdown: closes the connection (streams in flight end aborted).</summary>
    public void Close() => FailConnection(Http2ErrorCode.NO_ERROR);

    // ---- read loop -------------------------------------------------------------------------------

    private async Task ReadLoopAsync()
    {
        PipeReader input = _transport.Input;
        try
        {
            while (true)
            {
                if (!input.TryRead(out ReadResult result))
                {
                    // Wait for bytes with a zero-byte read on the stream itself (allocation-free: the socket's cached
                    // awaitable), so the pipe's read below completes synchronously. A pending StreamPipeReader read
                    // suspends in a pooled box, and this loop keeps one pending all the time, beside the client
                    // connections' pending reads of the same box type, all sharing the pooling builder's small
                    // per-thread cache (GC allocation sampling, one warm h2c connection: those boxes 14 -> 10 B per
                    // request; the rest is a client read rented here, where the forwarder runs inline, and returned
                    // on the client's thread).
                    await _transport.WaitForDataAsync().ConfigureAwait(false);
                    result = await input.ReadAsync().ConfigureAwait(false);
                }
                ReadOnlySequence<byte> buffer = result.Buffer;
                Http2FrameError error = Http2FrameError.None;
                bool framed = false;
                while (true)
                {
                    Http2ReadStatus status = Http2FrameReader.TryReadFrame(buffer, OurMaxFrameSize, out Http2FrameHeader header,
                        out ReadOnlySequence<byte> payload, out SequencePosition consumed, out error);
                    if (status != Http2ReadStatus.Done)
                    {
                        break;
                    }
                    framed = true;
                    error = OnFrame(header, payload);
                    buffer = buffer.Slice(consumed);
                    if (error.IsConnectionError)
                    {
                        break;
                    }
                }
                input.AdvanceTo(buffer.Start, buffer.End);
                if (buffer.IsEmpty)
                {
                    Volatile.Write(ref _partialFrameSince, 0);
                }
                else if (framed || Volatile.Read(ref _partialFrameSince) == 0)
                {
                    Volatile.Write(ref _partialFrameSince, Stopwatch.GetTimestamp());
                }
                if (error.IsConnectionError)
                {
                    lock (_sync)
                    {
                        _goAwayDue = error.Code;
                    }
                }
                if (!await WriteDueAsync().ConfigureAwait(false) || error.IsConnectionError || result.IsCompleted || result.IsCanceled)
                {
                    break;
                }
                WakeWindowWaiters();
            }
        }
        catch (Exception)
        {
        }
        FailConnection(Http2ErrorCode.NO_ERROR);
        try
        {
            input.Complete();
        }
        catch (Exception)
        {
        }
    }

    /// <summary>One frame (RFC 9113 section 6); returns a connection error to end with, or None.</summary>
    private Http2FrameError OnFrame(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        if (!_prefaceReceived)
        {
            // Section 3.4: the server's preface is a SETTINGS frame (not an acknowledgement) and comes first; anything
            // else is a connection error PROTOCOL_ERROR. A peer that skips it may not be speaking HTTP/2 at all.
            if (header.Type != Http2FrameType.SETTINGS || header.HasFlag(Http2Flags.ACK))
            {
                return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
            }
            _prefaceReceived = true;
        }
        if (_continuationStream != 0 && (header.Type != Http2FrameType.CONTINUATION || header.StreamId != _continuationStream))
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR); // section 6.10
        }
        switch (header.Type)
        {
            case Http2FrameType.DATA:
                return OnData(header, payload);
            case Http2FrameType.HEADERS:
            {
                Http2FrameError error = Http2FrameReader.ReadHeaders(header, payload, out ReadOnlySequence<byte> fragment);
                if (error.IsConnectionError)
                {
                    return error;
                }
                return OnHeaderBlockStart(header, fragment);
            }
            case Http2FrameType.CONTINUATION:
            {
                if (_continuationStream == 0)
                {
                    return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
                }
                Http2FrameReader.ReadContinuation(header, payload, out ReadOnlySequence<byte> fragment);
                return OnHeaderFragment(fragment, header.HasFlag(Http2Flags.END_HEADERS));
            }
            case Http2FrameType.RST_STREAM:
            {
                Http2FrameError error = Http2FrameReader.ReadRstStream(header, payload, out Http2ErrorCode code);
                if (error.IsError)
                {
                    return error;
                }
                if (Find(header.StreamId) is { } stream)
                {
                    bool reset = false;
                    lock (stream)
                    {
                        if (!stream.Released && stream.Id == header.StreamId)
                        {
                            // REFUSED_STREAM: not processed at all, safe to retry (section 8.7).
                            AbortStream(stream, code, refused: code == Http2ErrorCode.REFUSED_STREAM);
                            reset = true;
                        }
                    }
                    if (reset)
                    {
                        CompleteResponse(stream);
                    }
                }
                return Http2FrameError.None;
            }
            case Http2FrameType.SETTINGS:
                return OnSettings(header, payload);
            case Http2FrameType.PUSH_PROMISE:
                return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR); // we sent ENABLE_PUSH 0 (section 8.4)
            case Http2FrameType.PING:
            {
                Http2FrameError error = Http2FrameReader.ReadPing(header, payload, out ulong opaque);
                if (error.IsError)
                {
                    return error;
                }
                if (!header.HasFlag(Http2Flags.ACK))
                {
                    _pingDue = opaque;
                    _pingAckDue = true;
                }
                return Http2FrameError.None;
            }
            case Http2FrameType.GOAWAY:
            {
                Http2FrameError error = Http2FrameReader.ReadGoAway(header, payload, out int lastStreamId, out Http2ErrorCode code, out _);
                if (error.IsError)
                {
                    return error;
                }
                OnGoAway(lastStreamId, code);
                return Http2FrameError.None;
            }
            case Http2FrameType.WINDOW_UPDATE:
                return OnWindowUpdate(header, payload);
            default:
                return Http2FrameError.None; // PRIORITY and unknown types are ignored (sections 5.3.2, 5.5)
        }
    }

    private Http2FrameError OnData(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadData(header, payload, out ReadOnlySequence<byte> data);
        if (error.IsError)
        {
            return error;
        }
        // The whole frame counts against the connection window (section 6.9.1); we return it at once, as the
        // stream windows bound what can be buffered.
        if (_receiveWindow.TryConsume(header.Length) != Http2ErrorCode.NO_ERROR)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FLOW_CONTROL_ERROR);
        }
        _receiveUnacked += header.Length;
        if (_receiveUnacked >= ConnectionWindow / 2)
        {
            _receiveWindow.TryAdd(_receiveUnacked);
            _connectionUpdateDue += _receiveUnacked;
            _receiveUnacked = 0;
        }
        Http2ClientStream? stream = Find(header.StreamId);
        if (stream is null)
        {
            return header.StreamId >= _nextStreamId
                ? Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR) // idle stream (section 5.1)
                : Http2FrameError.None;                                     // a stream we reset: ignored (section 5.4.2)
        }
        bool end = header.HasFlag(Http2Flags.END_STREAM);
        bool flush = false;
        bool aborted = false;
        lock (stream)
        {
            if (stream.Released || stream.Id != header.StreamId || stream.WriterCompleted || stream.Delivering)
            {
                return Http2FrameError.None;
            }
            Http2ErrorCode code;
            lock (_sync)
            {
                code = stream.ReceiveWindow.TryConsume(header.Length);
                // Padding is never consumed by the forwarder: return it to the window with the next update.
                stream.ReceiveUnacked += header.Length - (int)data.Length;
            }
            if (code != Http2ErrorCode.NO_ERROR || !stream.HeadReady)
            {
                // Above the window, or DATA before the response head (section 8.1): a malformed stream.
                AbortStream(stream, code != Http2ErrorCode.NO_ERROR ? code : Http2ErrorCode.PROTOCOL_ERROR, refused: false);
                _ = WriteResetAsync(header.StreamId, code != Http2ErrorCode.NO_ERROR ? code : Http2ErrorCode.PROTOCOL_ERROR).AsTask();
                aborted = true;
            }
            else if (!data.IsEmpty)
            {
                foreach (ReadOnlyMemory<byte> segment in data)
                {
                    stream.ResponseWriter.Write(segment.Span);
                }
                if (!end)
                {
                    stream.Delivering = true;
                    flush = true;
                }
            }
            if (end && !aborted)
            {
                stream.EndReceived = true;
            }
        }
        if (aborted)
        {
            TakeNoNewStreams();
        }
        if (flush)
        {
            // No pause threshold: completes at once, resuming the forwarder inline on this thread, outside our locks
            // (Delivering keeps a release in the meantime from recycling the pipe under us).
            ValueTask<FlushResult> flushing = stream.ResponseWriter.FlushAsync();
            if (!flushing.IsCompleted)
            {
                _ = flushing.AsTask();
            }
            EndDelivery(stream);
        }
        else if (end || aborted)
        {
            CompleteResponse(stream);
        }
        return Http2FrameError.None;
    }

    private Http2FrameError OnHeaderBlockStart(in Http2FrameHeader header, in ReadOnlySequence<byte> fragment)
    {
        Http2ClientStream? stream = Find(header.StreamId);
        if (stream is null && header.StreamId >= _nextStreamId)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        _continuationStream = header.StreamId;
        _continuationTarget = stream;
        _continuationEndStream = header.HasFlag(Http2Flags.END_STREAM);
        if (stream is not null)
        {
            lock (stream)
            {
                if (stream.Released || stream.Id != header.StreamId)
                {
                    _continuationTarget = null;
                }
                else
                {
                    _continuationTrailers = stream.HeadReady;
                    ResponseHead target = _continuationTrailers ? stream.Trailers : stream.Head;
                    if (!_continuationTrailers)
                    {
                        target.Reset(); // a final head after 1xx interim heads replaces them
                    }
                    _continuationSink = new ResponseFieldSink(target, _continuationTrailers);
                }
            }
        }
        return OnHeaderFragment(fragment, header.HasFlag(Http2Flags.END_HEADERS));
    }

    /// <summary>Decodes a fragment of the current header block; at END_HEADERS, hands the head or trailers to the stream.</summary>
    private Http2FrameError OnHeaderFragment(in ReadOnlySequence<byte> fragment, bool endHeaders)
    {
        Http2ClientStream? target = _continuationTarget;
        Http2ClientStream? stream = target;
        HPackError decoded = HPackError.None;
        if (target is null)
        {
            var discard = new DiscardFieldSink();
            decoded = Decode(fragment, endHeaders, ref discard);
        }
        else
        {
            lock (target)
            {
                if (target.Released)
                {
                    var discard = new DiscardFieldSink();
                    decoded = Decode(fragment, endHeaders, ref discard);
                    stream = null;
                }
                else
                {
                    decoded = Decode(fragment, endHeaders, ref _continuationSink);
                }
            }
        }
        if (decoded != HPackError.None)
        {
            return Http2FrameError.Connection(decoded.ToHttp2ErrorCode());
        }
        if (!endHeaders)
        {
            return Http2FrameError.None;
        }
        _continuationStream = 0;
        _continuationTarget = null;
        if (stream is null)
        {
            return Http2FrameError.None;
        }
        bool wake = false;
        bool end = false;
        bool retire = false;
        lock (stream)
        {
            if (stream.Released || stream.WriterCompleted || stream.Delivering)
            {
                return Http2FrameError.None;
            }
            bool trailers = _continuationTrailers;
            ResponseFieldSink sink = _continuationSink;
            // Section 8.1: a 1xx head never ends the stream; section 8.6: 101 does not exist in HTTP/2.
            bool malformed = sink.Malformed || (!trailers && !sink.StatusSeen) || (trailers && !_continuationEndStream)
                || (!trailers && _continuationEndStream && stream.Head.StatusCode < 200) || (!trailers && stream.Head.StatusCode == 101);
            if (malformed)
            {
                AbortStream(stream, Http2ErrorCode.PROTOCOL_ERROR, refused: false);
                _ = WriteResetAsync(stream.Id, Http2ErrorCode.PROTOCOL_ERROR).AsTask();
                end = true;
                retire = true;
            }
            else if (trailers)
            {
                stream.HasTrailers = true;
                stream.EndReceived = end = true;
            }
            else if (stream.Head.StatusCode >= 200)
            {
                stream.MarkHeadReady();
                if (_continuationEndStream)
                {
                    stream.EndReceived = end = true; // completing the pipe wakes the forwarder
                }
                else
                {
                    wake = true;
                    stream.Delivering = true;
                }
            }
            else
            {
                // A 1xx interim head (RFC 9110 section 15.2): kept as HTTP/1.1 bytes for the forwarder to relay before
                // the final head, which follows on the same stream (section 8.1) and reuses Head. Past the cap it is dropped.
                wake = stream.AddInterim();
                stream.Delivering = wake;
            }
        }
        if (retire)
        {
            TakeNoNewStreams();
        }
        if (end)
        {
            CompleteResponse(stream);
        }
        else if (wake)
        {
            stream.ResponseReader.CancelPendingRead();
            EndDelivery(stream);
        }
        return Http2FrameError.None;
    }

    private HPackError Decode<TSink>(in ReadOnlySequence<byte> fragment, bool endHeaders, ref TSink sink) where TSink : IHeaderSink
    {
        if (fragment.IsSingleSegment)
        {
            return _decoder.Decode(fragment.FirstSpan, endHeaders, ref sink);
        }
        HPackError error = HPackError.None;
        SequencePosition position = fragment.Start;
        long left = fragment.Length;
        while (fragment.TryGet(ref position, out ReadOnlyMemory<byte> segment))
        {
            left -= segment.Length;
            error = _decoder.Decode(segment.Span, endHeaders && left == 0, ref sink);
            if (error != HPackError.None)
            {
                return error;
            }
        }
        return error;
    }

    private Http2FrameError OnSettings(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        if (header.HasFlag(Http2Flags.ACK))
        {
            return Http2FrameReader.ReadSettings(header, payload, ref _peer);
        }
        Http2Settings before = _peer;
        Http2Settings next = _peer;
        Http2FrameError error = Http2FrameReader.ReadSettings(header, payload, ref next);
        if (error.IsError)
        {
            return error;
        }
        lock (_sync)
        {
            _peer = next;
            _maxStreams = (int)Math.Min((uint)_pool.MaxStreamsCap, next.MaxConcurrentStreams);
            if (next.InitialWindowSize != before.InitialWindowSize)
            {
                // Section 6.9.2: every open stream's send window moves by the difference.
                foreach (Http2ClientStream stream in _streams.Values)
                {
                    if (stream.SendWindow.TryApplyInitialSizeChange(before.InitialWindowSize, next.InitialWindowSize) != Http2ErrorCode.NO_ERROR)
                    {
                        return Http2FrameError.Connection(Http2ErrorCode.FLOW_CONTROL_ERROR);
                    }
                }
            }
        }
        if (next.HeaderTableSize != before.HeaderTableSize)
        {
            // The encoder is used under the write gate; the change is announced in the next block (RFC 7541 section 4.2).
            _pendingTableSize = next.HeaderTableSize;
        }
        _settingsAckDue = true;
        _peerSettingsSeen.TrySetResult();
        return Http2FrameError.None;
    }

    private uint _pendingTableSize = uint.MaxValue;

    private Http2FrameError OnWindowUpdate(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadWindowUpdate(header, payload, out int increment);
        if (error.IsConnectionError)
        {
            return error;
        }
        lock (_sync)
        {
            if (header.StreamId == 0)
            {
                if (_sendWindow.TryAdd(increment) != Http2ErrorCode.NO_ERROR)
                {
                    return Http2FrameError.Connection(Http2ErrorCode.FLOW_CONTROL_ERROR);
                }
                return Http2FrameError.None;
            }
            if (!_streams.TryGetValue(header.StreamId, out Http2ClientStream? stream) || error.IsError)
            {
                return Http2FrameError.None;
            }
            if (stream.SendWindow.TryAdd(increment) != Http2ErrorCode.NO_ERROR)
            {
                stream.ResetCode = Http2ErrorCode.FLOW_CONTROL_ERROR;
            }
        }
        return Http2FrameError.None;
    }

    /// <summary>
    /// After a malformed response (section 8.1.1: a stream error): the peer's framing or encoding cannot be trusted any
    /// more (a frame declared longer than sent, say, makes what follows unreadable, and the next stream would wait on
    /// it until its timeout). The connection takes no new stream, the streams in flight finish, and it closes when the
    /// last one is released, as after a GOAWAY. Section 5.4 allows treating a stream error as a connection error; this
    /// is the gentler form.
    /// </summary>
    private void TakeNoNewStreams()
    {
        _pool.ConnectionGoingAway(this);
        lock (_sync)
        {
            _goingAway = true;
        }
    }

    private void OnGoAway(int lastStreamId, Http2ErrorCode code)
    {
        ProxyLog.Write(ProxyLogLevel.Debug, "upstream_h2_goaway", ("destination", _pool.Destination.Address),
            ("last_stream_id", lastStreamId), ("code", code.ToString()));
        _pool.ConnectionGoingAway(this);
        _wake.Clear();
        lock (_sync)
        {
            _goingAway = true;
            _goAwayLastStreamId = Math.Min(_goAwayLastStreamId, lastStreamId);
            foreach (Http2ClientStream stream in _streams.Values)
            {
                if (stream.Id > lastStreamId)
                {
                    _wake.Add(stream);
                }
            }
        }
        // Streams above the last id were never processed: they end "refused" and are retried elsewhere (section 6.8).
        foreach (Http2ClientStream stream in _wake)
        {
            bool refused = false;
            lock (stream)
            {
                if (!stream.Released)
                {
                    AbortStream(stream, Http2ErrorCode.REFUSED_STREAM, refused: true);
                    refused = true;
                }
            }
            if (refused)
            {
                CompleteResponse(stream);
            }
        }
        _wake.Clear();
        bool idle;
        lock (_sync)
        {
            idle = _active == 0;
        }
        if (idle)
        {
            _goAwayDue = Http2ErrorCode.NO_ERROR;
        }
    }

    /// <summary>Writes what the read loop owes the peer: SETTINGS ack, PING ack, connection WINDOW_UPDATE, GOAWAY.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> WriteDueAsync()
    {
        if (!_settingsAckDue && !_pingAckDue && _connectionUpdateDue == 0 && _goAwayDue == (Http2ErrorCode)uint.MaxValue)
        {
            return true;
        }
        await _writeGate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (IsClosed)
            {
                return false;
            }
            if (_pendingTableSize != uint.MaxValue)
            {
                _encoder.SetPeerHeaderTableSize(_pendingTableSize);
                _pendingTableSize = uint.MaxValue;
            }
            if (_settingsAckDue)
            {
                Http2FrameWriter.WriteSettingsAck(_output);
                _settingsAckDue = false;
            }
            if (_pingAckDue)
            {
                Http2FrameWriter.WritePing(_output, _pingDue, ack: true);
                _pingAckDue = false;
            }
            if (_connectionUpdateDue > 0)
            {
                Http2FrameWriter.WriteWindowUpdate(_output, 0, _connectionUpdateDue);
                _connectionUpdateDue = 0;
            }
            bool goAway = _goAwayDue != (Http2ErrorCode)uint.MaxValue;
            if (goAway)
            {
                Http2FrameWriter.WriteGoAway(_output, 0, _goAwayDue, default);
            }
            FlushResult flush = await _output.FlushAsync().ConfigureAwait(false);
            return !goAway && !flush.IsCompleted && !flush.IsCanceled;
        }
        catch (Exception)
        {
            return false;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    private void WakeWindowWaiters()
    {
        _wake.Clear();
        lock (_sync)
        {
            if (_windowWaiters.Count == 0)
            {
                return;
            }
            for (int i = _windowWaiters.Count - 1; i >= 0; i--)
            {
                Http2ClientStream stream = _windowWaiters[i];
                if (_closed || stream.Aborted || (_sendWindow.Available > 0 && stream.SendWindow.Available > 0))
                {
                    _windowWaiters.RemoveAt(i);
                    stream.WaitingForWindow = false;
                    _wake.Add(stream);
                }
            }
        }
        foreach (Http2ClientStream stream in _wake)
        {
            stream.SignalWindow(!stream.Aborted && !IsClosed);
        }
        _wake.Clear();
    }

    private Http2ClientStream? Find(int streamId)
    {
        lock (_sync)
        {
            return _streams.TryGetValue(streamId, out Http2ClientStream? stream) ? stream : null;
        }
    }

    /// <summary>
    /// Completes the stream's response pipe (END_STREAM, reset, connection loss). Called with none of our locks held:
    /// completing wakes the forwarder inline, and it runs until its next asynchronous wait (possibly through its whole
    /// response and into the client's next request). When another thread is already flushing the pipe, that thread
    /// completes it when done (<see cref="EndDelivery"/>); pipe writer calls never overlap.
    /// </summary>
    private void CompleteResponse(Http2ClientStream stream)
    {
        lock (stream)
        {
            if (stream.WriterCompleted)
            {
                return;
            }
            if (stream.Delivering)
            {
                stream.CompletePending = true;
                return;
            }
            stream.WriterCompleted = true;
            if (stream.Released)
            {
                stream.ResponseWriter.Complete(); // the reader is complete: nothing runs inline
                return;
            }
            stream.Delivering = true;
        }
        stream.ResponseWriter.Complete();
        EndDelivery(stream);
    }

    /// <summary>
    /// After a flush, a completion or a wake-up made outside the stream's lock: completes the pipe if that was asked
    /// meanwhile, and recycles the stream if the forwarder released it meanwhile.
    /// </summary>
    private void EndDelivery(Http2ClientStream stream)
    {
        while (true)
        {
            bool complete = false;
            bool recycle = false;
            lock (stream)
            {
                if (stream.Released)
                {
                    if (!stream.WriterCompleted)
                    {
                        stream.WriterCompleted = true;
                        stream.ResponseWriter.Complete(); // the reader is complete: nothing runs inline
                    }
                    stream.Delivering = stream.CompletePending = false;
                    recycle = stream.RecyclePending;
                    stream.RecyclePending = false;
                }
                else if (stream.CompletePending && !stream.WriterCompleted)
                {
                    stream.CompletePending = false;
                    stream.WriterCompleted = true;
                    complete = true; // still Delivering
                }
                else
                {
                    stream.Delivering = stream.CompletePending = false;
                }
            }
            if (recycle)
            {
                lock (_sync)
                {
                    stream.ResetPipe();
                    _free.Push(stream);
                }
                return;
            }
            if (!complete)
            {
                return;
            }
            stream.ResponseWriter.Complete();
        }
    }

    /// <summary>
    /// Marks a stream ended abnormally and fails its pump's window wait. Caller holds the stream's lock, and calls
    /// <see cref="CompleteResponse"/> after releasing it so the forwarder sees the end.
    /// </summary>
    private void AbortStream(Http2ClientStream stream, Http2ErrorCode code, bool refused)
    {
        bool signal;
        lock (_sync)
        {
            if (stream.Aborted)
            {
                return;
            }
            stream.Aborted = true;
            stream.Refused = refused && !stream.HeadReady;
            stream.ResetCode = code;
            _streams.Remove(stream.Id);
            signal = stream.WaitingForWindow;
            if (signal)
            {
                _windowWaiters.Remove(stream);
                stream.WaitingForWindow = false;
            }
        }
        if (signal)
        {
            stream.SignalWindow(false);
        }
    }

    /// <summary>
    /// A stream of this connection waited <paramref name="stall"/> for its response and got nothing. When the read loop
    /// has held the same incomplete frame for about as long, no stream here can receive anything: the peer's framing is
    /// broken (a length longer than what it sent: what follows would be read as that frame's payload) or it stalled
    /// mid-frame. The connection fails, so new streams go to another and streams without a response byte may go again.
    /// A slow stream on a connection whose frames keep completing leaves it alone. Half the stall is enough: the frame
    /// that stalled may have started just after the stream began to wait (its head came in the same read).
    /// </summary>
    internal void OnStreamTimedOut(TimeSpan stall)
    {
        long since = Volatile.Read(ref _partialFrameSince);
        if (since != 0 && Stopwatch.GetElapsedTime(since) >= stall / 2)
        {
            FailConnection(Http2ErrorCode.PROTOCOL_ERROR);
        }
    }

    /// <summary>Closes the connection: every live stream ends aborted, the socket closes, the pool forgets it. Idempotent.</summary>
    private void FailConnection(Http2ErrorCode code)
    {
        _wake.Clear();
        List<Http2ClientStream> streams;
        lock (_sync)
        {
            if (_closed)
            {
                return;
            }
            _closed = true;
            streams = [.. _streams.Values];
        }
        foreach (Http2ClientStream stream in streams)
        {
            bool lost = false;
            lock (stream)
            {
                if (!stream.Released)
                {
                    stream.ConnectionLost = !stream.Aborted && !stream.HeadReady && !stream.HasInterim;
                    AbortStream(stream, code == Http2ErrorCode.NO_ERROR ? Http2ErrorCode.CANCEL : code, refused: false);
                    lost = true;
                }
            }
            if (lost)
            {
                CompleteResponse(stream);
            }
        }
        _peerSettingsSeen.TrySetResult();
        _pool.ConnectionClosed(this);
        _transport.Abort();
        _ = DisposeTransportAsync();
    }

    /// <summary>Disposes the transport once no writer holds the output (a PipeWriter is not safe to complete under a write).</summary>
    private async Task DisposeTransportAsync()
    {
        await _writeGate.WaitAsync().ConfigureAwait(false);
        _transport.Dispose();
    }
}
