using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Proxy.Diagnostics;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Http2.FlowControl;
using Proxy.Transport;
using Proxy.Transport.Epoll;

namespace Proxy.Http2.Server;

/// <summary>
/// One request stream (RFC 9113 section 5.1), bridged onto the HTTP/1.1 pipeline: the connection's read loop
/// writes the synthesised request head and the DATA payloads into <see cref="RequestPipe"/> (a request that ended
/// with its HEADERS is served from a buffer of the stream's own instead, see <see cref="Http2StreamTransport.ServeFixed"/>); an
/// <see cref="Http1ServerConnection"/> runs the request over <see cref="Transport"/> exactly as for an HTTP/1.1
/// client (routing, filters, forwarding, limits, metrics); this class reads the HTTP/1.1 response it writes into
/// <see cref="ResponsePipe"/> and sends it as HEADERS and DATA within the client's windows. When the window is
/// closed the pump stops reading, the response pipe fills to its pause threshold, and the HTTP/1.1 side stops
/// reading the upstream: a slow client never makes the proxy buffer more than the pipe.
/// <para>Concurrency: the read loop owns the request side (under <see cref="RequestLock"/> against the close
/// path) and runs a new stream inline up to its first wait, after the read pass that started it; the pump then
/// resumes through the response pipe's reader scheduler, <see cref="EpollEngine.AfterBatch"/>: after the engine's
/// pass on an engine thread, else on the thread pool, never inline (a cancel from the read loop or an abort runs under
/// a lock); windows and frame writes are under the connection's lock.</para>
/// </summary>
internal sealed class Http2Stream
{
    // Request side in 4 KiB blocks, as an HTTP/1.1 client connection reads: a stream's synthesised head is a few hundred
    // bytes, and a 16 KiB block per open stream was most of the memory an h2load -c16 -m10 run held (160 streams).
    private static readonly PipeOptions s_requestPipeOptions = new(
        pool: BlockMemoryPool.Small, pauseWriterThreshold: 0, resumeWriterThreshold: 0,
        minimumSegmentSize: BlockMemoryPool.Small.BlockSize, useSynchronizationContext: false);
    private static readonly PipeOptions s_responsePipeOptions = new(
        pool: BlockMemoryPool.Large, readerScheduler: EpollEngine.AfterBatch,
        pauseWriterThreshold: 64 * 1024, resumeWriterThreshold: 32 * 1024,
        minimumSegmentSize: BlockMemoryPool.Large.BlockSize, useSynchronizationContext: false);

    private const int MaxResponseHeadBytes = 64 * 1024;

    /// <summary>
    /// The largest body-less request served from <see cref="_fixedRequest"/> rather than the request pipe: the buffer
    /// lives as long as the pooled stream, so an outsized head (big cookies) goes through the pipe's pooled blocks.
    /// </summary>
    private const int MaxFixedRequestBytes = 4096;

    private readonly Http2ServerConnection _connection;
    private readonly ResponseHead _responseHead = new();
    private ChunkedDecoder _chunked;
    /// <summary>Created by the first stream, reset and reused by the next ones (see <see cref="RunLoopAsync"/>).</summary>
    private Http1ServerConnection? _bridgeInstance;
    private volatile Http1ServerConnection? _bridge;
    private readonly ReusableValueTaskSource<bool> _next = new();
    private bool _loopStarted;
    /// <summary>The Sec-WebSocket-Key of the bridged upgrade (an extended CONNECT for websocket), to check the 101's accept.</summary>
    private readonly byte[] _webSocketKey = new byte[Http2RequestHead.WebSocketKeyLength];
    private bool _isWebSocket;
    /// <summary>A request that ended with its HEADERS, as HTTP/1.1 (see <see cref="Http2StreamTransport.ServeFixed"/>); reused.</summary>
    private readonly ArrayBufferWriter<byte> _fixedRequest = new(512);

    public Http2Stream(Http2ServerConnection connection, ClientTransport transport)
    {
        _connection = connection;
        Transport = new Http2StreamTransport(this, transport);
    }

    public int Id { get; private set; }
    public Pipe RequestPipe { get; } = new(s_requestPipeOptions);
    public Pipe ResponsePipe { get; } = new(s_responsePipeOptions);
    public Http2StreamTransport Transport { get; }
    public Http2Signal Signal { get; } = new();
    public Lock RequestLock { get; } = new();

    /// <summary>Send window (client's SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_UPDATEs); under the connection lock.</summary>
    public FlowControlWindow SendWindow;

    // ---- request side (read loop, under RequestLock for the pipe) ----

    /// <summary>Receive window left for this stream's DATA; the read loop subtracts, the bridge's consumption adds.</summary>
    public int ReceiveWindow;
    public bool RequestChunked;
    public long DeclaredLength;
    /// <summary>DATA octets written into <see cref="RequestPipe"/> as body: at most max_body_bytes + 1 (tunnels aside).</summary>
    public long ReceivedBody;
    /// <summary>DATA octets dropped past max_body_bytes + 1 while the bridge answers 413 (read loop only); counted for content-length.</summary>
    public long DroppedBody;
    /// <summary>END_STREAM received (half-closed remote).</summary>
    public bool RequestEnded;
    /// <summary>The request writer was completed (END_STREAM, reset, or the stream finished).</summary>
    public bool RequestClosed;
    public bool IsHead;
    /// <summary>
    /// An extended CONNECT (RFC 8441): the request is an HTTP/1.1 upgrade, its DATA are tunnel bytes (not a body, so
    /// no body size limit), and a 101 from the bridge becomes <c>:status 200</c> followed by the tunnel.
    /// </summary>
    public bool IsTunnel;
    public int HeadBytes;
    private long _credited;
    private int _pendingCredit;
    /// <summary>Between <see cref="MarkFinished"/> and the next <see cref="Start"/>; under <see cref="RequestLock"/>.</summary>
    private bool _finished;

    // ---- state shared with the connection (heartbeat, read loop) ----

    /// <summary>Tick count since the pump has been waiting for window or output room; 0 when not waiting.</summary>
    public long StallSince;
    public volatile bool StallTimedOut;
    /// <summary>The client reset the stream (no RST_STREAM goes back).</summary>
    public volatile bool ResetByPeer;
    /// <summary>The connection is closing or the bridge gave up: the pump stops.</summary>
    public volatile bool Aborted;
    /// <summary>The response ended with END_STREAM.</summary>
    public bool ResponseComplete;
    /// <summary>
    /// Started by the current read pass and not run yet (read loop only): a reset now releases the stream at once and
    /// it never runs (Http2ServerConnection.ReleaseBeforeRun).
    /// </summary>
    public bool AwaitingRun;

    public void Start(int id, Http2RequestHead head, bool endStream, int sendWindow, int receiveWindow)
    {
        Id = id;
        _finished = false;
        SendWindow = new FlowControlWindow(0);
        SendWindow.TryApplyInitialSizeChange(0, (uint)sendWindow);
        ReceiveWindow = receiveWindow;
        RequestChunked = head.Chunked;
        DeclaredLength = head.ContentLength;
        IsHead = head.IsHead;
        IsTunnel = head.IsExtendedConnect;
        _isWebSocket = head.IsWebSocket;
        if (_isWebSocket)
        {
            head.WebSocketKey.CopyTo(_webSocketKey);
        }
        ReceivedBody = 0;
        DroppedBody = 0;
        RequestEnded = endStream;
        RequestClosed = false;
        _credited = 0;
        _pendingCredit = 0;
        StallSince = 0;
        StallTimedOut = ResetByPeer = Aborted = false;
        ResponseComplete = false;
        Transport.Consumed = 0;
        Signal.Reset();
        _chunked.Reset();

        HeadBytes = head.Http1Length;
        if (endStream && HeadBytes <= MaxFixedRequestBytes)
        {
            // No body can follow: the bridge reads the head from this buffer, and the request pipe stays untouched.
            _fixedRequest.ResetWrittenCount();
            head.WriteTo(_fixedRequest);
            Transport.ServeFixed(_fixedRequest.WrittenMemory);
            RequestClosed = true;
            return;
        }
        Transport.ServePipe();
        PipeWriter writer = RequestPipe.Writer;
        head.WriteTo(writer);
        if (endStream)
        {
            writer.Complete();
            RequestClosed = true;
        }
        else
        {
            FlushRequest(writer);
        }
    }

    /// <summary>
    /// Entry, on the connection's read loop once the read pass that started the stream is over (see
    /// Http2ServerConnection.RunStartedStreams): runs the bridged exchange and the response pump. The first stream starts
    /// <see cref="RunLoopAsync"/>; the streams that reuse this pooled object resume it, so a stream allocates no
    /// state machine (one async method per stream would rent a box per request, as the forwarder's loop explains).
    /// </summary>
    public void Execute()
    {
        if (!_loopStarted)
        {
            // Set before the loop runs: its first stream can end, and the object be pooled, started again and handed
            // to another thread, before RunLoopAsync returns here (a direct answer runs to the end synchronously).
            // Testing the returned task instead would let that second Execute start a second loop on this object,
            // and the two loops' awaits on one _next would break it (InvalidOperationException in OnCompleted).
            _loopStarted = true;
            _ = RunLoopAsync();
        }
        else
        {
            _next.SetResult(true);
        }
    }

    /// <summary>The bridge of the stream running now (null between streams), for <see cref="Abort"/> and the heartbeat.</summary>
    public Http1ServerConnection? Bridge => _bridge;

    /// <summary>
    /// One iteration per stream this object carries. Never ends while the stream object is pooled; a stream that is
    /// not pooled again (connection closing, pipes not reusable) leaves its loop waiting, collected with it.
    /// </summary>
    private async Task RunLoopAsync()
    {
        while (true)
        {
            ValueTask<bool> bridge;
            bool ran = true;
            try
            {
                // The bridge and what it owns (forwarder and its loop, pumps) live as long as this pooled stream, as
                // long as each exchange ends cleanly (see the reuse decision below).
                Http1ServerConnection instance = _bridgeInstance ??= new Http1ServerConnection(_connection.Runtime, _connection.Listener, Transport) { Origin = _connection.Origin };
                // Published under the lock Abort takes: a reset either finds the bridge to abort or is seen here, and a
                // stream reset before its bridge ran sends nothing upstream (the read loop skips most of those itself;
                // this covers a reset that came while this loop was resumed on another thread).
                lock (RequestLock)
                {
                    ran = !Aborted;
                    if (ran)
                    {
                        _bridge = instance;
                    }
                }
                if (ran)
                {
                    bridge = instance.RunStreamAsync();
                }
                else
                {
                    CompleteUnrun();
                    bridge = ValueTask.FromResult(true);
                }
            }
            catch (Exception)
            {
                bridge = ValueTask.FromResult(false);
                Aborted = true;
            }
            // ---- response pump: reads the bridged HTTP/1.1 response and sends it as HEADERS + DATA; reset is the
            // RST_STREAM code to send (NO_ERROR when the response ended normally). Every wait of it (the first response
            // bytes, each read of a body that does not arrive whole) is in this loop, whose box lives as long as the
            // pooled stream. An async method per stream suspended there, and each suspension rented a box from the
            // pooling builder, whose caches hold one per thread and per core: with many connections interleaved on one
            // thread nearly every rent missed (about 650 B per request at 16 connections before the first wait moved
            // here; with 200 KB responses still 558 B, with the forwarder's body relay, before the rest moved too: 8 B).
            // The sends wait here too (SendData says when), for a window or the connection's output backlog.
            Http2ErrorCode reset;
            PipeReader reader = ResponsePipe.Reader;
            Phase phase = Phase.Head;
            long remaining = 0;
            bool headersSent = false;
            // A DATA payload not yet sent, waiting for a window (or the connection's output backlog) to open; whether it
            // ends the stream; where the buffer goes on from once it is sent.
            ReadOnlySequence<byte> pending;
            bool pendingEnds;
            SequencePosition next;
            SendStep step;
            try
            {
                while (true)
                {
                    ReadResult result = await reader.ReadAsync().ConfigureAwait(false);
                    if (Aborted)
                    {
                        reader.AdvanceTo(result.Buffer.Start);
                        reset = AbortCode(headersSent);
                        goto Pumped;
                    }
                    ReadOnlySequence<byte> buffer = result.Buffer;
                    SequencePosition examined = buffer.End;
                    while (true)
                    {
                        if (phase == Phase.Head)
                        {
                            HeadStatus status = Http1ResponseReader.TryRead(buffer, _responseHead, MaxResponseHeadBytes,
                                out SequencePosition consumed, out _);
                            if (status == HeadStatus.Incomplete)
                            {
                                break;
                            }
                            if (status == HeadStatus.Rejected || (_responseHead.StatusCode == 101 && !AcceptTunnel()))
                            {
                                reader.AdvanceTo(buffer.End);
                                reset = Http2ErrorCode.INTERNAL_ERROR;
                                goto Pumped;
                            }
                            buffer = buffer.Slice(consumed);
                            int code = _responseHead.StatusCode;
                            if (IsTunnel && code is >= 200 and < 300)
                            {
                                // RFC 8441 section 5: a 2xx to an extended CONNECT tells the client its tunnel is open. An
                                // upstream that ignored the upgrade and answered 2xx has opened none: 502, and the stream ends.
                                HeaderField[] ignored = _responseHead.Fields;
                                for (int i = 0; i < _responseHead.FieldCount; i++)
                                {
                                    ignored[i].HopByHop = true;
                                }
                                _responseHead.StatusCode = 502;
                                _connection.SendHeaders(this, _responseHead, endStream: true);
                                ProxyLog.Warn("upstream_ignored_upgrade", ("stream", Id), ("status", code));
                                reader.AdvanceTo(buffer.End);
                                reset = Http2ErrorCode.CANCEL;
                                goto Pumped;
                            }
                            if (code == 101)
                            {
                                // RFC 8441 section 5: the upgrade succeeded; the client gets a 2xx without END_STREAM and the
                                // rest of both directions is tunnel bytes in DATA frames, until END_STREAM or RST_STREAM.
                                _responseHead.StatusCode = 200;
                                if (!_connection.SendHeaders(this, _responseHead, endStream: false))
                                {
                                    reader.AdvanceTo(buffer.Start);
                                    reset = AbortCode(true);
                                    goto Pumped;
                                }
                                headersSent = true;
                                phase = Phase.UntilClose;
                                continue;
                            }
                            if (code < 200)
                            {
                                // 1xx (100 Continue): a HEADERS frame without END_STREAM, then the final response (section 8.1).
                                if (!_connection.SendHeaders(this, _responseHead, endStream: false))
                                {
                                    reader.AdvanceTo(buffer.Start);
                                    reset = AbortCode(true);
                                    goto Pumped;
                                }
                                headersSent = true;
                                continue;
                            }
                            bool noBody = IsHead || code == 204 || code == 304 || _responseHead.ContentLength == 0;
                            // A length-delimited body already here goes out at once (SendData's first TrySendData
                            // commits, sent or not): HEADERS and DATA then take one flush of the frame pipe and one wake-up
                            // of its writer loop.
                            bool dataFollows = !noBody && !_responseHead.Chunked && _responseHead.ContentLength > 0 && !buffer.IsEmpty;
                            if (!_connection.SendHeaders(this, _responseHead, endStream: noBody, commit: !dataFollows))
                            {
                                reader.AdvanceTo(buffer.Start);
                                reset = AbortCode(true);
                                goto Pumped;
                            }
                            headersSent = true;
                            if (noBody)
                            {
                                phase = Phase.Done;
                                break;
                            }
                            phase = _responseHead.Chunked ? Phase.Chunked : _responseHead.ContentLength > 0 ? Phase.Length : Phase.UntilClose;
                            remaining = _responseHead.ContentLength;
                            continue;
                        }
                        if (phase == Phase.Length)
                        {
                            if (buffer.IsEmpty)
                            {
                                break;
                            }
                            ReadOnlySequence<byte> data = buffer.Length > remaining ? buffer.Slice(0, remaining) : buffer;
                            remaining -= data.Length;
                            pending = data;
                            pendingEnds = remaining == 0;
                            next = data.End;
                            if (pendingEnds)
                            {
                                phase = Phase.Done;
                            }
                            goto Send;
                        }
                        if (phase == Phase.Chunked)
                        {
                            ChunkStatus chunk = _chunked.Read(buffer, out ReadOnlySequence<byte> data, out SequencePosition consumed, out _);
                            if (chunk == ChunkStatus.Error)
                            {
                                reader.AdvanceTo(buffer.End);
                                reset = Http2ErrorCode.INTERNAL_ERROR;
                                goto Pumped;
                            }
                            if (chunk == ChunkStatus.Data)
                            {
                                pending = data;
                                pendingEnds = false;
                                next = consumed;
                                goto Send;
                            }
                            buffer = buffer.Slice(consumed);
                            if (chunk == ChunkStatus.Done)
                            {
                                // The bridged response's trailer section becomes a trailing HEADERS frame with END_STREAM
                                // (RFC 9113 section 8.1); none (or none left after filtering): an empty END_STREAM DATA frame.
                                int trailers = _chunked.HasTrailers ? _connection.SendTrailers(this, _chunked.TrailerSection) : 0;
                                bool sent = trailers > 0 || (trailers == 0 && _connection.TrySendEnd(this));
                                _chunked.ReleaseTrailers();
                                if (!sent)
                                {
                                    reader.AdvanceTo(buffer.Start);
                                    reset = AbortCode(true);
                                    goto Pumped;
                                }
                                phase = Phase.Done;
                            }
                            break;
                        }
                        if (phase == Phase.UntilClose)
                        {
                            if (!buffer.IsEmpty)
                            {
                                // Sent, then this phase runs again with the buffer empty.
                                pending = buffer;
                                pendingEnds = false;
                                next = buffer.End;
                                goto Send;
                            }
                            if (result.IsCompleted)
                            {
                                if (!_connection.TrySendEnd(this))
                                {
                                    reader.AdvanceTo(buffer.Start);
                                    reset = AbortCode(true);
                                    goto Pumped;
                                }
                                phase = Phase.Done;
                            }
                            break;
                        }
                        break; // Done

                    // The body phases' DATA: pending, then on from next (the phase already says Done when it ended the
                    // stream). The waits are awaited here, in this loop, for a window or the connection's output backlog.
                    Send:
                        while ((step = SendData(ref pending, pendingEnds)) == SendStep.Wait)
                        {
                            await Signal.WaitAsync().ConfigureAwait(false);
                            if (StallTimedOut || Aborted)
                            {
                                step = SendStep.Failed;
                                break;
                            }
                        }
                        if (step == SendStep.Failed)
                        {
                            reader.AdvanceTo(buffer.Start);
                            reset = AbortCode(true);
                            goto Pumped;
                        }
                        buffer = buffer.Slice(next);
                        if (phase == Phase.Done)
                        {
                            break;
                        }
                    }
                    reader.AdvanceTo(buffer.Start, examined);
                    if (phase == Phase.Done)
                    {
                        ResponseComplete = true;
                        reset = Http2ErrorCode.NO_ERROR;
                        goto Pumped;
                    }
                    if (result.IsCompleted || result.IsCanceled)
                    {
                        // The bridge ended without a whole response (see UnfinishedCode).
                        reset = Aborted ? AbortCode(headersSent) : UnfinishedCode(headersSent);
                        goto Pumped;
                    }
                }
            }
            catch (Exception)
            {
                reset = Http2ErrorCode.INTERNAL_ERROR;
                goto Pumped;
            }
        Pumped:
            ResponsePipe.Reader.Complete();
            if (reset != Http2ErrorCode.NO_ERROR || !RequestEnded)
            {
                // The client may still be sending: end the request side so the bridge stops waiting for it.
                CloseRequest();
            }
            bool bridgeReusable;
            try
            {
                bridgeReusable = await bridge.ConfigureAwait(false);
            }
            catch (Exception)
            {
                bridgeReusable = false;
            }
            _bridge = null;
            if (ran && (!bridgeReusable || reset != Http2ErrorCode.NO_ERROR || Aborted || !ResponseComplete || IsTunnel))
            {
                // An exchange that did not end cleanly may leave work of its own running (the forwarder's loop in an
                // upstream wait, a timer, a pump): handing that instance the next stream would run two exchanges on
                // one forwarder. The next stream gets a fresh bridge; this one finishes alone and is collected. A
                // tunnel's bridge is not reused either: its connection was handed to the byte copy, as in HTTP/1.1.
                _bridgeInstance = null;
            }
            // Armed before the stream can be pooled: the next Start + Execute may come from the read loop at once.
            _next.Reset();
            try
            {
                _connection.OnStreamFinished(this, reset);
            }
            catch (Exception e)
            {
                ProxyLog.Error("http2_stream_failed", ("error", e.ToString()));
            }
            await _next.Task.ConfigureAwait(false);
        }
    }

    // ---- request side -------------------------------------------------------------------------

    /// <summary>
    /// Read loop: a DATA payload for the bridge (RFC 9112 section 7.1 framing when the head said chunked). At the end
    /// of a chunked body, <paramref name="trailers"/> (the client's trailer HEADERS as HTTP/1.1 field lines) become the
    /// trailer section; a body with a declared length has no place for them, and they are dropped (RFC 9110 section 6.5).
    /// </summary>
    public void WriteRequestData(in ReadOnlySequence<byte> data, bool endStream, ReadOnlySpan<byte> trailers = default)
    {
        lock (RequestLock)
        {
            if (RequestClosed)
            {
                return;
            }
            PipeWriter writer = RequestPipe.Writer;
            if (!data.IsEmpty)
            {
                if (RequestChunked)
                {
                    Span<byte> size = writer.GetSpan(12);
                    int n = WriteHex(size, data.Length);
                    size[n] = (byte)'\r';
                    size[n + 1] = (byte)'\n';
                    writer.Advance(n + 2);
                }
                foreach (ReadOnlyMemory<byte> segment in data)
                {
                    writer.Write(segment.Span);
                }
                if (RequestChunked)
                {
                    writer.Write("\r\n"u8);
                }
            }
            if (endStream)
            {
                if (RequestChunked)
                {
                    writer.Write("0\r\n"u8);
                    writer.Write(trailers);
                    writer.Write("\r\n"u8);
                }
                FlushRequest(writer);
                writer.Complete();
                RequestClosed = true;
                return;
            }
            FlushRequest(writer);
        }
    }

    private void FlushRequest(PipeWriter writer)
    {
        // No pause threshold (flow control bounds the pipe), so the flush completes at once.
        ValueTask<FlushResult> flush = writer.FlushAsync();
        if (flush.IsCompleted)
        {
            if (flush.Result.IsCompleted)
            {
                // The bridge stopped reading (it answered and closed): further DATA is dropped.
                writer.Complete();
                RequestClosed = true;
            }
        }
        else
        {
            _ = flush.AsTask();
        }
    }

    /// <summary>Ends the request side (reset, early answer, connection closing); safe from any thread.</summary>
    public void CloseRequest()
    {
        lock (RequestLock)
        {
            if (!RequestClosed)
            {
                RequestClosed = true;
                RequestPipe.Writer.Complete();
            }
        }
    }

    private static int WriteHex(Span<byte> destination, long value)
    {
        int digits = 1;
        for (long v = value >> 4; v != 0; v >>= 4)
        {
            digits++;
        }
        for (int i = digits - 1; i >= 0; i--)
        {
            int d = (int)(value & 0xF);
            destination[i] = (byte)(d < 10 ? '0' + d : 'a' + d - 10);
            value >>= 4;
        }
        return digits;
    }

    /// <summary>
    /// Bridge thread: the HTTP/1.1 side consumed input up to <paramref name="consumedTotal"/> octets. Body octets
    /// consumed go back to the client as window (section 6.9): the stream's when half its window is used, the
    /// connection's through <see cref="Http2ServerConnection.Credit"/>.
    /// </summary>
    public void OnRequestConsumed(long consumedTotal)
    {
        long body = Math.Min(consumedTotal - HeadBytes, Volatile.Read(ref ReceivedBody));
        long delta = body - _credited;
        if (delta <= 0)
        {
            return;
        }
        _credited = body;
        _pendingCredit += (int)delta;
        int streamCredit = 0;
        if (!Volatile.Read(ref RequestEnded) && _pendingCredit >= _connection.StreamWindowUpdateThreshold)
        {
            streamCredit = _pendingCredit;
            _pendingCredit = 0;
            Interlocked.Add(ref ReceiveWindow, streamCredit);
        }
        _connection.Credit(this, streamCredit, (int)delta);
    }

    /// <summary>Octets received but never credited back to the connection window (the stream is finishing).</summary>
    public int TakeUncredited()
    {
        long received = Volatile.Read(ref ReceivedBody);
        long left = received - _credited;
        _credited = received;
        return (int)Math.Max(left, 0);
    }

    // ---- aborts -------------------------------------------------------------------------------

    /// <summary>The client sent RST_STREAM, or the connection is going away: stop everything at once.</summary>
    public void Abort(bool byPeer)
    {
        lock (RequestLock)
        {
            if (_finished)
            {
                // Found by the read loop just before it finished: the object may already be pooled, and a cancelled
                // read left on its reset pipes would cut the next stream it carries.
                return;
            }
            if (byPeer)
            {
                ResetByPeer = true;
            }
            Aborted = true;
            WakePump();
            CloseRequest();
            _bridge?.Abort();
        }
    }

    /// <summary>
    /// A stream reset before its bridge ran: nobody reads its request or writes its response, so the ends a bridge would
    /// have completed are completed here, and <see cref="TryResetPipes"/> can ready the object for another stream.
    /// </summary>
    public void CompleteUnrun()
    {
        CloseRequest();
        Transport.Input.Complete();
        ResponsePipe.Writer.Complete();
    }

    /// <summary>The stream left the connection's table; from here on <see cref="Abort"/> is a no-op until the next <see cref="Start"/>.</summary>
    public void MarkFinished()
    {
        lock (RequestLock)
        {
            _finished = true;
        }
    }

    /// <summary>
    /// The HTTP/1.1 side gave up (its write deadline passed, or it aborted its transport). Ignored once the stream is
    /// finished, as <see cref="Abort"/> is: the object may be pooled with reset pipes, and a cancelled read or flush left
    /// on them would end the next stream it carries at its first read (the pump would take it for a bridge that ended
    /// without an answer). That is no corner case: a client's RST_STREAM makes <see cref="Abort"/> abort the bridge,
    /// whose upstream abort can resume the forwarder, the bridge and this stream's loop inline, on that thread, to the
    /// end of the stream (pooled), before the bridge goes on to abort its transport, which lands here.
    /// <para>No lock: the heartbeat calls this under the connection's lock, and that inline end takes the connection's
    /// lock under <see cref="RequestLock"/>. The read is exact where it matters: the inline end ran on this thread, and
    /// the heartbeat holds the connection's lock, which the stream's end takes after marking it finished and before its
    /// pipes are reset.</para>
    /// </summary>
    public void AbortFromBridge()
    {
        if (Volatile.Read(ref _finished))
        {
            return;
        }
        Aborted = true;
        WakePump();
    }

    private void WakePump()
    {
        Signal.Set();
        ResponsePipe.Reader.CancelPendingRead();
        ResponsePipe.Writer.CancelPendingFlush();
        Transport.Input.CancelPendingRead();
    }

    /// <summary>
    /// Readies both pipes (or the fixed request) for the next stream this object carries; false when an end was left
    /// open (an aborted exchange may still use it: the object is left to the GC).
    /// </summary>
    public bool TryResetPipes()
    {
        try
        {
            if (!Transport.ResetInput())
            {
                return false;
            }
            ResponsePipe.Reset();
            return true;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    // ---- response pump ------------------------------------------------------------------------

    private enum Phase : byte
    {
        Head,
        Length,
        Chunked,
        UntilClose,
        Done,
    }

    /// <summary>
    /// A 101 from the bridge: only the answer to our own extended CONNECT's upgrade is valid (an HTTP/2 response cannot
    /// switch protocols, RFC 9113 section 8.6), and for websocket its Sec-WebSocket-Accept must match the key we sent
    /// (RFC 6455 section 4.1). The accept field means nothing to the HTTP/2 client (RFC 8441 section 5): it is marked
    /// hop-by-hop so the HEADERS frame leaves it out, like the 101's Connection and Upgrade.
    /// </summary>
    private bool AcceptTunnel()
    {
        if (!IsTunnel)
        {
            return false;
        }
        if (!_isWebSocket)
        {
            return true;
        }
        HeaderField[] fields = _responseHead.Fields;
        for (int i = 0; i < _responseHead.FieldCount; i++)
        {
            if (_responseHead.Name(i).EqualsIgnoreCaseAscii("sec-websocket-accept"u8))
            {
                fields[i].HopByHop = true;
                return WebSocketHandshake.IsValidAccept(_webSocketKey, _responseHead.Value(i));
            }
        }
        return false;
    }

    private Http2ErrorCode AbortCode(bool headersSent) =>
        ResetByPeer ? Http2ErrorCode.NO_ERROR : StallTimedOut ? Http2ErrorCode.CANCEL : UnfinishedCode(headersSent);

    /// <summary>
    /// The RST_STREAM code of an exchange that ended without a whole response. REFUSED_STREAM tells the client the
    /// request was not processed and may be sent again, even a POST (RFC 9113 section 8.7), so it is used only while the
    /// exchange never reached the forwarder: no byte of it can have gone upstream. Past that point an upstream may have
    /// acted on it (it answered a head and then failed, or broke its framing) and the stream ends INTERNAL_ERROR, as
    /// after HEADERS; a failure the forwarder can still answer (connect refused, reset before any response byte) is its
    /// 502/503/504 response, not a reset. Read from <see cref="_bridge"/>, set only while this stream's exchange runs:
    /// <see cref="_bridgeInstance"/> is also there for a stream that never ran, with the flag of the stream before.
    /// </summary>
    private Http2ErrorCode UnfinishedCode(bool headersSent) =>
        headersSent || _bridge is { ReachedForwarder: true } ? Http2ErrorCode.INTERNAL_ERROR : Http2ErrorCode.REFUSED_STREAM;

    private enum SendStep : byte
    {
        Sent,
        /// <summary>No window (or the connection's output backlog is full): wait for <see cref="Signal"/>, then send the rest.</summary>
        Wait,
        /// <summary>The stream or the connection is gone.</summary>
        Failed,
    }

    /// <summary>
    /// Sends as much of <paramref name="data"/> as DATA frames as the windows allow, leaving the rest in it. Synchronous:
    /// the pump awaits <see cref="Signal"/> itself when told to wait, in its long-lived loop (see <see cref="RunLoopAsync"/>),
    /// so a send held up by flow control rents no async box.
    /// </summary>
    private SendStep SendData(ref ReadOnlySequence<byte> data, bool endStream)
    {
        while (true)
        {
            if (data.IsEmpty)
            {
                // An empty DATA frame with END_STREAM takes no window (section 6.9.1 counts payload octets only).
                return !endStream || _connection.TrySendEnd(this) ? SendStep.Sent : SendStep.Failed;
            }
            int sent = _connection.TrySendData(this, data, endStream);
            if (sent < 0)
            {
                return SendStep.Failed;
            }
            if (sent == data.Length)
            {
                return SendStep.Sent;
            }
            data = data.Slice(sent);
            if (sent == 0)
            {
                return SendStep.Wait;
            }
        }
    }
}
