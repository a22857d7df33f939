using System.Buffers;
using System.IO.Pipelines;
using System.Net.Security;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Proxy.Transport.Epoll;

/// <summary>
/// A <see cref="PipeWriter"/> straight on an <see cref="EpollSocketStream"/>'s socket. GetSpan/Advance fill pooled
/// blocks; FlushAsync sends them at once, in the caller's thread: one block with send(), several with one sendmsg()
/// (MSG_NOSIGNAL both). Only when the socket buffer is full does it park on the stream's write operation (EPOLLOUT,
/// the engine sends the rest of the current block) and continue in a cached callback on the engine thread, which
/// completes this writer's reusable value-task source. Every block goes back to the pool once flushed, so a
/// connection between responses holds no send memory. Semantics follow StreamPipeWriter's: a flush completes when
/// every byte was handed to the kernel; Complete sends what is still buffered (blocking, like Stream.Write); a socket
/// failure surfaces as the stream's IOException; CancelPendingFlush makes a pending (or the next) flush return
/// IsCanceled with the unsent bytes kept.
/// Over TLS (<see cref="EpollPipeWriter(EpollSocketStream, SslStream, BlockMemoryPool)"/>) each block goes to the
/// SslStream as one write (one record), which encrypts it and sends it on the same socket; a write the socket cannot
/// take at once parks on the SslStream's own task instead of the stream's write operation. It replaces the
/// framework's stream pipe writer there, which took a lock for its cancellation source and rented and returned a
/// pool block owner on every flush. A flush taken back over TLS (CancelPendingFlush, Complete) fails instead of
/// returning IsCanceled: part of a record may have left, and the session cannot continue after it.
/// Threading: one writer at a time; CancelPendingFlush and Complete may come from other threads (same flag-then-take-back
/// scheme as <see cref="EpollPipeReader"/>); while a flush is parked (<see cref="InFlight"/>) the engine owns the
/// blocks and Complete leaves them to the continuation.
/// </summary>
internal sealed class EpollPipeWriter : PipeWriter, IValueTaskSource<FlushResult>
{
    private const int InFlight = 1;
    private const int Completed = 2;
    /// <summary>Blocks handed to one sendmsg(): a 16 KiB block each, so 256 KiB per syscall at most.</summary>
    private const int MaxVectors = 16;

    /// <summary>The parked operation's continuation: one delegate for every pipe, the pipe as its state.</summary>
    private static readonly Action<object?> s_onParkedCompleted = static state => ((EpollPipeWriter)state!).OnParkedCompleted();

    private readonly EpollSocketStream _stream;
    private readonly SslStream? _tls;
    private readonly BlockMemoryPool _pool;
    /// <summary>TLS: the continuation of a parked SslStream write (one delegate per writer, made on first use).</summary>
    private Action? _onTlsParked;

    private Segment? _head;
    private Segment? _tail;
    private Segment? _spare;
    private long _unflushed;

    private int _state;
    private int _cancelRequested;
    private ManualResetValueTaskSourceCore<FlushResult> _core;
    private ValueTask _parked;
    private CancellationToken _token;

    public EpollPipeWriter(EpollSocketStream stream, BlockMemoryPool pool)
    {
        _stream = stream;
        _pool = pool;
        _core.RunContinuationsAsynchronously = false;
    }

    /// <summary>A client connection over TLS: <paramref name="tls"/> is the authenticated SslStream over <paramref name="stream"/>.</summary>
    public EpollPipeWriter(EpollSocketStream stream, SslStream tls, BlockMemoryPool pool)
        : this(stream, pool)
    {
        _tls = tls;
    }

    /// <summary>Blocks this writer holds (for tests: none once a flush completed).</summary>
    internal int HeldBlocks
    {
        get
        {
            int count = 0;
            for (Segment? s = _head; s is not null; s = s.Next)
            {
                count++;
            }
            return count;
        }
    }

    /// <summary>
    /// Completed with nothing parked and no block held: the writer of a plain connection that closed cleanly, which
    /// <see cref="Reuse"/> may start over for the next socket of its stream.
    /// </summary>
    internal bool IsReusable => _tls is null && Volatile.Read(ref _state) == Completed && _head is null;

    /// <summary>As new, keeping its spare segments (see <see cref="EpollSocketTransport"/>); the version moves on, so a stale awaiter fails.</summary>
    internal void Reuse()
    {
        _core.Reset();
        _parked = default;
        _token = default;
        _unflushed = 0;
        _cancelRequested = 0;
        Volatile.Write(ref _state, 0);
    }

    public override bool CanGetUnflushedBytes => true;

    public override long UnflushedBytes => _unflushed;

    public override Memory<byte> GetMemory(int sizeHint = 0) => Reserve(sizeHint).Writable;

    public override Span<byte> GetSpan(int sizeHint = 0) => Reserve(sizeHint).Writable.Span;

    private Segment Reserve(int sizeHint)
    {
        if ((_state & Completed) != 0)
        {
            ThrowCompleted();
        }
        ArgumentOutOfRangeException.ThrowIfNegative(sizeHint);
        Segment? tail = _tail;
        int needed = Math.Max(sizeHint, 1);
        if (tail is not null && tail.Capacity - tail.End >= needed)
        {
            return tail;
        }
        Segment? segment = _spare;
        if (segment is null)
        {
            segment = new Segment();
        }
        else
        {
            _spare = segment.Next;
        }
        // Larger than a block: BlockMemoryPool serves it from the shared pool (rare; the callers ask for small spans).
        segment.Attach(_pool.RentBlock(Math.Max(needed, _pool.BlockSize)));
        if (tail is null)
        {
            _head = segment;
        }
        else
        {
            tail.Next = segment;
        }
        _tail = segment;
        return segment;
    }

    public override void Advance(int bytes)
    {
        Segment? tail = _tail;
        if (tail is null || (uint)bytes > (uint)(tail.Capacity - tail.End))
        {
            if (bytes == 0)
            {
                return;
            }
            throw new ArgumentOutOfRangeException(nameof(bytes));
        }
        tail.End += bytes;
        _unflushed += bytes;
    }

    public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
    {
        if ((Volatile.Read(ref _state) & Completed) != 0)
        {
            ThrowCompleted();
        }
        if (TryFlushCore(cancellationToken, fromCaller: true, out FlushResult result))
        {
            return new ValueTask<FlushResult>(result);
        }
        return new ValueTask<FlushResult>(this, _core.Version);
    }

    /// <summary>Sends everything buffered (true), or parks on the stream's write and returns false. Throws the socket's error.</summary>
    private bool TryFlushCore(CancellationToken cancellationToken, bool fromCaller, out FlushResult result)
    {
        while (true)
        {
            if (Volatile.Read(ref _cancelRequested) != 0 && Interlocked.Exchange(ref _cancelRequested, 0) != 0)
            {
                result = new FlushResult(isCanceled: true, isCompleted: false);
                return true;
            }
            Segment? head = _head;
            if (head is null || _unflushed == 0)
            {
                ReleaseAll();
                result = default;
                return true;
            }
            if (_tls is not null || head.Next is null || head.Next.End == 0)
            {
                // One block (the usual response head and small body): send() it, waiting for EPOLLOUT if need be.
                // Over TLS every block goes this way, as one record.
                ReadOnlyMemory<byte> pending = head.Unsent;
                Interlocked.Or(ref _state, InFlight);
                ValueTask write = _tls is null ? _stream.WriteAsync(pending, cancellationToken) : _tls.WriteAsync(pending, cancellationToken);
                if (!write.IsCompleted)
                {
                    Park(write, cancellationToken, fromCaller);
                    result = default;
                    return false;
                }
                try
                {
                    write.GetAwaiter().GetResult();
                }
                finally
                {
                    Interlocked.And(ref _state, ~InFlight);
                }
                Consume(pending.Length);
                continue;
            }
            long sent = SendVector(head);
            if (sent > 0)
            {
                Consume(sent);
                continue;
            }
            // EAGAIN: the socket buffer is full. Wait on the rest of the first block (the stream tries once more,
            // then parks for EPOLLOUT); the blocks after it go out with the next sendmsg().
            ReadOnlyMemory<byte> first = head.Unsent;
            Interlocked.Or(ref _state, InFlight);
            ValueTask wait = _stream.WriteAsync(first, cancellationToken);
            if (!wait.IsCompleted)
            {
                Park(wait, cancellationToken, fromCaller);
                result = default;
                return false;
            }
            try
            {
                wait.GetAwaiter().GetResult();
            }
            finally
            {
                Interlocked.And(ref _state, ~InFlight);
            }
            Consume(first.Length);
        }
    }

    /// <summary>sendmsg() of up to <see cref="MaxVectors"/> blocks from <paramref name="head"/>; 0 on EAGAIN; throws on errors.</summary>
    private unsafe long SendVector(Segment head)
    {
        EpollNative.IoVec* vectors = stackalloc EpollNative.IoVec[MaxVectors];
        PinnedBlocks handles = default;
        int count = 0;
        long total = 0;
        try
        {
            for (Segment? s = head; s is not null && count < MaxVectors; s = s.Next)
            {
                ReadOnlyMemory<byte> unsent = s.Unsent;
                if (unsent.IsEmpty)
                {
                    continue;
                }
                // Pool blocks live on the pinned heap, so this pin is cheap; a shared-pool array (larger than a block) is not.
                handles[count] = unsent.Pin();
                vectors[count].Base = (byte*)handles[count].Pointer;
                vectors[count].Length = (nuint)unsent.Length;
                total += unsent.Length;
                count++;
            }
            long n = _stream.SendVector(vectors, count, total, out int errno);
            if (n >= 0)
            {
                return n;
            }
            if (errno == EpollNative.EAGAIN)
            {
                return 0;
            }
            throw EpollSocketStream.TransferError(errno);
        }
        finally
        {
            for (int i = 0; i < count; i++)
            {
                handles[i].Dispose();
            }
        }
    }

    /// <summary>Marks <paramref name="sent"/> bytes from the head as sent, returning the blocks that are done.</summary>
    private void Consume(long sent)
    {
        _unflushed -= sent;
        while (sent > 0)
        {
            Segment head = _head!;
            int unsent = head.End - head.Start;
            if (sent < unsent)
            {
                head.Start += (int)sent;
                return;
            }
            sent -= unsent;
            head.Start = head.End;
            if (head.Next is null)
            {
                return; // the tail stays (it may take more bytes); the flush loop releases it
            }
            _head = head.Next;
            Recycle(head);
        }
    }

    private void Park(ValueTask pending, CancellationToken cancellationToken, bool fromCaller)
    {
        if (fromCaller)
        {
            _core.Reset();
        }
        _parked = pending;
        _token = cancellationToken;
        if (_tls is null)
        {
            _stream.OnPendingWriteCompleted(s_onParkedCompleted, this);
        }
        else
        {
            // The SslStream waits on the stream's write operation itself; this continuation runs when its write ends.
            pending.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_onTlsParked ??= OnParkedCompleted);
        }
        if (Volatile.Read(ref _cancelRequested) != 0 || (Volatile.Read(ref _state) & Completed) != 0)
        {
            _stream.InterruptWrite();
        }
    }

    /// <summary>Engine thread: the parked write sent the rest of its block (or failed, or was taken back).</summary>
    private void OnParkedCompleted()
    {
        ValueTask parked = _parked;
        _parked = default;
        Exception? error = null;
        try
        {
            parked.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            error = e;
        }
        int state = Interlocked.And(ref _state, ~InFlight);
        if ((state & Completed) != 0)
        {
            // Complete ran meanwhile and left the blocks to us; what was not sent is dropped.
            ReleaseAll();
            _core.SetResult(new FlushResult(isCanceled: false, isCompleted: true));
            return;
        }
        if (error is OperationCanceledException && Volatile.Read(ref _cancelRequested) != 0 && !_token.IsCancellationRequested)
        {
            // Taken back by CancelPendingFlush: the bytes stay buffered; the loop returns IsCanceled.
            error = null;
        }
        else if (error is null)
        {
            Consume(_head!.End - _head.Start);
        }
        if (error is not null)
        {
            ReleaseAll();
            _core.SetException(error);
            return;
        }
        try
        {
            if (TryFlushCore(_token, fromCaller: false, out FlushResult result))
            {
                _token = default;
                _core.SetResult(result);
            }
        }
        catch (Exception e)
        {
            ReleaseAll();
            _core.SetException(e);
        }
    }

    public override void CancelPendingFlush()
    {
        Interlocked.Exchange(ref _cancelRequested, 1);
        _stream.InterruptWrite();
    }

    /// <summary>
    /// Sends what is still buffered unless <paramref name="exception"/> says the connection failed (blocking, like
    /// StreamPipeWriter's Complete over Stream.Write), then returns the blocks. A flush parked meanwhile is taken
    /// back instead, and its continuation returns the blocks.
    /// </summary>
    public override void Complete(Exception? exception = null)
    {
        int old = Interlocked.Or(ref _state, Completed);
        if ((old & Completed) != 0)
        {
            return;
        }
        if ((old & InFlight) != 0)
        {
            _stream.InterruptWrite();
            return;
        }
        try
        {
            if (exception is null)
            {
                for (Segment? s = _head; s is not null; s = s.Next)
                {
                    if (s.End > s.Start)
                    {
                        ((Stream?)_tls ?? _stream).Write(s.Unsent.Span);
                    }
                }
            }
        }
        finally
        {
            ReleaseAll();
        }
    }

    private void ReleaseAll()
    {
        Segment? segment = _head;
        _head = _tail = null;
        _unflushed = 0;
        while (segment is not null)
        {
            Segment? next = segment.Next;
            Recycle(segment);
            segment = next;
        }
    }

    private void Recycle(Segment segment)
    {
        segment.Reset();
        segment.Next = _spare;
        _spare = segment;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowCompleted() => throw new InvalidOperationException("Writing is not allowed after the writer was completed.");

    FlushResult IValueTaskSource<FlushResult>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<FlushResult>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<FlushResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);

    /// <summary>The pins of one sendmsg() (MemoryHandle holds a reference, so it cannot be stackalloc'ed).</summary>
    [InlineArray(MaxVectors)]
    private struct PinnedBlocks
    {
        private MemoryHandle _element;
    }

    /// <summary>One pooled block: [Start, End) written but not yet sent.</summary>
    private sealed class Segment
    {
        private BlockMemoryPool.Block? _owner;
        private Memory<byte> _block;

        public Segment? Next;
        public int Start;
        public int End;

        public int Capacity => _block.Length;
        public Memory<byte> Writable => _block[End..];
        public ReadOnlyMemory<byte> Unsent => _block[Start..End];

        public void Attach(BlockMemoryPool.Block owner)
        {
            _owner = owner;
            _block = owner.Memory;
            Start = End = 0;
            Next = null;
        }

        public void Reset()
        {
            _owner?.Dispose();
            _owner = null;
            _block = default;
            Next = null;
            Start = End = 0;
        }
    }
}
