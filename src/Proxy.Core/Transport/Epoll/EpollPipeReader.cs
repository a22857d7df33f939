using System.Buffers;
using System.IO.Pipelines;
using System.Net.Security;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Proxy.Transport.Epoll;

/// <summary>
/// A <see cref="PipeReader"/> straight on an <see cref="EpollSocketStream"/>'s socket: no StreamPipeReader, no async
/// state machine per read. A read that finds data completes synchronously; one that has to wait parks on the
/// stream's read operation (the engine's edge-triggered bookkeeping, unchanged) and continues in a cached callback on
/// the engine thread, which completes this reader's own reusable value-task source. Semantics follow
/// StreamPipeReader's, which the HTTP code was written against:
/// <list type="bullet">
/// <item>Buffers are blocks of a <see cref="BlockMemoryPool"/>, chained as sequence segments; a block is returned as
/// soon as it is fully consumed, and all of them once everything is consumed.</item>
/// <item>With zero-byte reads (client connections) an empty reader first waits for readiness without a buffer, so an
/// idle connection holds no receive memory; then it rents a block and recv()s.</item>
/// <item>ReadAsync returns at once while there are unexamined bytes; after AdvanceTo examined everything, it reads more.</item>
/// <item>CancelPendingRead completes a pending read (or the next one) with IsCanceled; a failure of the socket
/// surfaces as the stream's IOException; end of stream as IsCompleted.</item>
/// </list>
/// Threading: one reader at a time (the pipe contract). CancelPendingRead and Complete may come from other threads
/// (heartbeat, shutdown): they set a flag and take a parked read back from the engine; the reader looks at the flags
/// again right after it parks, so neither is lost. While a recv() into a block may be in flight on the engine thread
/// (<see cref="InFlight"/>), Complete leaves the blocks to the continuation, which returns them.
///
/// Over TLS (<see cref="EpollPipeReader(EpollSocketStream, SslStream, BlockMemoryPool, int)"/>) the bytes come from
/// the SslStream that runs on this socket, and the reader waits for the socket itself before it asks the SslStream:
/// <list type="bullet">
/// <item>Why: a read that the SslStream has to wait for suspends its async methods, and their state-machine boxes come
/// from small per-thread caches that a busy engine thread with many connections keeps missing: the stream pipe reader
/// this replaces allocated 450-500 B per request over 64 keep-alive TLS connections. Waiting on the socket first (our
/// own reusable operation, no box) means the SslStream almost always finds its record there and completes at once.</item>
/// <item>When: only when the SslStream holds nothing. Its read decrypts every complete record it has buffered until the
/// caller's buffer is full, so a read that returned less than the buffer left no record behind (a partial one at most,
/// which needs the socket anyway); after a read that filled the buffer, or before the first one (the client's first
/// request often arrives with its handshake), the reader asks the SslStream directly: with the SslStream's own
/// zero-byte read when it holds no block (so an idle connection still holds none), else with a buffer.</item>
/// <item>Waking: a parked socket read here may belong to the SslStream, which must never see the -1 of
/// <see cref="EpollSocketStream.InterruptRead"/>. So CancelPendingRead and Complete cancel a token instead, one that
/// every TLS wait and read carries: the SslStream then fails its read with OperationCanceledException and keeps its
/// buffered bytes for the next one, as it does under the stream pipe reader.</item>
/// </list>
/// </summary>
internal sealed class EpollPipeReader : PipeReader, IValueTaskSource<ReadResult>
{
    /// <summary>A read with a buffer is parked: the engine may be writing into the tail block.</summary>
    private const int InFlight = 1;
    /// <summary>Complete was called.</summary>
    private const int Completed = 2;

    /// <summary>The parked operation's continuation: one delegate for every pipe, the pipe as its state.</summary>
    private static readonly Action<object?> s_onParkedCompleted = static state => ((EpollPipeReader)state!).OnParkedCompleted();

    private readonly EpollSocketStream _stream;
    /// <summary>TLS: the SslStream over <see cref="_stream"/> that decrypts into our blocks; null for plain TCP.</summary>
    private readonly SslStream? _tls;
    private readonly BlockMemoryPool _pool;
    private readonly bool _useZeroByteReads;
    private readonly int _minimumReadSize;

    private Segment? _head;
    private int _headIndex;
    private Segment? _tail;
    private long _bufferedBytes;
    private bool _examinedEverything;
    private bool _endOfStream;
    private Segment? _spare;

    /// <summary><see cref="InFlight"/> | <see cref="Completed"/>, changed with Interlocked (Complete races with the engine).</summary>
    private int _state;
    private int _cancelRequested;

    private ManualResetValueTaskSourceCore<ReadResult> _core;
    private ValueTask<int> _parked;
    private bool _parkedIsWait;
    private CancellationToken _token;

    /// <summary>TLS: the SslStream may hold a decrypted or complete record (see the class summary), so ask it first.</summary>
    private bool _tlsMayHoldData = true;
    /// <summary>TLS: canceled by CancelPendingRead and Complete to take back a parked wait or read; replaced after.</summary>
    private CancellationTokenSource? _tlsCancel;
    /// <summary>TLS: a caller's cancelable token linked with <see cref="_tlsCancel"/> for one read (rare paths only).</summary>
    private CancellationTokenSource? _tlsLinked;
    /// <summary>TLS: the caller's token of the current read, to tell its cancellation from ours.</summary>
    private CancellationToken _tlsCallerToken;
    /// <summary>TLS: the length of the buffer a parked SslStream read was given.</summary>
    private int _tlsReadLength;
    /// <summary>TLS: the continuation of a parked SslStream read (one delegate per reader).</summary>
    private Action? _onTlsParked;

    public EpollPipeReader(EpollSocketStream stream, BlockMemoryPool pool, bool useZeroByteReads, int minimumReadSize)
    {
        _stream = stream;
        _pool = pool;
        _useZeroByteReads = useZeroByteReads;
        _minimumReadSize = minimumReadSize;
        // The caller's continuation runs on the completing (engine) thread, as with the stream's operations.
        _core.RunContinuationsAsynchronously = false;
    }

    /// <summary>
    /// A client connection over TLS: <paramref name="tls"/> is the authenticated SslStream whose inner stream is
    /// <paramref name="stream"/>. An idle reader holds no block, as with zero-byte reads.
    /// </summary>
    public EpollPipeReader(EpollSocketStream stream, SslStream tls, BlockMemoryPool pool, int minimumReadSize)
        : this(stream, pool, useZeroByteReads: true, minimumReadSize)
    {
        _tls = tls;
        _tlsCancel = new CancellationTokenSource();
    }

    /// <summary>
    /// Completed with nothing parked and no block held: the reader of a plain connection that closed cleanly, which
    /// <see cref="Reuse"/> may start over for the next socket of its stream.
    /// </summary>
    internal bool IsReusable => _tls is null && Volatile.Read(ref _state) == Completed && _head is null;

    /// <summary>As new, keeping its spare segments (see <see cref="EpollSocketTransport"/>); the version moves on, so a stale awaiter fails.</summary>
    internal void Reuse()
    {
        _core.Reset();
        _parked = default;
        _parkedIsWait = false;
        _token = default;
        _headIndex = 0;
        _bufferedBytes = 0;
        _examinedEverything = false;
        _endOfStream = false;
        _cancelRequested = 0;
        Volatile.Write(ref _state, 0);
    }

    /// <summary>Blocks this reader holds (for tests: an idle reader with zero-byte reads holds none).</summary>
    internal int HeldBlocks
    {
        get
        {
            int count = 0;
            for (Segment? s = _head; s is not null; s = s.NextSegment)
            {
                count++;
            }
            return count;
        }
    }

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        if ((Volatile.Read(ref _state) & Completed) != 0)
        {
            ThrowCompleted();
        }
        if (TryReadCore(cancellationToken, fromCaller: true, skipWait: false, out ReadResult result))
        {
            return new ValueTask<ReadResult>(result);
        }
        return new ValueTask<ReadResult>(this, _core.Version);
    }

    public override bool TryRead(out ReadResult result)
    {
        if ((Volatile.Read(ref _state) & Completed) != 0)
        {
            ThrowCompleted();
        }
        return TryTakeBuffered(out result);
    }

    /// <summary>A canceled or buffered result without touching the socket (StreamPipeReader's TryRead rules).</summary>
    private bool TryTakeBuffered(out ReadResult result)
    {
        if (Volatile.Read(ref _cancelRequested) != 0 && Interlocked.Exchange(ref _cancelRequested, 0) != 0)
        {
            result = new ReadResult(Buffer(), isCanceled: true, _endOfStream);
            return true;
        }
        if (_bufferedBytes > 0 && (!_examinedEverything || _endOfStream))
        {
            result = new ReadResult(Buffer(), isCanceled: false, _endOfStream);
            return true;
        }
        result = default;
        return false;
    }

    /// <summary>
    /// Produces a result now (true), or parks on the stream and returns false: the continuation then resumes here and
    /// completes <see cref="_core"/>. Throws the socket's error.
    /// </summary>
    private bool TryReadCore(CancellationToken cancellationToken, bool fromCaller, bool skipWait, out ReadResult result)
    {
        while (true)
        {
            if (TryTakeBuffered(out result))
            {
                return true;
            }
            if (_endOfStream)
            {
                result = new ReadResult(Buffer(), isCanceled: false, isCompleted: true);
                return true;
            }
            if (_tls is not null)
            {
                if (TryReadTls(cancellationToken, fromCaller, skipWait))
                {
                    skipWait = false;
                    continue;
                }
                return false;
            }
            ValueTask<int> pending;
            if (_useZeroByteReads && _bufferedBytes == 0 && !skipWait)
            {
                if (_stream.IsUnwatched && TryReceiveUnwatched())
                {
                    continue;
                }
                // Idle: wait for readiness before renting (costs no syscall when the engine already said ready).
                pending = _stream.ReadAsync(Memory<byte>.Empty, cancellationToken);
                if (!pending.IsCompleted)
                {
                    Park(pending, isWait: true, cancellationToken, fromCaller);
                    return false;
                }
                _ = pending.GetAwaiter().GetResult();
            }
            skipWait = false;
            Memory<byte> memory = WritableTail();
            Interlocked.Or(ref _state, InFlight);
            pending = _stream.ReadAsync(memory, cancellationToken);
            if (!pending.IsCompleted)
            {
                Park(pending, isWait: false, cancellationToken, fromCaller);
                return false;
            }
            int n;
            try
            {
                n = pending.GetAwaiter().GetResult();
            }
            finally
            {
                Interlocked.And(ref _state, ~InFlight);
            }
            Commit(n);
        }
    }

    /// <summary>
    /// TLS: one step of a read. True when bytes (or the end) were committed or a wait came back without them, so the
    /// caller looks at its buffer and flags again; false when parked. Throws the stream's error, and the caller's
    /// cancellation as OperationCanceledException.
    /// </summary>
    private bool TryReadTls(CancellationToken cancellationToken, bool fromCaller, bool skipWait)
    {
        CancellationToken token = TlsToken(cancellationToken);
        ValueTask<int> pending;
        int n;
        if (!skipWait && (!_tlsMayHoldData || _bufferedBytes == 0))
        {
            // The SslStream holds nothing: wait for the socket (no syscall when the engine already said ready). It may
            // hold something, and we hold no block: its own zero-byte read, which returns at once when it has data and
            // otherwise waits for the socket, so an idle connection holds no block (rare: the first read, and after a
            // read that filled our buffer while the parser had consumed everything).
            pending = _tlsMayHoldData ? _tls!.ReadAsync(Memory<byte>.Empty, token) : _stream.ReadAsync(Memory<byte>.Empty, token);
            if (!pending.IsCompleted)
            {
                Park(pending, isWait: true, token, fromCaller, onSslStream: _tlsMayHoldData);
                return false;
            }
            try
            {
                _ = pending.GetAwaiter().GetResult();
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                return EndTlsRead();
            }
            catch
            {
                EndTlsRead();
                throw;
            }
        }
        Memory<byte> memory = WritableTail();
        Interlocked.Or(ref _state, InFlight);
        pending = _tls!.ReadAsync(memory, token);
        if (!pending.IsCompleted)
        {
            _tlsReadLength = memory.Length;
            Park(pending, isWait: false, token, fromCaller, onSslStream: true);
            return false;
        }
        try
        {
            n = pending.GetAwaiter().GetResult();
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            n = -1;
        }
        catch
        {
            EndTlsRead();
            throw;
        }
        finally
        {
            Interlocked.And(ref _state, ~InFlight);
        }
        _tlsMayHoldData = n < 0 || n == memory.Length;
        Commit(n);
        return EndTlsRead();
    }

    /// <summary>
    /// The token of a TLS wait or read: this reader's own (a fresh one after a cancel), linked with the caller's when
    /// it can be canceled (only rare paths pass one: the first read after the handshake, the linger after an error).
    /// </summary>
    private CancellationToken TlsToken(CancellationToken cancellationToken)
    {
        _tlsCallerToken = cancellationToken;
        CancellationTokenSource own = _tlsCancel!;
        if (own.IsCancellationRequested)
        {
            // Canceled: a new source (the old one is dropped, not disposed: this may run inside its Cancel, and it owns
            // no timer or handle). Published before any park, and CancelPendingRead sets its flag before it reads the
            // field, so a cancel that hits the old source is seen by the look at the flags after the park.
            Volatile.Write(ref _tlsCancel, own = new CancellationTokenSource());
        }
        if (!cancellationToken.CanBeCanceled)
        {
            return own.Token;
        }
        _tlsLinked?.Dispose();
        _tlsLinked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, own.Token);
        return _tlsLinked.Token;
    }

    /// <summary>A TLS wait or read is over: drops its linked token source. True: the caller looks at its buffer and flags again.</summary>
    private bool EndTlsRead()
    {
        if (_tlsLinked is { } linked)
        {
            _tlsLinked = null;
            linked.Dispose();
        }
        return true;
    }

    /// <summary>TLS: takes back a parked wait or SslStream read by canceling the token it carries.</summary>
    private void InterruptTls() => Volatile.Read(ref _tlsCancel)!.Cancel();

    /// <summary>
    /// A socket the engine does not watch yet (a new connection) has no readiness to wait on without a syscall: read
    /// into a block at once (a new connection's request is usually there), and give the block back when nothing is,
    /// so an idle connection still holds none. See <see cref="EpollSocketStream.TryReceiveUnwatched"/>.
    /// </summary>
    private bool TryReceiveUnwatched()
    {
        Memory<byte> memory = WritableTail();
        Interlocked.Or(ref _state, InFlight);
        int n;
        try
        {
            n = _stream.TryReceiveUnwatched(memory.Span);
        }
        finally
        {
            Interlocked.And(ref _state, ~InFlight);
        }
        if (n < 0)
        {
            ReleaseAll(); // nothing was buffered: the block goes back
            return false;
        }
        Commit(n);
        return true;
    }

    /// <summary>
    /// Parks on a pending wait or read: the stream's own operation (its cached callback), or with
    /// <paramref name="onSslStream"/> a pending read of the SslStream (a continuation delegate per reader). Either way
    /// the completion resumes <see cref="OnParkedCompleted"/>.
    /// </summary>
    private void Park(ValueTask<int> pending, bool isWait, CancellationToken cancellationToken, bool fromCaller, bool onSslStream = false)
    {
        if (fromCaller)
        {
            // Only a new ReadAsync starts a new result; a continuation parking again keeps the caller's version.
            _core.Reset();
        }
        _parked = pending;
        _parkedIsWait = isWait;
        _token = cancellationToken;
        if (onSslStream)
        {
            pending.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_onTlsParked ??= OnParkedCompleted);
        }
        else
        {
            _stream.OnPendingReadCompleted(s_onParkedCompleted, this);
        }
        // A CancelPendingRead or Complete that ran before the park found nothing to take back: take it now.
        if (Volatile.Read(ref _cancelRequested) != 0 || (Volatile.Read(ref _state) & Completed) != 0)
        {
            Interrupt();
        }
    }

    /// <summary>Engine thread (or an interrupting thread): the parked wait or recv finished.</summary>
    private void OnParkedCompleted()
    {
        ValueTask<int> parked = _parked;
        _parked = default;
        bool wasWait = _parkedIsWait;
        int n = -1;
        Exception? error = null;
        try
        {
            n = parked.GetAwaiter().GetResult();
        }
        catch (OperationCanceledException) when (_tls is not null && !_tlsCallerToken.IsCancellationRequested)
        {
            // Our own token (CancelPendingRead, Complete): no bytes moved, n stays -1; the flags say what happened.
        }
        catch (Exception e)
        {
            error = e;
        }
        if (_tls is not null)
        {
            if (!wasWait)
            {
                // Decided before Commit changes the tail: the read filled the space it was given, or was taken back.
                _tlsMayHoldData = n < 0 || n == _tlsReadLength;
            }
            EndTlsRead();
        }
        int state = wasWait ? Volatile.Read(ref _state) : Interlocked.And(ref _state, ~InFlight);
        if ((state & Completed) != 0)
        {
            // Complete ran while we were parked and left the blocks to us.
            ReleaseAll();
            _core.SetResult(new ReadResult(default, isCanceled: false, isCompleted: true));
            return;
        }
        if (error is not null)
        {
            _core.SetException(error);
            return;
        }
        try
        {
            if (!wasWait && n >= 0)
            {
                Commit(n);
            }
            // The caller's token (a TLS park carries our own, or one linked with it).
            CancellationToken callerToken = _tls is null ? _token : _tlsCallerToken;
            if (TryReadCore(callerToken, fromCaller: false, skipWait: wasWait && n >= 0, out ReadResult result))
            {
                _token = default;
                _tlsCallerToken = default;
                _core.SetResult(result);
            }
        }
        catch (Exception e)
        {
            _core.SetException(e);
        }
    }

    /// <summary>Records <paramref name="n"/> bytes received into the tail (0: end of stream).</summary>
    private void Commit(int n)
    {
        if (n <= 0)
        {
            if (n == 0)
            {
                _endOfStream = true;
            }
            if (_bufferedBytes == 0)
            {
                ReleaseAll();
            }
            return;
        }
        Segment tail = _tail!;
        tail.SetEnd(tail.End + n);
        _bufferedBytes += n;
        _examinedEverything = false;
    }

    /// <summary>The free space at the tail, appending a block when it has less than the minimum read size.</summary>
    private Memory<byte> WritableTail()
    {
        Segment? tail = _tail;
        if (tail is null || tail.Capacity - tail.End < _minimumReadSize)
        {
            Segment? segment = _spare;
            if (segment is null)
            {
                segment = new Segment();
            }
            else
            {
                _spare = segment.NextSpare;
                segment.NextSpare = null;
            }
            segment.Attach(_pool.RentBlock(_pool.BlockSize));
            if (tail is null)
            {
                segment.SetRunningIndex(0);
                _head = segment;
                _headIndex = 0;
            }
            else
            {
                segment.SetRunningIndex(tail.RunningIndex + tail.End);
                tail.SetNext(segment);
            }
            _tail = tail = segment;
        }
        return tail.Writable;
    }

    private ReadOnlySequence<byte> Buffer()
        => _head is null ? default : new ReadOnlySequence<byte>(_head, _headIndex, _tail!, _tail!.End);

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        if ((Volatile.Read(ref _state) & Completed) != 0)
        {
            ThrowCompleted();
        }
        if (consumed.GetObject() is not Segment consumedSegment || _head is null)
        {
            // default(SequencePosition): the empty buffer of an empty reader; everything there is was examined.
            _examinedEverything = true;
            return;
        }
        if (examined.GetObject() is Segment examinedSegment)
        {
            _examinedEverything = examinedSegment == _tail && examined.GetInteger() == _tail.End;
        }
        int consumedIndex = consumed.GetInteger();
        long consumedBytes = consumedSegment.RunningIndex + consumedIndex - (_head.RunningIndex + _headIndex);
        _bufferedBytes -= consumedBytes;
        if (_bufferedBytes == 0)
        {
            // All consumed: return every block, so a connection between requests holds no receive memory.
            ReleaseAll();
            _examinedEverything = true;
            return;
        }
        // Return the blocks before the consumed one (and it too when consumed to its end).
        while (_head != consumedSegment)
        {
            Segment done = _head!;
            _head = done.NextSegment;
            Recycle(done);
        }
        if (consumedIndex == consumedSegment.End && consumedSegment != _tail)
        {
            _head = consumedSegment.NextSegment;
            Recycle(consumedSegment);
            consumedIndex = 0;
        }
        _headIndex = consumedIndex;
    }

    public override void CancelPendingRead()
    {
        Interlocked.Exchange(ref _cancelRequested, 1);
        Interrupt();
    }

    /// <summary>Takes a parked read back: the stream's interrupt on plain TCP, the token on TLS (see the class summary).</summary>
    private void Interrupt()
    {
        if (_tls is null)
        {
            _stream.InterruptRead();
        }
        else
        {
            InterruptTls();
        }
    }

    public override void Complete(Exception? exception = null)
    {
        int old = Interlocked.Or(ref _state, Completed);
        if ((old & Completed) != 0)
        {
            return;
        }
        if ((old & InFlight) != 0)
        {
            // The engine may be receiving into our tail block: the continuation returns the blocks.
            Interrupt();
            return;
        }
        ReleaseAll();
        // A zero-byte wait holds no block; wake it so its caller sees the end rather than waiting for data.
        Interrupt();
    }

    private void ReleaseAll()
    {
        Segment? segment = _head;
        _head = _tail = null;
        _headIndex = 0;
        _bufferedBytes = 0;
        while (segment is not null)
        {
            Segment next = segment.NextSegment!;
            Recycle(segment);
            segment = next;
        }
    }

    private void Recycle(Segment segment)
    {
        // Segment objects are kept for reuse (a free list as long as the longest chain seen): 0 B per read.
        segment.Reset();
        segment.NextSpare = _spare;
        _spare = segment;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowCompleted() => throw new InvalidOperationException("Reading is not allowed after the reader was completed.");

    ReadResult IValueTaskSource<ReadResult>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<ReadResult>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<ReadResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);

    /// <summary>One pooled block in the chain; <see cref="End"/> is how much of it holds received bytes.</summary>
    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        private BlockMemoryPool.Block? _owner;
        private Memory<byte> _block;

        public Segment? NextSpare;

        public int End { get; private set; }
        public int Capacity => _block.Length;
        public Memory<byte> Writable => _block[End..];
        public Segment? NextSegment => (Segment?)Next;

        public void Attach(BlockMemoryPool.Block owner)
        {
            _owner = owner;
            _block = owner.Memory;
            End = 0;
            Memory = default;
        }

        public void SetEnd(int end)
        {
            End = end;
            Memory = _block[..end];
        }

        public void SetRunningIndex(long index) => RunningIndex = index;

        public void SetNext(Segment next) => Next = next;

        public void Reset()
        {
            _owner?.Dispose();
            _owner = null;
            _block = default;
            Memory = default;
            Next = null;
            End = 0;
        }
    }
}
