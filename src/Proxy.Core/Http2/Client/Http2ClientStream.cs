using System.IO.Pipelines;
using System.Threading.Tasks.Sources;
using Proxy.Http;
using Proxy.Http2.FlowControl;
using Proxy.Transport;

namespace Proxy.Http2.Client;

/// <summary>
/// One request/response exchange on an upstream HTTP/2 connection (RFC 9113 section 5.1, client side). Pooled per
/// connection and reset between exchanges, so a warm connection opens streams without allocating.
/// <para>
/// The response arrives through <see cref="ResponseReader"/>: the connection's read loop writes DATA payloads into a
/// pipe (unbounded by the pipe, bounded by the stream's receive window, which is only reopened as the forwarder
/// consumes the bytes: a slow client backpressures the upstream stream and nothing else). The head is signalled by
/// <see cref="HeadReady"/> plus a cancelled read, so the forwarder's one wait (and the client connection's heartbeat
/// timer, which cancels reads on a timeout) covers head, body and trailers alike.
/// </para>
/// Concurrency: state changes happen under <c>lock (this)</c>; pipe flushes, completions and wake-ups happen outside
/// it (they run the forwarder inline), guarded by <see cref="Delivering"/>, so a release meanwhile defers recycling
/// to the delivering thread and a late frame never reaches a stream that went back to the pool. Windows are guarded
/// by the connection's lock.
/// </summary>
internal sealed class Http2ClientStream : IValueTaskSource<bool>
{
    private static readonly PipeOptions s_responseOptions = new(
        pool: BlockMemoryPool.Large, readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline,
        pauseWriterThreshold: 0, resumeWriterThreshold: 0, minimumSegmentSize: BlockMemoryPool.Large.BlockSize,
        useSynchronizationContext: false);

    private readonly Pipe _response = new(s_responseOptions);
    /// <summary>Window waits resume on the thread pool: the waker is the connection's read loop, which must not run a request pump inline.</summary>
    private ManualResetValueTaskSourceCore<bool> _windowSignal = new() { RunContinuationsAsynchronously = true };

    public Http2ClientStream(Http2ClientConnection connection) => Connection = connection;

    public Http2ClientConnection Connection { get; }

    /// <summary>0 until the HEADERS frame is written.</summary>
    public int Id { get; internal set; }

    public ResponseHead Head { get; } = new();
    public ResponseHead Trailers { get; } = new();

    /// <summary>The request's trailer section (field lines) while it is sent; kept with the pooled stream, grown when needed.</summary>
    public byte[] RequestTrailers = [];
    public int RequestTrailersLength;

    /// <summary>Response body bytes (DATA payloads, padding removed); completes at END_STREAM, reset or connection loss.</summary>
    public PipeReader ResponseReader => _response.Reader;
    internal PipeWriter ResponseWriter => _response.Writer;

    private volatile bool _headReady;
    /// <summary>The final (non-1xx) response head is in <see cref="Head"/>.</summary>
    public bool HeadReady => _headReady;

    /// <summary>END_STREAM received: the response (head, body, trailers) is complete.</summary>
    public bool EndReceived { get; internal set; }
    /// <summary>END_STREAM sent: the request is complete.</summary>
    public bool EndSent { get; internal set; }
    /// <summary>The stream ended abnormally: RST_STREAM from the peer, a stream error of ours, GOAWAY or connection loss.</summary>
    public bool Aborted { get; internal set; }
    /// <summary>
    /// The peer never processed the request (RST_STREAM REFUSED_STREAM, or an id above a GOAWAY's last stream id):
    /// safe to retry on another connection as if it was never sent (RFC 9113 section 8.7).
    /// </summary>
    public bool Refused { get; internal set; }
    /// <summary>
    /// The connection failed (closed by the peer, or a connection error) before this stream received any response
    /// byte: the peer may or may not have processed the request, so only an idempotent one may go again.
    /// </summary>
    public bool ConnectionLost { get; internal set; }
    public bool HasTrailers { get; internal set; }
    /// <summary>The error code of an abnormal end (peer's RST_STREAM or ours), for logs.</summary>
    public Http2ErrorCode ResetCode { get; internal set; }

    internal bool WriterCompleted;
    internal bool Released;
    /// <summary>A thread is flushing, completing or waking the pipe outside the lock; pipe writer calls must not overlap.</summary>
    internal bool Delivering;
    /// <summary>Released while <see cref="Delivering"/>: the delivering thread returns the stream to the pool.</summary>
    internal bool RecyclePending;
    /// <summary>The response ended while <see cref="Delivering"/>: the delivering thread completes the pipe.</summary>
    internal bool CompletePending;
    /// <summary>A header block is being decoded for this stream: the head while false, trailers once true.</summary>
    internal bool DecodingTrailers;

    // ---- flow control (guarded by the connection's lock)
    internal FlowControlWindow SendWindow;
    internal FlowControlWindow ReceiveWindow;
    /// <summary>Bytes the forwarder consumed (or padding received) not yet returned to the peer with WINDOW_UPDATE.</summary>
    internal int ReceiveUnacked;
    internal bool WaitingForWindow;

    internal void MarkHeadReady() => _headReady = true;

    // ---- 1xx interim responses (RFC 9110 section 15.2, RFC 9113 section 8.1)

    /// <summary>Cap on interim heads held for the forwarder: a peer that streams 1xx heads cannot make us buffer more.</summary>
    internal const int MaxInterimBytes = 16 * 1024;

    /// <summary>
    /// Interim heads received and not yet taken by the forwarder, already in their HTTP/1.1 form (status line, end-to-end
    /// fields, empty line). Filled by the read loop and drained by the forwarder, both under <c>lock (this)</c>; the
    /// final head reuses <see cref="Head"/>, so an interim head has to be copied out before its block ends. The buffer
    /// is allocated on the first 1xx and kept with the pooled stream: the no-1xx path never touches it.
    /// </summary>
    private byte[] _interim = [];
    private int _interimLength;

    /// <summary>An interim head is waiting for the forwarder (read without the lock: a stale false is caught at the next wake-up).</summary>
    public bool HasInterim => Volatile.Read(ref _interimLength) > 0;

    /// <summary>Read loop, under <c>lock (this)</c>: keeps the 1xx head in <see cref="Head"/> as HTTP/1.1 bytes; false when over the cap (dropped).</summary>
    internal bool AddInterim()
    {
        ResponseHead head = Head;
        string reason = StatusCodes.ReasonPhrase(head.StatusCode);
        // "HTTP/1.1 NNN reason\r\n" + "name: value\r\n" per field + "\r\n".
        int needed = 17 + reason.Length;
        for (int i = 0; i < head.FieldCount; i++)
        {
            needed += head.Fields[i].NameLength + head.Fields[i].ValueLength + 4;
        }
        if (_interimLength + needed > MaxInterimBytes)
        {
            return false;
        }
        if (_interim.Length < _interimLength + needed)
        {
            Array.Resize(ref _interim, Math.Min(MaxInterimBytes, Math.Max(_interimLength + needed, 512)));
        }
        Span<byte> span = _interim.AsSpan(_interimLength);
        "HTTP/1.1 "u8.CopyTo(span);
        int at = 9;
        span[at++] = (byte)('0' + head.StatusCode / 100);
        span[at++] = (byte)('0' + head.StatusCode / 10 % 10);
        span[at++] = (byte)('0' + head.StatusCode % 10);
        span[at++] = (byte)' ';
        at += System.Text.Encoding.ASCII.GetBytes(reason, span[at..]);
        span[at++] = (byte)'\r';
        span[at++] = (byte)'\n';
        for (int i = 0; i < head.FieldCount; i++)
        {
            // Hop-by-hop fields are for the upstream connection only (RFC 9110 section 7.6.1), as on the HTTP/1.1 path.
            if (head.Fields[i].HopByHop)
            {
                continue;
            }
            ReadOnlySpan<byte> name = head.Name(i);
            name.CopyTo(span[at..]);
            at += name.Length;
            span[at++] = (byte)':';
            span[at++] = (byte)' ';
            ReadOnlySpan<byte> value = head.Value(i);
            value.CopyTo(span[at..]);
            at += value.Length;
            span[at++] = (byte)'\r';
            span[at++] = (byte)'\n';
        }
        span[at++] = (byte)'\r';
        span[at++] = (byte)'\n';
        Volatile.Write(ref _interimLength, _interimLength + at);
        return true;
    }

    /// <summary>
    /// Forwarder: moves the waiting interim heads to <paramref name="output"/> (or drops them when
    /// <paramref name="output"/> is null: an HTTP/1.0 client, RFC 9110 section 15.2). Returns true when any was written.
    /// </summary>
    public bool TakeInterim(PipeWriter? output)
    {
        lock (this)
        {
            int length = _interimLength;
            if (length == 0)
            {
                return false;
            }
            output?.Write(_interim.AsSpan(0, length));
            Volatile.Write(ref _interimLength, 0);
            return output is not null;
        }
    }

    /// <summary>Prepares a pooled stream for a new exchange.</summary>
    internal void Reset(int sendWindow, int receiveWindow)
    {
        Id = 0;
        Head.Reset();
        Trailers.Reset();
        _headReady = false;
        EndReceived = EndSent = Aborted = Refused = ConnectionLost = HasTrailers = false;
        ResetCode = Http2ErrorCode.NO_ERROR;
        WriterCompleted = Released = DecodingTrailers = WaitingForWindow = false;
        Delivering = RecyclePending = CompletePending = false;
        SendWindow = new FlowControlWindow(sendWindow);
        ReceiveWindow = new FlowControlWindow(receiveWindow);
        ReceiveUnacked = 0;
        _interimLength = 0;
    }

    /// <summary>After both pipe ends completed: ready for the next exchange.</summary>
    internal void ResetPipe() => _response.Reset();

    // ---- send-window wait

    internal ValueTask<bool> WindowWait => new(this, _windowSignal.Version);

    internal void PrepareWindowWait()
    {
        _windowSignal.Reset();
        WaitingForWindow = true;
    }

    internal void SignalWindow(bool open) => _windowSignal.SetResult(open);

    bool IValueTaskSource<bool>.GetResult(short token) => _windowSignal.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<bool>.GetStatus(short token) => _windowSignal.GetStatus(token);

    void IValueTaskSource<bool>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _windowSignal.OnCompleted(continuation, state, token, flags);
}
