using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Http2.FlowControl;
using Proxy.Http2.HPack;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Transport.Epoll;

namespace Proxy.Http2.Server;

/// <summary>
/// One client connection speaking HTTP/2 (RFC 9113), over any <see cref="ClientTransport"/>: a cleartext socket
/// that started with the prior-knowledge preface (h2c), or TLS that negotiated "h2". Each request stream is
/// bridged onto the HTTP/1.1 pipeline (<see cref="Http2Stream"/>), so routing, filters, local answers, limits,
/// metrics and upstream pools behave exactly as for HTTP/1.1 clients.
/// <para>Threads: one read loop (this class's <see cref="RunAsync"/>) parses frames and owns the HPACK decoder and
/// stream creation. Every frame we send is written under <see cref="_lock"/> into an in-memory pipe
/// (<see cref="_frames"/>) that one writer loop copies to the transport: writers never await the socket under
/// the lock, HPACK encoder state and frame order stay consistent, and the transport's writer has one owner.
/// DATA is bounded by the client's windows and by <see cref="MaxUnsent"/> octets not yet flushed; control
/// frames are bounded by the flood limits.</para>
/// <para>Owns the transport: completes its pipes and disposes it when the connection ends.</para>
/// </summary>
internal sealed class Http2ServerConnection : TimedConnection
{
    /// <summary>Octets written but not yet flushed to the transport above which DATA waits (output backpressure).</summary>
    private const int MaxUnsent = 256 * 1024;
    /// <summary>
    /// Octets of frames answering the client's own frames (SETTINGS and PING acknowledgements, RST_STREAM for its stream
    /// errors and refused streams) that may wait unflushed: past it, a client that provokes answers without reading
    /// them is closed (ENHANCE_YOUR_CALM) instead of growing the frame pipe. About 15,000 PING acknowledgements; the
    /// flood limit (max_control_frames_per_second) stops a reading client long before.
    /// </summary>
    private const int MaxUnflushedAnswers = 256 * 1024;
    private static readonly TimeSpan s_tick = TimeSpan.FromSeconds(1);

    private readonly ClientTransport _transport;
    private readonly Http2Limits _limits;
    private readonly HttpLimits _httpLimits;
    private readonly HPackDecoder _decoder;
    private readonly HPackEncoder _encoder = new();
    private readonly Http2RequestHead _head;
    // The write loop resumes after the engine's pass (EpollEngine.AfterBatch): every frame that pass committed goes out
    // in one write. Inline it would write per commit; on the thread pool it waited for a worker to get the core.
    private readonly Pipe _frames = new(new PipeOptions(pool: BlockMemoryPool.Large,
        readerScheduler: EpollEngine.AfterBatch, pauseWriterThreshold: 0,
        resumeWriterThreshold: 0, minimumSegmentSize: BlockMemoryPool.Large.BlockSize, useSynchronizationContext: false));

    /// <summary>Guards frame writes, the encoder, send windows, the stream table and the stream pool.</summary>
    private readonly Lock _lock = new();
    private readonly Dictionary<int, Http2Stream> _streams = [];
    private readonly Stack<Http2Stream> _pool = new();
    /// <summary>How the last streams to leave <see cref="_streams"/> ended (under <see cref="_lock"/>).</summary>
    private readonly ClosedStreams _closed = new();
    /// <summary>Streams started by the current read pass, run when it ends (read loop only).</summary>
    private readonly List<Http2Stream> _started = [];
    private FlowControlWindow _sendWindow = new(FlowControlWindow.DefaultInitialSize);
    private Http2Settings _peer = Http2Settings.Default;
    private byte[] _headerScratch = new byte[4096];
    private long _unsent;
    /// <summary>Octets the writer loop has flushed to the transport since the connection began (under <see cref="_lock"/>).</summary>
    private long _flushed;
    /// <summary>Where the last answer to a client frame ends in the output (octets since the start; under <see cref="_lock"/>).</summary>
    private long _answersEnd;
    /// <summary>Octets of answers queued since the writer loop last flushed past <see cref="_answersEnd"/> (under <see cref="_lock"/>).</summary>
    private long _unflushedAnswers;
    private bool _framesClosed;
    private bool _goAwaySent;
    private volatile bool _draining;
    private volatile bool _closeRequested;
    private int _activeStreams;
    private long _idleSince = Environment.TickCount64;
    private long _flushStarted;
    private bool _prefaceDone;
    private long _prefaceDeadline;

    // Read loop only.
    private int _lastStreamId;
    private int _receiveWindow;
    private int _pendingConnectionCredit;
    private int _headerStreamId;     // stream whose header block awaits CONTINUATION; 0 when none
    private int _headerBlockBytes;
    private int _headerFrames;
    private bool _headerEndStream;
    private HeaderBlockKind _headerKind;
    private Http2FrameError _headerPriorityError;
    private long _controlWindowStart;
    private int _controlFrames;
    private long _resetWindowStart;
    private int _resets;

    private enum HeaderBlockKind : byte
    {
        Request,
        Trailers,
        /// <summary>Decoded only to keep HPACK in step: refused, or after GOAWAY.</summary>
        Discard,
        Refused,
    }

    public Http2ServerConnection(ProxyRuntime runtime, ListenerModel listener, ClientTransport transport)
    {
        Runtime = runtime;
        Listener = listener;
        _transport = transport;
        _httpLimits = listener.Limits;
        _limits = listener.Limits.Http2;
        _decoder = new HPackDecoder(HPackDecoder.DefaultHeaderTableSize, _limits.MaxHeaderListSize);
        _head = new Http2RequestHead(_limits.MaxHeaderListSize);
        _receiveWindow = _limits.ConnectionWindowSize;
        StreamWindowUpdateThreshold = Math.Max(_limits.InitialWindowSize / 4, 1);
    }

    public ProxyRuntime Runtime { get; }
    public ListenerModel Listener { get; }

    /// <summary>Consumed octets a stream collects before it sends WINDOW_UPDATE.</summary>
    public int StreamWindowUpdateThreshold { get; }

    /// <summary>Open streams (for tests and diagnostics).</summary>
    public int ActiveStreams => Volatile.Read(ref _activeStreams);

    public async Task RunAsync()
    {
        Runtime.Registry.Add(this, admin: Listener.Handler == ListenerHandler.Admin);
        Task writer = Task.CompletedTask;
        try
        {
            WriteServerPreface();
            writer = WriteLoopAsync();
            _prefaceDeadline = Environment.TickCount64 + (long)_httpLimits.HeaderTimeout.TotalMilliseconds;
            Arm(TimeoutKind.Write, s_tick);
            Http2ErrorCode error = await ReadLoopAsync().ConfigureAwait(false);
            if (error != Http2ErrorCode.NO_ERROR || !_goAwaySent)
            {
                SendGoAway(error);
            }
            _lingerOnClose = error != Http2ErrorCode.NO_ERROR;
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            ProxyLog.Write(ProxyLogLevel.Debug, "http2_connection_closed", ("error", e.Message));
        }
        catch (Exception e)
        {
            ProxyLog.Error("http2_connection_failed", ("listener", Listener.Name), ("client", ProxyLog.Format(_transport.RemoteEndPoint)), ("error", e.ToString()));
        }
        finally
        {
            Disarm();
            await CloseAsync(writer).ConfigureAwait(false);
            Runtime.Registry.Remove(this);
        }
    }

    // ---- read side ----------------------------------------------------------------------------

    private async Task<Http2ErrorCode> ReadLoopAsync()
    {
        PipeReader input = _transport.Input;
        uint maxFrameSize = (uint)_limits.MaxFrameSize;
        while (true)
        {
            ReadResult result = await input.ReadAsync().ConfigureAwait(false);
            ReadOnlySequence<byte> buffer = result.Buffer;
            SequencePosition consumed = buffer.Start;
            try
            {
                if (_closeRequested || (_draining && ActiveStreams == 0))
                {
                    return Http2ErrorCode.NO_ERROR;
                }
                if (!_prefaceDone)
                {
                    // RFC 9113 section 3.4: the 24-octet preface, then a SETTINGS frame.
                    PrefaceCheck check = Http2Preface.Check(buffer);
                    if (check == PrefaceCheck.No)
                    {
                        return Http2ErrorCode.PROTOCOL_ERROR;
                    }
                    if (check == PrefaceCheck.NeedMore || buffer.Length < Http2Preface.Length + Http2FrameHeader.Size)
                    {
                        if (result.IsCompleted)
                        {
                            return Http2ErrorCode.NO_ERROR;
                        }
                        continue;
                    }
                    if (buffer.Slice(Http2Preface.Length).FirstSpan[3] != (byte)Http2FrameType.SETTINGS)
                    {
                        return Http2ErrorCode.PROTOCOL_ERROR;
                    }
                    buffer = buffer.Slice(Http2Preface.Length);
                    consumed = buffer.Start;
                    _prefaceDone = true;
                }
                while (true)
                {
                    Http2ReadStatus status = Http2FrameReader.TryReadFrame(buffer, maxFrameSize, out Http2FrameHeader header,
                        out ReadOnlySequence<byte> payload, out SequencePosition end, out Http2FrameError error);
                    if (status == Http2ReadStatus.NeedMoreData)
                    {
                        break;
                    }
                    if (status == Http2ReadStatus.Error)
                    {
                        return error.Code;
                    }
                    error = ProcessFrame(header, payload);
                    buffer = buffer.Slice(end);
                    consumed = buffer.Start;
                    if (error.IsConnectionError)
                    {
                        return error.Code;
                    }
                    if (error.IsStreamError)
                    {
                        error = ResetStream(header.StreamId, error.Code);
                        if (error.IsConnectionError)
                        {
                            return error.Code;
                        }
                    }
                }
                if (result.IsCompleted)
                {
                    return Http2ErrorCode.NO_ERROR;
                }
            }
            finally
            {
                input.AdvanceTo(consumed, result.Buffer.End);
                RunStartedStreams();
            }
        }
    }

    private Http2FrameError ProcessFrame(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        // Section 6.10: a header block is a contiguous sequence of frames; anything else in between is a connection error.
        if (_headerStreamId != 0 && (header.Type != Http2FrameType.CONTINUATION || header.StreamId != _headerStreamId))
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        return header.Type switch
        {
            Http2FrameType.DATA => OnData(header, payload),
            Http2FrameType.HEADERS => OnHeaders(header, payload),
            Http2FrameType.CONTINUATION => OnContinuation(header, payload),
            Http2FrameType.PRIORITY => OnPriority(header, payload),
            Http2FrameType.RST_STREAM => OnRstStream(header, payload),
            Http2FrameType.SETTINGS => OnSettings(header, payload),
            Http2FrameType.PING => OnPing(header, payload),
            Http2FrameType.GOAWAY => OnGoAway(header, payload),
            Http2FrameType.WINDOW_UPDATE => OnWindowUpdate(header, payload),
            // Section 8.4: a client cannot push.
            Http2FrameType.PUSH_PROMISE => Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR),
            _ => Http2FrameError.None, // section 5.5: unknown types are ignored
        };
    }

    /// <summary>Counts frames that cost us work but carry no request: above the per-second limit the client is flooding.</summary>
    private bool CountControlFrame()
    {
        long now = Environment.TickCount64;
        if (now - _controlWindowStart >= 1000)
        {
            _controlWindowStart = now;
            _controlFrames = 0;
        }
        return ++_controlFrames > _limits.MaxControlFramesPerSecond;
    }

    private Http2Stream? Find(int streamId)
    {
        lock (_lock)
        {
            return _streams.GetValueOrDefault(streamId);
        }
    }

    private Http2FrameError OnData(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadData(header, payload, out ReadOnlySequence<byte> data);
        if (error.IsError)
        {
            return error;
        }
        if (header.StreamId > _lastStreamId)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR); // DATA on an idle stream (section 5.1)
        }
        // Section 6.9: the whole frame (padding included) counts against the connection window.
        int length = header.Length;
        if (length > _receiveWindow)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FLOW_CONTROL_ERROR);
        }
        _receiveWindow -= length;
        bool endStream = header.HasFlag(Http2Flags.END_STREAM);
        if (length == 0 && !endStream && CountControlFrame())
        {
            return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM); // empty DATA flood (CVE-2019-9518)
        }
        Http2Stream? stream = Find(header.StreamId);
        int padding = length - (int)data.Length;
        if (stream is null || stream.RequestEnded || stream.ResetByPeer)
        {
            // A closed stream: its octets go straight back to the connection window.
            CreditConnection(length);
            // Section 5.1: DATA after the client's END_STREAM is STREAM_CLOSED (a connection error once the stream has
            // closed), after its RST_STREAM a stream error; after ours it was in flight and is ignored. A reset stream
            // may still be winding down in the table.
            if (stream is not null && !stream.ResetByPeer)
            {
                return Http2FrameError.Stream(Http2ErrorCode.STREAM_CLOSED); // half-closed (remote)
            }
            return ClosedStreamClosure(header.StreamId) switch
            {
                StreamClosure.Ended => Http2FrameError.Connection(Http2ErrorCode.STREAM_CLOSED),
                StreamClosure.ResetByPeer => Http2FrameError.Stream(Http2ErrorCode.STREAM_CLOSED),
                _ => Http2FrameError.None,
            };
        }
        if (length > Volatile.Read(ref stream.ReceiveWindow))
        {
            CreditConnection(length);
            return Http2FrameError.Stream(Http2ErrorCode.FLOW_CONTROL_ERROR);
        }
        Interlocked.Add(ref stream.ReceiveWindow, -length);
        if (padding > 0)
        {
            CreditConnection(padding);
        }
        long received = stream.ReceivedBody + stream.DroppedBody + data.Length;
        // Section 8.1.1: content-length must match the DATA octets.
        if (stream.DeclaredLength >= 0 && (received > stream.DeclaredLength || (endStream && received != stream.DeclaredLength)))
        {
            CreditConnection((int)data.Length);
            return Http2FrameError.Stream(Http2ErrorCode.PROTOCOL_ERROR);
        }
        ReadOnlySequence<byte> body = data;
        long room = _httpLimits.MaxBodyBytes + 1 - stream.ReceivedBody;
        if (body.Length > room && !stream.IsTunnel)
        {
            // The bridge answers 413 from the declared length, or once it counts max_body_bytes + 1 octets: those are
            // all it gets, the rest goes straight back to the connection window. Not a reset: DATA read in the same
            // pass as its HEADERS would cancel the stream before its bridge ran, with no 413 and nothing logged.
            long dropped = body.Length - Math.Max(room, 0);
            CreditConnection((int)dropped);
            stream.DroppedBody += dropped;
            body = body.Slice(0, Math.Max(room, 0));
        }
        Volatile.Write(ref stream.ReceivedBody, stream.ReceivedBody + body.Length);
        if (endStream)
        {
            Volatile.Write(ref stream.RequestEnded, true);
        }
        stream.WriteRequestData(body, endStream);
        return Http2FrameError.None;
    }

    private Http2FrameError OnHeaders(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadHeaders(header, payload, out ReadOnlySequence<byte> fragment);
        if (error.IsConnectionError)
        {
            return error;
        }
        int id = header.StreamId;
        if ((id & 1) == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR); // client streams are odd (section 5.1.1)
        }
        _headerPriorityError = error;
        _headerEndStream = header.HasFlag(Http2Flags.END_STREAM);
        if (id <= _lastStreamId)
        {
            Http2Stream? stream = Find(id);
            if (stream is null || stream.ResetByPeer)
            {
                // Closed, or reset and winding down.
                switch (ClosedStreamClosure(id))
                {
                    case StreamClosure.ResetByUs:
                        // Trailers the client sent before it saw our RST_STREAM: decoded for HPACK's sake, then dropped.
                        _headerKind = HeaderBlockKind.Discard;
                        break;
                    case StreamClosure.Unknown when stream is null:
                        // Section 5.1.1: a new stream id not above the last one (or a stream closed too long ago to tell).
                        return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
                    default:
                        return Http2FrameError.Connection(Http2ErrorCode.STREAM_CLOSED); // section 5.1, closed state
                }
            }
            else if (stream.RequestEnded)
            {
                return Http2FrameError.Connection(Http2ErrorCode.STREAM_CLOSED); // trailers must end the stream (section 8.1)
            }
            else
            {
                _headerKind = HeaderBlockKind.Trailers;
            }
            _head.Reset(trailers: true);
        }
        else
        {
            _lastStreamId = id;
            bool refused;
            lock (_lock)
            {
                refused = _goAwaySent;
            }
            if (refused)
            {
                _headerKind = HeaderBlockKind.Discard; // after GOAWAY: ignored (section 6.8)
            }
            else if (ActiveStreams >= _limits.MaxConcurrentStreams)
            {
                _headerKind = HeaderBlockKind.Refused; // section 5.1.2
            }
            else
            {
                _headerKind = HeaderBlockKind.Request;
            }
            _head.Reset(trailers: false);
        }
        _headerStreamId = id;
        _headerBlockBytes = 0;
        _headerFrames = 0;
        return DecodeFragment(fragment, header.HasFlag(Http2Flags.END_HEADERS));
    }

    private Http2FrameError OnContinuation(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadContinuation(header, payload, out ReadOnlySequence<byte> fragment);
        if (error.IsError)
        {
            return error;
        }
        if (_headerStreamId == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR); // CONTINUATION without HEADERS (section 6.10)
        }
        bool endHeaders = header.HasFlag(Http2Flags.END_HEADERS);
        if (fragment.IsEmpty && !endHeaders && CountControlFrame())
        {
            return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
        }
        return DecodeFragment(fragment, endHeaders);
    }

    private Http2FrameError DecodeFragment(in ReadOnlySequence<byte> fragment, bool endHeaders)
    {
        // CONTINUATION floods (CVE-2024-27316 family): the encoded block is capped like the decoded list, so
        // an endless block of fields that decode to nothing (or to repeated small ones) is cut off early.
        // The encoded block may be at most twice the decoded limit (HPACK rarely expands; the decoder stops a list
        // past the limit with COMPRESSION_ERROR first), in at most one frame per KiB of the limit (at least 8).
        _headerBlockBytes += (int)fragment.Length;
        if (_headerBlockBytes > 2 * _limits.MaxHeaderListSize || ++_headerFrames > Math.Max(8, _limits.MaxHeaderListSize / 1024))
        {
            return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
        }
        Http2RequestHead.Sink sink = _head.AsSink();
        HPackError hpack = _decoder.Decode(fragment, endHeaders, ref sink);
        if (hpack != HPackError.None)
        {
            // Any HPACK failure leaves the dynamic table out of step: a connection error (RFC 7541 / RFC 9113 section 4.3),
            // including an HPACK bomb stopped at the decoded list limit.
            ProxyLog.Write(ProxyLogLevel.Info, "http2_compression_error", ("details", hpack.DetailsCode()));
            return Http2FrameError.Connection(hpack.ToHttp2ErrorCode());
        }
        if (!endHeaders)
        {
            return Http2FrameError.None;
        }
        int id = _headerStreamId;
        _headerStreamId = 0;
        switch (_headerKind)
        {
            case HeaderBlockKind.Discard:
                return Http2FrameError.None;
            case HeaderBlockKind.Refused:
                return Http2FrameError.Stream(Http2ErrorCode.REFUSED_STREAM);
            case HeaderBlockKind.Trailers:
                return EndTrailers(id);
        }
        if (_headerPriorityError.IsStreamError)
        {
            return _headerPriorityError;
        }
        if (_head.Complete(_headerEndStream) != Http2RequestError.None)
        {
            return Http2FrameError.Stream(Http2ErrorCode.PROTOCOL_ERROR); // malformed request (section 8.1.1)
        }
        StartStream(id);
        return Http2FrameError.None;
    }

    private Http2FrameError EndTrailers(int id)
    {
        Http2Stream? stream = Find(id);
        if (_head.Error != Http2RequestError.None || !_headerEndStream)
        {
            return Http2FrameError.Stream(Http2ErrorCode.PROTOCOL_ERROR); // trailers must end the stream (section 8.1)
        }
        if (stream is null)
        {
            return Http2FrameError.None;
        }
        if (stream.DeclaredLength >= 0 && stream.ReceivedBody != stream.DeclaredLength)
        {
            return Http2FrameError.Stream(Http2ErrorCode.PROTOCOL_ERROR);
        }
        Volatile.Write(ref stream.RequestEnded, true);
        stream.WriteRequestData(ReadOnlySequence<byte>.Empty, endStream: true, _head.TrailerSection);
        return Http2FrameError.None;
    }

    private void StartStream(int id)
    {
        Http2Stream? stream;
        int sendWindow;
        lock (_lock)
        {
            if (_framesClosed)
            {
                return;
            }
            stream = _pool.Count > 0 ? _pool.Pop() : null;
            sendWindow = (int)_peer.InitialWindowSize;
        }
        stream ??= new Http2Stream(this, _transport);
        stream.Start(id, _head, _headerEndStream, sendWindow, _limits.InitialWindowSize);
        lock (_lock)
        {
            _streams[id] = stream;
            _activeStreams++;
        }
        stream.AwaitingRun = true;
        _started.Add(stream);
    }

    /// <summary>A stream leaves the open set (under <c>_lock</c>): its slot is free, and the idle clock starts with the last one.</summary>
    private void ForgetStreamLocked(Http2Stream stream)
    {
        _streams.Remove(stream.Id);
        _activeStreams--;
        if (_activeStreams == 0)
        {
            _idleSince = Environment.TickCount64;
        }
    }

    /// <summary>
    /// Read loop: a stream of this read pass that the client (RST_STREAM) or a stream error closed before it ran. It
    /// never runs (RunStartedStreams skips it): nothing goes upstream, and, closed (RFC 9113 section 5.1), it gives its
    /// max_concurrent_streams slot back now (section 5.1.2), not when an upstream answers nobody. The caller records how
    /// it closed.
    /// </summary>
    private void ReleaseBeforeRun(Http2Stream stream)
    {
        int uncredited = stream.TakeUncredited();
        stream.MarkFinished();
        bool closeNow;
        lock (_lock)
        {
            ForgetStreamLocked(stream);
            CreditConnectionLocked(uncredited);
            closeNow = _draining && _activeStreams == 0;
        }
        if (closeNow)
        {
            _transport.Input.CancelPendingRead();
        }
    }

    /// <summary>Read loop, end of the pass: a stream released by <see cref="ReleaseBeforeRun"/> goes back to the pool.</summary>
    private void PoolUnrun(Http2Stream stream)
    {
        stream.CompleteUnrun();
        stream.ResponsePipe.Reader.Complete(); // the pump's end: it never ran either
        if (!stream.TryResetPipes())
        {
            return;
        }
        lock (_lock)
        {
            if (!_framesClosed && _pool.Count < _limits.MaxConcurrentStreams)
            {
                _pool.Push(stream);
            }
        }
    }

    /// <summary>
    /// Runs the streams this read pass started, inline on the read loop, once the pass is over and its buffer given back
    /// (a stream may end the connection, which completes the input). Each runs until its first wait (the upstream's
    /// answer, mostly), as an HTTP/1.1 request runs on its connection's thread. Handing each to the thread pool instead
    /// cost a thread switch per request: on a proxy pinned to one core, TLS h2 (h2load -c16 -m10) spent 12% more CPU
    /// per request that way (docs/performance.md). Streams started in one pass also see the DATA that came with them.
    /// </summary>
    private void RunStartedStreams()
    {
        List<Http2Stream> started = _started;
        for (int i = 0; i < started.Count; i++)
        {
            Http2Stream stream = started[i];
            stream.AwaitingRun = false;
            if (stream.Aborted)
            {
                // Reset in the pass that opened it (HEADERS and RST_STREAM in one read): released already.
                PoolUnrun(stream);
                continue;
            }
            stream.Execute();
        }
        started.Clear();
    }

    private Http2FrameError OnPriority(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadPriority(header, payload);
        if (error.IsConnectionError)
        {
            return error;
        }
        if (CountControlFrame())
        {
            return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
        }
        return error;
    }

    private Http2FrameError OnRstStream(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadRstStream(header, payload, out _);
        if (error.IsError)
        {
            return error;
        }
        if (header.StreamId > _lastStreamId)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR); // idle stream (section 5.1)
        }
        Http2Stream? stream = Find(header.StreamId);
        if (stream is null)
        {
            return Http2FrameError.None;
        }
        stream.Abort(byPeer: true);
        if (stream.AwaitingRun)
        {
            ReleaseBeforeRun(stream);
        }
        lock (_lock)
        {
            _closed.Add(header.StreamId, StreamClosure.ResetByPeer);
        }
        // Rapid reset (CVE-2023-44487): streams opened and cancelled at once cost us work and the client nothing.
        return CountReset(byClient: true) ? Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM) : Http2FrameError.None;
    }

    /// <summary>
    /// Counts a stream reset against the rapid_reset budget: the client's RST_STREAM, and our RST_STREAM for a stream
    /// error its frames caused (see <see cref="ResetStream"/>). True when the budget is exceeded.
    /// </summary>
    private bool CountReset(bool byClient)
    {
        long now = Environment.TickCount64;
        if (now - _resetWindowStart >= (long)_limits.RapidResetWindow.TotalMilliseconds)
        {
            _resetWindowStart = now;
            _resets = 0;
        }
        if (++_resets <= _limits.RapidResetMax)
        {
            return false;
        }
        RapidResetExceeded(byClient);
        return true;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RapidResetExceeded(bool byClient) =>
        ProxyLog.Write(ProxyLogLevel.Warn, "http2_rapid_reset", ("listener", Listener.Name), ("client", ProxyLog.Format(_transport.RemoteEndPoint)),
            ("last_reset", byClient ? "client_rst_stream" : "stream_error"));

    private Http2FrameError OnSettings(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        if (header.HasFlag(Http2Flags.ACK))
        {
            return Http2FrameReader.ReadSettings(header, payload, ref _peer); // validates the empty payload only
        }
        if (CountControlFrame())
        {
            return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
        }
        lock (_lock)
        {
            uint oldWindow = _peer.InitialWindowSize;
            Http2Settings settings = _peer;
            Http2FrameError error = Http2FrameReader.ReadSettings(header, payload, ref settings);
            if (error.IsError)
            {
                return error;
            }
            _peer = settings;
            if (settings.InitialWindowSize != oldWindow)
            {
                // Section 6.9.2: every open stream's send window moves by the difference.
                foreach (Http2Stream stream in _streams.Values)
                {
                    if (stream.SendWindow.TryApplyInitialSizeChange(oldWindow, settings.InitialWindowSize) != Http2ErrorCode.NO_ERROR)
                    {
                        return Http2FrameError.Connection(Http2ErrorCode.FLOW_CONTROL_ERROR);
                    }
                }
            }
            _encoder.SetPeerHeaderTableSize(settings.HeaderTableSize);
            bool backlogged = false;
            if (!_framesClosed)
            {
                Http2FrameWriter.WriteSettingsAck(_frames.Writer);
                backlogged = CommitAnswer();
            }
            WakeAllLocked();
            if (backlogged)
            {
                return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
            }
        }
        return Http2FrameError.None;
    }

    private Http2FrameError OnPing(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadPing(header, payload, out ulong opaque);
        if (error.IsError || header.HasFlag(Http2Flags.ACK))
        {
            return error;
        }
        if (CountControlFrame())
        {
            return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
        }
        lock (_lock)
        {
            if (!_framesClosed)
            {
                Http2FrameWriter.WritePing(_frames.Writer, opaque, ack: true);
                if (CommitAnswer())
                {
                    return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
                }
            }
        }
        return Http2FrameError.None;
    }

    private Http2FrameError OnGoAway(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadGoAway(header, payload, out _, out _, out _);
        if (error.IsError)
        {
            return error;
        }
        // The client will open no more streams: finish the open ones, then close.
        _draining = true;
        return Http2FrameError.None;
    }

    private Http2FrameError OnWindowUpdate(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        Http2FrameError error = Http2FrameReader.ReadWindowUpdate(header, payload, out int increment);
        if (error.IsError)
        {
            return error;
        }
        if (header.StreamId == 0)
        {
            lock (_lock)
            {
                if (_sendWindow.TryAdd(increment) != Http2ErrorCode.NO_ERROR)
                {
                    return Http2FrameError.Connection(Http2ErrorCode.FLOW_CONTROL_ERROR);
                }
                WakeAllLocked();
            }
            return Http2FrameError.None;
        }
        if (header.StreamId > _lastStreamId)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        lock (_lock)
        {
            if (_streams.TryGetValue(header.StreamId, out Http2Stream? stream))
            {
                if (stream.SendWindow.TryAdd(increment) != Http2ErrorCode.NO_ERROR)
                {
                    return Http2FrameError.Stream(Http2ErrorCode.FLOW_CONTROL_ERROR);
                }
                stream.Signal.Set();
            }
        }
        return Http2FrameError.None;
    }

    /// <summary>
    /// A stream error the client's frames caused, found by the read loop: RST_STREAM, and the stream (if running) stops.
    /// Returns a connection error (ENHANCE_YOUR_CALM) when the client makes us reset too much:
    /// <list type="bullet">
    /// <item>every such reset counts against the rapid_reset budget like the client's own RST_STREAM ("MadeYouReset",
    /// CVE-2025-8671: a WINDOW_UPDATE of 0, a window overflow, a PRIORITY on itself, a frame on a half-closed stream...
    /// make the server cancel a stream the client opened, so the upstream works for nobody), except REFUSED_STREAM: a
    /// refused stream never started, and a client may open streams before our SETTINGS reach it;</item>
    /// <item>every RST_STREAM, REFUSED_STREAM included, is a frame the client made us write: it counts against
    /// max_control_frames_per_second and the unflushed answers (<see cref="MaxUnflushedAnswers"/>).</item>
    /// </list>
    /// Resets the proxy decides for its own reasons (an upstream failure, a stall, a response complete before the
    /// request) go out through <see cref="OnStreamFinished"/> and count against nothing.
    /// </summary>
    private Http2FrameError ResetStream(int streamId, Http2ErrorCode code)
    {
        Http2Stream? stream = Find(streamId);
        if (stream is not null)
        {
            stream.Abort(byPeer: true); // byPeer: we send the RST here, the stream must not send another
            if (stream.AwaitingRun)
            {
                ReleaseBeforeRun(stream);
            }
        }
        bool backlogged;
        lock (_lock)
        {
            WriteRstLocked(streamId, code, out backlogged);
        }
        if (backlogged || CountControlFrame() || (code != Http2ErrorCode.REFUSED_STREAM && CountReset(byClient: false)))
        {
            return Http2FrameError.Connection(Http2ErrorCode.ENHANCE_YOUR_CALM);
        }
        return Http2FrameError.None;
    }

    // ---- flow control of received DATA ----------------------------------------------------------

    /// <summary>Bridge thread: the stream consumed request octets (see <see cref="Http2Stream.OnRequestConsumed"/>).</summary>
    public void Credit(Http2Stream stream, int streamIncrement, int connectionIncrement)
    {
        lock (_lock)
        {
            if (streamIncrement > 0 && !_framesClosed)
            {
                Http2FrameWriter.WriteWindowUpdate(_frames.Writer, stream.Id, streamIncrement);
                Commit();
            }
            CreditConnectionLocked(connectionIncrement);
        }
    }

    private void CreditConnection(int increment)
    {
        if (increment <= 0)
        {
            return;
        }
        lock (_lock)
        {
            CreditConnectionLocked(increment);
        }
    }

    private void CreditConnectionLocked(int increment)
    {
        _pendingConnectionCredit += increment;
        if (_pendingConnectionCredit >= _limits.ConnectionWindowSize / 4 && !_framesClosed)
        {
            int credit = _pendingConnectionCredit;
            _pendingConnectionCredit = 0;
            Interlocked.Add(ref _receiveWindow, credit);
            Http2FrameWriter.WriteWindowUpdate(_frames.Writer, 0, credit);
            Commit();
        }
    }

    // ---- write side ---------------------------------------------------------------------------

    /// <summary>Section 3.4: our SETTINGS first; then the connection window raised to its configured size.</summary>
    private void WriteServerPreface()
    {
        ReadOnlySpan<Http2Setting> settings =
        [
            new(Http2SettingsParameter.SETTINGS_MAX_CONCURRENT_STREAMS, (uint)_limits.MaxConcurrentStreams),
            new(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, (uint)_limits.InitialWindowSize),
            new(Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE, (uint)_limits.MaxFrameSize),
            new(Http2SettingsParameter.SETTINGS_MAX_HEADER_LIST_SIZE, (uint)_limits.MaxHeaderListSize),
            // RFC 8441 section 3: extended CONNECT (WebSockets over HTTP/2), bridged as an HTTP/1.1 upgrade.
            new(Http2SettingsParameter.SETTINGS_ENABLE_CONNECT_PROTOCOL, 1),
        ];
        lock (_lock)
        {
            Http2FrameWriter.WriteSettings(_frames.Writer, settings);
            int raise = _limits.ConnectionWindowSize - FlowControlWindow.DefaultInitialSize;
            if (raise > 0)
            {
                Http2FrameWriter.WriteWindowUpdate(_frames.Writer, 0, raise);
            }
            else
            {
                _receiveWindow = FlowControlWindow.DefaultInitialSize;
            }
            Commit();
        }
    }

    /// <summary>Makes written frames visible to the writer loop. Under <see cref="_lock"/>.</summary>
    private void Commit()
    {
        // Exact octets (the writer loop subtracts what it copied): an estimate would drift and stall DATA for good.
        _unsent += _frames.Writer.UnflushedBytes;
        // No pause threshold on this pipe: the flush completes synchronously.
        ValueTask<FlushResult> flush = _frames.Writer.FlushAsync();
        if (!flush.IsCompleted)
        {
            _ = flush.AsTask();
        }
    }

    /// <summary>Commits frames written without a commit, if any. Under <see cref="_lock"/>.</summary>
    private void CommitPending()
    {
        if (_frames.Writer.UnflushedBytes > 0)
        {
            Commit();
        }
    }

    /// <summary>Read loop: how a stream that is no longer in the table closed, if it closed recently.</summary>
    private StreamClosure ClosedStreamClosure(int streamId)
    {
        lock (_lock)
        {
            return _closed.Find(streamId);
        }
    }

    private void WriteRstLocked(int streamId, Http2ErrorCode code)
    {
        _closed.Add(streamId, StreamClosure.ResetByUs);
        if (!_framesClosed)
        {
            Http2FrameWriter.WriteRstStream(_frames.Writer, streamId, code);
            Commit();
        }
    }

    /// <summary>An RST_STREAM answering the client's frame (see <see cref="CommitAnswer"/>).</summary>
    private void WriteRstLocked(int streamId, Http2ErrorCode code, out bool backlogged)
    {
        _closed.Add(streamId, StreamClosure.ResetByUs);
        backlogged = false;
        if (!_framesClosed)
        {
            Http2FrameWriter.WriteRstStream(_frames.Writer, streamId, code);
            backlogged = CommitAnswer();
        }
    }

    /// <summary>
    /// Commits a frame that answers the client's own frame (under <see cref="_lock"/>). True when more than
    /// <see cref="MaxUnflushedAnswers"/> octets of such answers wait: the writer loop has not caught up with them since the
    /// first, so the client is not reading what it provokes (a flood of WINDOW_UPDATE 0 or of streams past the cap, sent
    /// without reading, queued hundreds of MiB before this bound). The count starts again once the writer loop has
    /// flushed past the last answer, so a client that reads never gets near it.
    /// </summary>
    private bool CommitAnswer()
    {
        long octets = _frames.Writer.UnflushedBytes;
        Commit();
        _answersEnd = _flushed + _unsent;
        _unflushedAnswers += octets;
        return _unflushedAnswers > MaxUnflushedAnswers;
    }

    private void SendGoAway(Http2ErrorCode code)
    {
        lock (_lock)
        {
            if (_framesClosed)
            {
                return;
            }
            _goAwaySent = true;
            Http2FrameWriter.WriteGoAway(_frames.Writer, _lastStreamId, code, default);
            Commit();
        }
        if (code != Http2ErrorCode.NO_ERROR)
        {
            ProxyLog.Write(ProxyLogLevel.Info, "http2_goaway", ("listener", Listener.Name), ("client", ProxyLog.Format(_transport.RemoteEndPoint)), ("error", code.ToString()));
        }
    }

    /// <summary>
    /// Response head as HEADERS (+ CONTINUATION): ":status", then the fields minus the connection-specific ones
    /// (RFC 9113 section 8.2.2), names lowercased (section 8.2.1). False when the stream or connection is gone.
    /// </summary>
    /// <remarks>
    /// <c>commit: false</c> when the caller sends DATA at once (<see cref="TrySendData"/> commits whatever is pending,
    /// whether or not it can send): HEADERS and the first DATA then reach the writer loop in one flush of the frame
    /// pipe, not two.
    /// </remarks>
    public bool SendHeaders(Http2Stream stream, ResponseHead head, bool endStream, bool commit = true)
    {
        Span<byte> lower = stackalloc byte[256];
        lock (_lock)
        {
            if (_framesClosed || stream.Aborted)
            {
                return false;
            }
            // Worst case per field: name + value + two 5-octet length prefixes + one index octet.
            int needed = head.Length + head.FieldCount * 16 + 64;
            if (_headerScratch.Length < needed)
            {
                _headerScratch = new byte[Math.Max(needed, _headerScratch.Length * 2)];
            }
            Span<byte> block = _headerScratch;
            _encoder.TryBeginHeaderBlock(block, out int length);
            Span<byte> status = stackalloc byte[3];
            int code = head.StatusCode;
            status[0] = (byte)('0' + code / 100);
            status[1] = (byte)('0' + code / 10 % 10);
            status[2] = (byte)('0' + code % 10);
            _encoder.TryEncode(":status"u8, status, HPackIndexing.Auto, block[length..], out int written);
            length += written;
            for (int i = 0; i < head.FieldCount; i++)
            {
                ref readonly HeaderField field = ref head.Fields[i];
                // HopByHop marks content-length too (HTTP/1.1 re-frames bodies); in HTTP/2 it is end to end and kept.
                if ((field.HopByHop && field.Known != KnownHeader.ContentLength) || field.Known is KnownHeader.Connection or KnownHeader.KeepAlive or KnownHeader.ProxyConnection
                    or KnownHeader.TransferEncoding or KnownHeader.Upgrade or KnownHeader.TE)
                {
                    continue;
                }
                ReadOnlySpan<byte> name = head.Name(i);
                Span<byte> lowered = name.Length <= lower.Length ? lower[..name.Length] : new byte[name.Length];
                Ascii.ToLower(name, lowered, out _);
                _encoder.TryEncode(lowered, head.Value(i), HPackIndexing.Auto, block[length..], out written);
                length += written;
            }
            int maxFrame = (int)_peer.MaxFrameSize;
            Http2FrameWriter.WriteHeaders(_frames.Writer, stream.Id, block[..length], endStream, maxFrame);
            if (commit)
            {
                Commit();
            }
            return true;
        }
    }

    /// <summary>
    /// A trailer section (HTTP/1.1 field lines, see <see cref="TrailerFields"/>) as a HEADERS frame with END_STREAM
    /// (RFC 9113 section 8.1): names lower-cased (section 8.2.1), no pseudo-header (HTTP/1.1 names are tokens, so none
    /// can appear), forbidden trailer fields dropped. Returns 1 when sent, 0 when no field was left to send (the caller
    /// ends the stream with empty DATA), -1 when the stream or connection is gone.
    /// </summary>
    public int SendTrailers(Http2Stream stream, ReadOnlySpan<byte> section)
    {
        Span<byte> lower = stackalloc byte[256];
        lock (_lock)
        {
            if (_framesClosed || stream.Aborted)
            {
                return -1;
            }
            // Worst case per field: name + value + two 5-octet length prefixes + one index octet; a line is at least 3 octets.
            int needed = section.Length * 5 + 64;
            if (_headerScratch.Length < needed)
            {
                _headerScratch = new byte[Math.Max(needed, _headerScratch.Length * 2)];
            }
            Span<byte> block = _headerScratch;
            _encoder.TryBeginHeaderBlock(block, out int length);
            int count = 0;
            var fields = new TrailerFields(section);
            while (fields.MoveNext(out ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value, out _))
            {
                Span<byte> lowered = name.Length <= lower.Length ? lower[..name.Length] : new byte[name.Length];
                Ascii.ToLower(name, lowered, out _);
                // "grpc-status: 0" ends every gRPC call: the dynamic table makes it one octet after the first.
                _encoder.TryEncode(lowered, value, HPackIndexing.Auto, block[length..], out int written);
                length += written;
                count++;
            }
            if (count == 0)
            {
                return 0;
            }
            Http2FrameWriter.WriteHeaders(_frames.Writer, stream.Id, block[..length], endStream: true, (int)_peer.MaxFrameSize);
            Commit();
            return 1;
        }
    }

    /// <summary>
    /// Writes as much of <paramref name="data"/> as the stream and connection windows and the output backlog
    /// allow, as DATA frames of at most the client's SETTINGS_MAX_FRAME_SIZE; END_STREAM goes on the frame that
    /// ends <paramref name="data"/> when <paramref name="endStream"/>. Returns the octets sent (0: wait for
    /// <see cref="Http2Stream.Signal"/>), or -1 when the stream or connection is gone.
    /// </summary>
    public int TrySendData(Http2Stream stream, in ReadOnlySequence<byte> data, bool endStream)
    {
        lock (_lock)
        {
            if (_framesClosed)
            {
                return -1;
            }
            if (stream.Aborted)
            {
                // HEADERS written without a commit (SendHeaders' commit: false) go out in order before the reset.
                CommitPending();
                return -1;
            }
            int wanted = (int)Math.Min(data.Length, 1 << 20);
            int allowed = Math.Min(Math.Min(stream.SendWindow.Available, _sendWindow.Available), wanted);
            if (allowed <= 0 || _unsent >= MaxUnsent)
            {
                CommitPending();
                if (stream.StallSince == 0)
                {
                    stream.StallSince = Environment.TickCount64;
                }
                return 0;
            }
            stream.StallSince = 0;
            stream.SendWindow.Take(allowed);
            _sendWindow.Take(allowed);
            int maxFrame = (int)_peer.MaxFrameSize;
            int offset = 0;
            while (offset < allowed)
            {
                int size = Math.Min(maxFrame, allowed - offset);
                bool last = endStream && offset + size == data.Length;
                Http2FrameWriter.WriteData(_frames.Writer, stream.Id, data.Slice(offset, size), last);
                offset += size;
                Commit();
            }
            return allowed;
        }
    }

    /// <summary>An empty DATA frame with END_STREAM (no window needed).</summary>
    public bool TrySendEnd(Http2Stream stream)
    {
        lock (_lock)
        {
            if (_framesClosed || stream.Aborted)
            {
                return false;
            }
            Http2FrameWriter.WriteData(_frames.Writer, stream.Id, ReadOnlySpan<byte>.Empty, endStream: true);
            Commit();
            return true;
        }
    }

    private void WakeAllLocked()
    {
        foreach (Http2Stream stream in _streams.Values)
        {
            stream.Signal.Set();
        }
    }

    /// <summary>Copies committed frames to the transport. The only code that writes to the transport's output.</summary>
    private async Task WriteLoopAsync()
    {
        PipeReader frames = _frames.Reader;
        PipeWriter output = _transport.Output;
        try
        {
            while (true)
            {
                ReadResult result = await frames.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                long length = buffer.Length;
                if (length > 0)
                {
                    foreach (ReadOnlyMemory<byte> segment in buffer)
                    {
                        output.Write(segment.Span);
                    }
                    ValueTask<FlushResult> flush = output.FlushAsync();
                    FlushResult flushed;
                    if (flush.IsCompleted)
                    {
                        flushed = flush.Result;
                    }
                    else
                    {
                        Volatile.Write(ref _flushStarted, Environment.TickCount64);
                        flushed = await flush.ConfigureAwait(false);
                        Volatile.Write(ref _flushStarted, 0);
                    }
                    frames.AdvanceTo(buffer.End);
                    lock (_lock)
                    {
                        bool wasFull = _unsent >= MaxUnsent;
                        _unsent -= length;
                        _flushed += length;
                        if (_flushed >= _answersEnd)
                        {
                            _unflushedAnswers = 0;
                        }
                        if (wasFull && _unsent < MaxUnsent)
                        {
                            WakeAllLocked();
                        }
                    }
                    if (flushed.IsCompleted || flushed.IsCanceled)
                    {
                        break;
                    }
                }
                else
                {
                    frames.AdvanceTo(buffer.End);
                }
                if (result.IsCompleted)
                {
                    break;
                }
            }
        }
        catch (Exception e)
        {
            ProxyLog.Write(ProxyLogLevel.Debug, "http2_write_failed", ("error", e.Message));
        }
        finally
        {
            frames.Complete();
            // The socket is gone or we are closing: the read loop must not wait for a client that cannot hear us.
            _closeRequested = true;
            _transport.Input.CancelPendingRead();
        }
    }

    // ---- stream completion, drain, timeouts ------------------------------------------------------

    /// <summary>Stream thread: the bridge and the pump are done. Sends the RST_STREAM the stream decided on.</summary>
    public void OnStreamFinished(Http2Stream stream, Http2ErrorCode reset)
    {
        int uncredited = stream.TakeUncredited();
        stream.MarkFinished();
        bool reusable;
        bool closeNow;
        lock (_lock)
        {
            ForgetStreamLocked(stream);
            if (!stream.ResetByPeer)
            {
                if (reset != Http2ErrorCode.NO_ERROR)
                {
                    WriteRstLocked(stream.Id, reset);
                }
                else if (!stream.RequestEnded)
                {
                    // Section 8.1: a complete response before the request ended; the client should stop sending.
                    WriteRstLocked(stream.Id, Http2ErrorCode.NO_ERROR);
                }
                else
                {
                    _closed.Add(stream.Id, StreamClosure.Ended);
                }
            }
            CreditConnectionLocked(uncredited);
            reusable = !_framesClosed && _pool.Count < _limits.MaxConcurrentStreams;
            closeNow = _draining && _activeStreams == 0;
        }
        if (reusable && stream.TryResetPipes())
        {
            lock (_lock)
            {
                _pool.Push(stream);
            }
        }
        if (closeNow)
        {
            _transport.Input.CancelPendingRead();
        }
    }

    /// <summary>Graceful shutdown or reload (section 6.8): GOAWAY with the last stream id; open streams finish.</summary>
    public override void BeginDrain()
    {
        _draining = true;
        bool idle;
        lock (_lock)
        {
            idle = _activeStreams == 0;
        }
        SendGoAway(Http2ErrorCode.NO_ERROR);
        if (idle)
        {
            _transport.Input.CancelPendingRead();
        }
    }

    private volatile bool _aborted;

    public override void Abort()
    {
        _aborted = true;
        _closeRequested = true;
        try
        {
            _transport.Abort();
        }
        catch (Exception)
        {
        }
    }

    /// <summary>
    /// The stream bridges are not in the registry (they are not client connections: no connection count, no drain of
    /// their own); their deadlines (head, body, upstream, write) are checked here, on the same heartbeat.
    /// </summary>
    internal override void Heartbeat(long now)
    {
        base.Heartbeat(now);
        lock (_lock)
        {
            foreach (Http2Stream stream in _streams.Values)
            {
                try
                {
                    if (stream.Bridge is { } bridge)
                    {
                        bridge.CheckDeadline(now);
                        bridge.WatchUpstream();
                    }
                }
                catch (Exception)
                {
                    // As in the registry: a timeout action only cancels reads or aborts; a race with the stream's end is harmless.
                }
            }
        }
    }

    /// <summary>
    /// Heartbeat (about once a second): preface and idle deadlines, and zero-window stalls. A stream that
    /// waited longer than send_stall_timeout for window is reset (CANCEL); a socket that accepts nothing for as
    /// long is aborted. Never blocks: flags, signals and a cancelled read.
    /// </summary>
    protected override void OnTimeout(TimeoutKind kind)
    {
        long now = Environment.TickCount64;
        if (!_prefaceDone && now > _prefaceDeadline)
        {
            Abort();
            return;
        }
        long stall = (long)_limits.SendStallTimeout.TotalMilliseconds;
        long flushStarted = Volatile.Read(ref _flushStarted);
        if (flushStarted != 0 && now - flushStarted > stall)
        {
            Abort();
            return;
        }
        bool idle;
        lock (_lock)
        {
            idle = _activeStreams == 0 && now - _idleSince > (long)_httpLimits.KeepAliveTimeout.TotalMilliseconds;
            foreach (Http2Stream stream in _streams.Values)
            {
                if (stream.StallSince != 0 && now - stream.StallSince > stall)
                {
                    stream.StallTimedOut = true;
                    stream.Signal.Set();
                }
            }
        }
        if (idle)
        {
            _closeRequested = true;
            _transport.Input.CancelPendingRead();
            return;
        }
        Arm(TimeoutKind.Write, s_tick);
    }

    private bool _lingerOnClose;

    /// <summary>
    /// After a connection error: FIN, then read and drop what the client still sends for a moment. Closing with
    /// unread input makes the kernel send RST, which can destroy the GOAWAY before the client reads it (the same
    /// reason as HTTP/1.1's lingering close). Error path: the timer allocation is fine.
    /// </summary>
    private async Task LingerAsync()
    {
        try
        {
            _transport.ShutdownSend();
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            long discarded = 0;
            while (discarded < 1024 * 1024)
            {
                ReadResult result = await _transport.Input.ReadAsync(cts.Token).ConfigureAwait(false);
                discarded += result.Buffer.Length;
                _transport.Input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (Exception)
        {
        }
    }

    private async Task CloseAsync(Task writer)
    {
        Http2Stream[] open;
        lock (_lock)
        {
            open = [.. _streams.Values];
        }
        foreach (Http2Stream stream in open)
        {
            stream.Abort(byPeer: false);
        }
        lock (_lock)
        {
            _framesClosed = true;
            _frames.Writer.Complete();
        }
        try
        {
            // Let the GOAWAY out, but never wait long for a client that does not read.
            await writer.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        }
        catch (Exception)
        {
            Abort();
        }
        try
        {
            _transport.Output.Complete();
        }
        catch (Exception)
        {
        }
        if (_lingerOnClose && !_aborted)
        {
            await LingerAsync().ConfigureAwait(false);
        }
        try
        {
            _transport.Input.Complete();
        }
        catch (Exception)
        {
        }
        _transport.Dispose();
        _decoder.Dispose();
    }
}
