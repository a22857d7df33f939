using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Proxy.Transport;

/// <summary>
/// Reads a client socket into pooled blocks, adapting how it waits to how busy the connection is.
/// <para>
/// A busy connection receives straight into a block: one <c>recv()</c> per arrival. An idle one must not pin a
/// block while it waits (10,000 idle keep-alive connections must stay cheap), so it waits with a zero-byte
/// receive and rents only when data is there, at the price of an extra <c>recv()</c> per wake-up. The stock
/// stream reader picks one mode for the life of the connection, so it paid the zero-byte receive on every
/// request (3.3 <c>recv()</c> calls per proxied request where 2 are needed). Here a connection starts cold
/// (zero-byte waits); a wait answered within a few milliseconds makes it hot (direct receives); the heartbeat
/// parks a hot receive that has been pending for a second with nothing buffered: it is cancelled internally,
/// its block goes back to the pool and the connection is cold again. Parking is invisible to the caller,
/// whose read just stays pending. So a block is held only by connections that were busy in the last second
/// or two, and a connection that made one request and went quiet never holds one.
/// </para>
/// <para>
/// Completion runs on whatever thread finishes the socket operation (with inline socket completions, the
/// event loop) and resumes the caller there; no async state machine is allocated per read.
/// </para>
/// </summary>
internal sealed class SocketPipeReader : PipeReader, IValueTaskSource<ReadResult>
{
    /// <summary>Below this much free space in the last block, a receive goes into a fresh block instead.</summary>
    private const int MinimumReceiveSize = 1024;

    /// <summary>A receive pending this long with nothing buffered is parked (turned into a zero-byte wait).</summary>
    public const long ParkAfterMilliseconds = 1000;

    /// <summary>A zero-byte wait answered within this time turns the connection hot.</summary>
    private const long HotWaitMilliseconds = 50;

    private readonly Socket _socket;
    private readonly BlockMemoryPool _pool;
    private readonly Action _onReceiveCompleted;

    // Buffered bytes: a chain of segments from _head[_headIndex] to _tail[_tail.End].
    private Segment? _head;
    private int _headIndex;
    private Segment? _tail;
    private Segment? _spare;
    /// <summary>True when the caller examined everything buffered: the next read must receive more.</summary>
    private bool _examinedAll = true;
    private bool _socketCompleted;
    private bool _readerCompleted;

    private ManualResetValueTaskSourceCore<ReadResult> _source;
    private ConfiguredValueTaskAwaitable<int>.ConfiguredValueTaskAwaiter _awaiter;
    private CancellationTokenSource _cts = new();
    private volatile bool _zeroByteReceive;
    /// <summary>The pending receive started with nothing buffered: only such a wait may be parked.</summary>
    private volatile bool _nothingBuffered;
    /// <summary>
    /// Hot: the last wait for data was short (a client sending request after request), so waits receive straight
    /// into a block. Cold (the start, and after a park): waits are zero-byte. The first receive of a connection
    /// goes straight into a block either way: a new connection's request is usually already there.
    /// </summary>
    private bool _hot;
    private bool _receivedOnce;
    private bool _wentPending;
    /// <summary>A zero-byte wait just reported data (or EOF): the next receive takes it into a block.</summary>
    private bool _dataReady;
    private long _startedAt;
    /// <summary>Environment.TickCount64 when the pending receive started; 0 when none is pending.</summary>
    private long _pendingSince;
    private volatile bool _cancelRequested;
    /// <summary>Counts receives started; the heartbeat names the one it parks by this number.</summary>
    private long _receiveSequence;
    private long _parkSequence = -1;

    public SocketPipeReader(Socket socket, BlockMemoryPool pool)
    {
        _socket = socket;
        _pool = pool;
        _onReceiveCompleted = OnReceiveCompleted;
        _source.RunContinuationsAsynchronously = false;
    }

    /// <summary>True while a receive with a block is pending and could be parked (for tests and diagnostics).</summary>
    internal bool HoldsBlockWhileWaiting => Volatile.Read(ref _pendingSince) != 0 && !_zeroByteReceive;

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        if (cancellationToken.CanBeCanceled)
        {
            // Deadlines are enforced through CancelPendingRead by the connection's heartbeat, never by tokens.
            throw new NotSupportedException("SocketPipeReader is cancelled with CancelPendingRead.");
        }
        ObjectDisposedException.ThrowIf(_readerCompleted, this);
        // Unexamined data first: a cancellation returned with data the caller never looked at could strand a
        // complete request in the buffer (callers mark a cancelled result as examined). It is delivered next.
        if (!_examinedAll)
        {
            return new ValueTask<ReadResult>(new ReadResult(Buffered(), isCanceled: false, _socketCompleted));
        }
        if (_cancelRequested)
        {
            _cancelRequested = false;
            return new ValueTask<ReadResult>(new ReadResult(Buffered(), isCanceled: true, _socketCompleted));
        }
        if (_socketCompleted)
        {
            return new ValueTask<ReadResult>(new ReadResult(Buffered(), isCanceled: false, isCompleted: true));
        }
        _source.Reset();
        if (Receive())
        {
            return new ValueTask<ReadResult>(_source.GetResult(_source.Version));
        }
        return new ValueTask<ReadResult>(this, _source.Version);
    }

    public override bool TryRead(out ReadResult result)
    {
        ObjectDisposedException.ThrowIf(_readerCompleted, this);
        if (!_examinedAll)
        {
            result = new ReadResult(Buffered(), isCanceled: false, _socketCompleted);
            return true;
        }
        if (_cancelRequested)
        {
            _cancelRequested = false;
            result = new ReadResult(Buffered(), isCanceled: true, _socketCompleted);
            return true;
        }
        if (_socketCompleted)
        {
            result = new ReadResult(Buffered(), isCanceled: false, isCompleted: true);
            return true;
        }
        // Nothing new is buffered; a non-blocking peek at the socket would cost a syscall the callers do not need.
        result = default;
        return false;
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        // An empty buffer's positions point at an empty array, not at a segment.
        var consumedSegment = consumed.GetObject() as Segment;
        int consumedIndex = consumed.GetInteger();
        var examinedSegment = examined.GetObject() as Segment;
        int examinedIndex = examined.GetInteger();

        _examinedAll = _tail is null || (ReferenceEquals(examinedSegment, _tail) && examinedIndex == _tail.End);
        if (consumedSegment is null)
        {
            return; // an empty buffer was consumed
        }

        // Return every block before the consumed one.
        while (_head is not null && !ReferenceEquals(_head, consumedSegment))
        {
            Segment done = _head;
            _head = (Segment?)done.Next;
            Release(done);
        }
        _headIndex = consumedIndex;
        if (_head is not null && ReferenceEquals(_head, _tail) && _headIndex == _tail!.End)
        {
            // Everything consumed: give the last block back too, so a connection between requests holds nothing.
            Release(_head);
            _head = _tail = null;
            _headIndex = 0;
            _examinedAll = true;
        }
    }

    public override void CancelPendingRead()
    {
        _cancelRequested = true;
        if (Volatile.Read(ref _pendingSince) != 0)
        {
            CancelReceive();
        }
    }

    /// <summary>
    /// Called by the heartbeat: parks a receive that has waited with a block for at least
    /// <see cref="ParkAfterMilliseconds"/> and has nothing buffered, so an idle connection holds no block.
    /// </summary>
    public void ParkIfIdle(long now)
    {
        long sequence = Volatile.Read(ref _receiveSequence);
        long since = Volatile.Read(ref _pendingSince);
        if (since != 0 && !_zeroByteReceive && _nothingBuffered && now - since >= ParkAfterMilliseconds)
        {
            // Names the receive to park: if it completes meanwhile and another starts, that one is not parked.
            Volatile.Write(ref _parkSequence, sequence);
            CancelReceive();
        }
    }

    public override void Complete(Exception? exception = null)
    {
        if (_readerCompleted)
        {
            return;
        }
        _readerCompleted = true;
        if (Volatile.Read(ref _pendingSince) == 0)
        {
            ReleaseAll();
        }
        // else: the pending receive still writes into the tail block; it is released when that receive ends.
    }

    private void CancelReceive()
    {
        try
        {
            Volatile.Read(ref _cts).Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Starts receives until one is pending (false) or a result is ready in <see cref="_source"/> (true).</summary>
    private bool Receive()
    {
        while (true)
        {
            if (_cts.IsCancellationRequested)
            {
                // Cancelled by a park or a CancelPendingRead that raced with a completed receive: take a fresh source.
                _cts.Dispose();
                Volatile.Write(ref _cts, new CancellationTokenSource());
            }
            if (_cancelRequested)
            {
                _cancelRequested = false;
                _source.SetResult(new ReadResult(Buffered(), isCanceled: true, isCompleted: false));
                return true;
            }

            Memory<byte> memory;
            if (_receivedOnce && !_hot && !_dataReady)
            {
                _zeroByteReceive = true;
                memory = Memory<byte>.Empty;
            }
            else
            {
                _zeroByteReceive = false;
                _dataReady = false;
                _nothingBuffered = _head is null;
                memory = TailMemory();
            }
            Volatile.Write(ref _receiveSequence, _receiveSequence + 1);
            _startedAt = Environment.TickCount64;
            Volatile.Write(ref _pendingSince, _startedAt | 1);
            ValueTask<int> receive;
            try
            {
                receive = _socket.ReceiveAsync(memory, SocketFlags.None, _cts.Token);
            }
            catch (Exception e)
            {
                Volatile.Write(ref _pendingSince, 0);
                _source.SetException(e);
                return true;
            }
            _awaiter = receive.ConfigureAwait(false).GetAwaiter();
            _wentPending = !_awaiter.IsCompleted;
            if (_wentPending)
            {
                _awaiter.UnsafeOnCompleted(_onReceiveCompleted);
                return false;
            }
            if (Completed())
            {
                return true;
            }
        }
    }

    private void OnReceiveCompleted()
    {
        if (!Completed())
        {
            Receive();
        }
    }

    /// <summary>Takes the result of the receive that just finished; true when the caller's read is answered.</summary>
    private bool Completed()
    {
        int received;
        Exception? error = null;
        bool cancelled = false;
        try
        {
            received = _awaiter.GetResult();
        }
        catch (OperationCanceledException)
        {
            received = 0;
            cancelled = true;
        }
        catch (Exception e)
        {
            received = 0;
            error = e;
        }
        finally
        {
            _awaiter = default;
            Volatile.Write(ref _pendingSince, 0);
        }

        if (_readerCompleted)
        {
            // The connection gave up on this reader while the receive was pending.
            ReleaseAll();
            _source.SetResult(new ReadResult(default, isCanceled: true, isCompleted: true));
            return true;
        }
        if (cancelled)
        {
            ReleaseEmptyTail();
            if (_cancelRequested)
            {
                _cancelRequested = false;
                _source.SetResult(new ReadResult(Buffered(), isCanceled: true, isCompleted: false));
                return true;
            }
            if (Volatile.Read(ref _parkSequence) == _receiveSequence)
            {
                _hot = false; // wait again, this time without a block
                _receivedOnce = true;
            }
            return false; // parked, or a park aimed at an earlier receive: receive again either way
        }
        if (error is not null)
        {
            ReleaseEmptyTail();
            _source.SetException(error);
            return true;
        }
        if (_zeroByteReceive)
        {
            // Data (or EOF) is there: receive it into a block now. A wait that had to wait, briefly, says the
            // client is busy: the next waits receive directly.
            _hot = _wentPending && Environment.TickCount64 - _startedAt <= HotWaitMilliseconds;
            _receivedOnce = true;
            _dataReady = true;
            return false;
        }
        _receivedOnce = true;
        if (received == 0)
        {
            _socketCompleted = true;
            ReleaseEmptyTail();
        }
        else
        {
            _tail!.End += received;
        }
        _examinedAll = false;
        // A CancelPendingRead that raced with this data stays requested: it is delivered on the next read.
        _source.SetResult(new ReadResult(Buffered(), isCanceled: false, _socketCompleted));
        return true;
    }

    private ReadOnlySequence<byte> Buffered()
    {
        if (_head is null)
        {
            return ReadOnlySequence<byte>.Empty;
        }
        return new ReadOnlySequence<byte>(_head, _headIndex, _tail!, _tail!.End);
    }

    /// <summary>The free space at the end of the chain, appending a fresh block when the last one is (nearly) full.</summary>
    private Memory<byte> TailMemory()
    {
        if (_tail is null || _tail.Capacity - _tail.End < MinimumReceiveSize)
        {
            Segment segment = _spare ?? new Segment();
            _spare = null;
            segment.Attach(_pool.Rent(), _tail is null ? 0 : _tail.RunningIndex + _tail.End);
            if (_tail is null)
            {
                _head = _tail = segment;
                _headIndex = 0;
            }
            else
            {
                _tail.SetNext(segment);
                _tail = segment;
            }
        }
        return _tail.Free;
    }

    /// <summary>After a receive that brought nothing, drops a tail block that holds no data.</summary>
    private void ReleaseEmptyTail()
    {
        if (_tail is null || _tail.End > (ReferenceEquals(_tail, _head) ? _headIndex : 0))
        {
            return;
        }
        if (ReferenceEquals(_tail, _head))
        {
            Release(_tail);
            _head = _tail = null;
            _headIndex = 0;
            return;
        }
        Segment previous = _head!;
        while (!ReferenceEquals(previous.Next, _tail))
        {
            previous = (Segment)previous.Next!;
        }
        Release(_tail);
        previous.SetNext(null);
        _tail = previous;
    }

    private void Release(Segment segment)
    {
        segment.Detach();
        _spare = segment;
    }

    private void ReleaseAll()
    {
        while (_head is not null)
        {
            Segment done = _head;
            _head = (Segment?)done.Next;
            Release(done);
        }
        _tail = null;
        _headIndex = 0;
        _cts.Dispose();
    }

    ReadResult IValueTaskSource<ReadResult>.GetResult(short token) => _source.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<ReadResult>.GetStatus(short token) => _source.GetStatus(token);

    void IValueTaskSource<ReadResult>.OnCompleted(Action<object?> continuation, object? state, short token,
        ValueTaskSourceOnCompletedFlags flags) => _source.OnCompleted(continuation, state, token, flags);

    /// <summary>One pooled block in the chain of buffered bytes.</summary>
    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        private IMemoryOwner<byte>? _owner;
        private Memory<byte> _block;

        /// <summary>Bytes received into this block.</summary>
        public int End
        {
            get => _end;
            set
            {
                _end = value;
                Memory = _block[..value];
            }
        }
        private int _end;

        public int Capacity => _block.Length;

        public Memory<byte> Free => _block[_end..];

        public void Attach(IMemoryOwner<byte> owner, long runningIndex)
        {
            _owner = owner;
            _block = owner.Memory;
            RunningIndex = runningIndex;
            Next = null;
            End = 0;
        }

        public void SetNext(Segment? next) => Next = next;

        public void Detach()
        {
            Debug.Assert(_owner is not null);
            _owner?.Dispose();
            _owner = null;
            _block = default;
            Memory = default;
            Next = null;
            _end = 0;
        }
    }
}
