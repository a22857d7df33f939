using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;

namespace Proxy.Transport.Epoll;

/// <summary>
/// A <see cref="Stream"/> over a connected socket (a runtime <see cref="Socket"/>, or an accepted fd owned by an
/// <see cref="AcceptedSocketHandle"/>) driven by an <see cref="EpollEngine"/> instead of the
/// runtime's socket engine, so a proxied request costs one recv() and one send() per side:
/// <list type="bullet">
/// <item>The socket is registered once, edge-triggered, the first time an operation has to wait (until then every
/// operation just tries its syscall, as the runtime does). Each direction remembers whether it is ready: an event marks
/// it ready; a recv()/send() that moved less than asked (or EAGAIN) marks it drained, because with edge-triggered epoll
/// a short read means the queue is empty and the next arrival raises a new event.</item>
/// <item>A zero-byte read (the pipes' "wait for data before renting a buffer") completes at once when ready and
/// otherwise waits for the event without a syscall; a read recv()s only when ready, else waits and then recv()s on
/// the engine thread.</item>
/// <item>A write send()s at once; the rest of a partial send goes out on the engine thread at the next EPOLLOUT.</item>
/// </list>
/// Waiting operations complete through a reusable <see cref="IValueTaskSource"/> per direction, inline on the
/// engine thread: no allocation per read or write in steady state.
///
/// Ownership: the stream holds a reference on the socket's handle (<see cref="SafeHandle.DangerousAddRef"/>) while
/// registered with the engine, so the fd cannot be closed and reused under the epoll registration; each syscall takes its own
/// reference too, so a close racing with it fails it (EBADF) instead of hitting a reused fd. Dispose this stream
/// BEFORE closing the socket (SocketPipes.Abort/Close and EpollSocketTransport do it in that order): Socket.Close spins
/// while our reference is held (an AcceptedSocketHandle just defers its close() until the last reference goes). As a safety net, a Socket.Close from another thread disconnects the socket while it spins (an abortive
/// close, RST); the engine sees EPOLLHUP and detaches (below), which lets the close finish. On the engine thread
/// itself that spin would never end: there, always go through SocketPipes.
///
/// EPOLLHUP (both directions shut, or reset) is terminal: every later recv/send completes at once, so the stream
/// detaches from the engine there and then (EPOLL_CTL_DEL, reference released) and keeps working without events.
/// Never call the Socket's own async methods: the runtime's engine would then register the fd as well.
/// </summary>
internal sealed class EpollSocketStream : Stream
{
    /// <summary>Low bit of <see cref="Operation.State"/>: an operation is parked, waiting for an event.</summary>
    private const int Waiting = 1;

    private static readonly Action<object?> s_onCanceled = static state => ((Operation)state!).OnCanceled();

    // Not readonly: a client connection's stream is reused for the next accepted socket (Reuse).
    private SafeHandle _handle;
    private int _fd;

    /// <summary>
    /// MSG_NOSIGNAL|MSG_DONTWAIT, plus MSG_MORE once the bytes left to send are the connection's last
    /// (<see cref="HoldTailForClose"/>).
    /// </summary>
    private int _sendFlags = EpollNative.MSG_DONTWAIT | EpollNative.MSG_NOSIGNAL;
    private EpollEngine _engine;
    private readonly Operation _read;
    private readonly Operation _write;
    private const int Unregistered = 0;
    private const int Registered = 1;
    private const int Detached = 2;
    private const uint ReadEvents = EpollNative.EPOLLIN | EpollNative.EPOLLRDHUP;

    /// <summary>
    /// Registration is lazy, like the runtime's: a socket whose operations all complete at once (a short-lived
    /// connection whose request is there on accept) never costs an epoll_ctl or an engine wake-up. Until registered,
    /// every operation tries its syscall; the first EAGAIN registers (EPOLL_CTL_ADD reports what became ready since)
    /// and parks. Detached (EPOLLHUP or Dispose): out of the epoll set, our handle reference released.
    /// Transitions happen under <see cref="_lock"/>, so an ADD can never follow the release of the fd.
    /// </summary>
    private int _registration;
    /// <summary>EPOLLOUT is added (EPOLL_CTL_MOD) only once a write has to wait: most never do, and an EPOLLOUT in the
    /// initial mask would wake the engine for every new socket just to say it is writable.</summary>
    private bool _watchingWrites;
    private readonly Lock _lock = new();
    private volatile bool _disposed;

    /// <summary>Registers <paramref name="socket"/> (connected, or connecting when <paramref name="connecting"/>).</summary>
    public EpollSocketStream(Socket socket, bool connecting = false)
        : this(socket.SafeHandle, connecting)
    {
    }

    /// <summary>Over an accepted connection's fd, owned without a runtime Socket (<see cref="AcceptedSocketHandle"/>).</summary>
    public EpollSocketStream(SafeHandle handle, bool connecting = false)
    {
        _handle = handle;
        _read = new Operation(this, isRead: true);
        _write = new Operation(this, isRead: false);
        // A connected socket starts ready both ways (-1 never equals an even sequence): a client usually sends its
        // request right behind the connect, and trying recv() at once keeps the first request on the accepting thread
        // instead of handing it to the engine thread through the initial EPOLL_CTL_ADD event (at worst one EAGAIN).
        // A connecting socket has nothing to read, and EPOLLOUT says when the connect finished.
        _read.Drained = connecting ? 0 : -1;
        _write.Drained = connecting ? 0 : -1;
        _fd = (int)_handle.DangerousGetHandle();
        // An accepted socket stays on the engine whose thread accepted it (EpollAcceptor): its events then arrive on
        // the thread that already runs its connection, with no thread switch. Connects are spread round robin.
        _engine = connecting ? EpollEngine.Next() : EpollEngine.Current ?? EpollEngine.Next();
        if (connecting && !EnsureWatching(writes: true))
        {
            throw new ObjectDisposedException(nameof(Socket));
        }
    }

    /// <summary>The engine this socket is (or was last) registered with.</summary>
    internal EpollEngine Engine => _engine;

    /// <summary>
    /// True when this stream may serve another socket (<see cref="Reuse"/>): disposed (out of its engine's slots, so
    /// an event of the old registration still in a batch carries a token that no longer matches), neither direction
    /// parked. Only its engine's own thread may reuse it: that thread cannot be inside <see cref="OnEvents"/> for the
    /// old registration at the same time.
    /// </summary>
    internal bool IsReusable => _disposed && _read.IsIdle && _write.IsIdle;

    /// <summary>
    /// Starts over on a newly accepted socket, as the constructor would for an accepted fd: unregistered, both
    /// directions ready. On its engine's thread only, after <see cref="IsReusable"/> said yes.
    /// </summary>
    internal void Reuse(SafeHandle handle)
    {
        Debug.Assert(EpollEngine.Current == _engine);
        _handle = handle;
        _fd = (int)handle.DangerousGetHandle();
        Token = 0;
        ReceiveCalls = 0;
        _watchingWrites = false;
        _sendFlags = EpollNative.MSG_DONTWAIT | EpollNative.MSG_NOSIGNAL;
        _read.Reuse();
        _write.Reuse();
        Volatile.Write(ref _registration, Unregistered);
        _disposed = false;
    }

    /// <summary>
    /// The connection closes once what is sent from now on has gone: sends carry MSG_MORE, so the kernel keeps a short
    /// last segment until the FIN of the close (or shutdown) that follows, and sends both in one packet.
    /// </summary>
    internal void HoldTailForClose() => _sendFlags = EpollNative.MSG_DONTWAIT | EpollNative.MSG_NOSIGNAL | EpollNative.MSG_MORE;

    /// <summary>The engine's token for this registration (slot and generation); set by the engine.</summary>
    internal ulong Token;

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    private bool IsDetached => Volatile.Read(ref _registration) == Detached;

    /// <summary>
    /// False only when the engine knows the receive queue is empty: the socket is registered, the last recv() found it
    /// drained, and no readiness event came since. A volatile read, no syscall: a pooled upstream connection is checked
    /// with it before every reuse (<see cref="Upstream.UpstreamConnection.LooksDead"/>), as nginx closes an idle
    /// upstream connection the moment it becomes readable.
    /// </summary>
    internal bool MayHaveData
        => Volatile.Read(ref _registration) != Registered || _read.Sticky || Volatile.Read(ref _read.State) != _read.Drained;

    /// <summary>
    /// Makes sure events for this direction will come before an operation parks; false when detached (no event will
    /// ever come). The caller read its state before its failed syscall: whatever became ready since is reported by
    /// the ADD or MOD itself, which bumps the sequence and makes the park fail and the syscall run again.
    /// </summary>
    private bool EnsureWatching(bool writes)
    {
        if (Volatile.Read(ref _registration) == Registered && (!writes || Volatile.Read(ref _watchingWrites)))
        {
            return true;
        }
        lock (_lock)
        {
            if (_registration == Detached)
            {
                return false;
            }
            if (_registration == Unregistered)
            {
                // The registration's reference: the fd stays this socket's until EPOLL_CTL_DEL (Detach).
                bool added = false;
                try
                {
                    _handle.DangerousAddRef(ref added);
                    _engine.Register(this, _fd, writes ? ReadEvents | EpollNative.EPOLLOUT : ReadEvents);
                }
                catch (Exception e)
                {
                    if (added)
                    {
                        _handle.DangerousRelease();
                    }
                    Volatile.Write(ref _registration, Detached);
                    if (e is ObjectDisposedException)
                    {
                        return false; // the socket was closed meanwhile
                    }
                    throw;
                }
                _watchingWrites = writes;
                Volatile.Write(ref _registration, Registered);
            }
            else if (writes && !_watchingWrites)
            {
                _engine.Modify(Token, _fd, ReadEvents | EpollNative.EPOLLOUT);
                Volatile.Write(ref _watchingWrites, true);
            }
            return true;
        }
    }

    /// <summary>
    /// Connects <paramref name="socket"/> without the runtime's engine (a ConnectAsync would register the fd with it,
    /// and both engines would then wake for every event): a non-blocking connect(), then EPOLLOUT from our engine.
    /// </summary>
    public static async ValueTask<EpollSocketStream> ConnectAsync(Socket socket, EndPoint endPoint, CancellationToken cancellationToken)
    {
        socket.Blocking = false;
        try
        {
            socket.Connect(endPoint);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress)
        {
        }
        var stream = new EpollSocketStream(socket, connecting: true);
        try
        {
            await stream.WaitWritableAsync(cancellationToken).ConfigureAwait(false);
            int error = (int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error)!;
            if (error != 0)
            {
                throw new SocketException(error);
            }
            // Socket.Connected polls once and records the connection after a non-blocking connect (RemoteEndPoint
            // and Connected then work as after a blocking one).
            if (!socket.Connected)
            {
                throw new SocketException((int)SocketError.NotConnected);
            }
            return stream;
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_disposed)
        {
            return ValueTask.FromException<int>(new ObjectDisposedException(nameof(EpollSocketStream)));
        }
        Operation op = _read;
        while (true)
        {
            int state = Volatile.Read(ref op.State);
            bool registered = Volatile.Read(ref _registration) == Registered;
            if (state != op.Drained || !registered)
            {
                if (buffer.IsEmpty && registered)
                {
                    // Zero-byte read: ready is all it asks, and ready costs no syscall.
                    return new ValueTask<int>(0);
                }
                // Unregistered, there are no events to know readiness from: ask the kernel (a zero-byte recv()
                // returns 0 when data or end of stream is there, EAGAIN otherwise), as the runtime does.
                int n = Receive(buffer.Span, state, out int errno);
                if (n >= 0)
                {
                    return new ValueTask<int>(n);
                }
                if (errno != EpollNative.EAGAIN)
                {
                    return ValueTask.FromException<int>(Error(errno));
                }
                if (!EnsureWatching(writes: false))
                {
                    return ValueTask.FromException<int>(Error(9));
                }
                continue;
            }
            if (cancellationToken.IsCancellationRequested)
            {
                return ValueTask.FromCanceled<int>(cancellationToken);
            }
            op.Buffer = buffer;
            if (op.TryPark(state, cancellationToken))
            {
                return new ValueTask<int>(op, op.Core.Version);
            }
        }
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_disposed)
        {
            return ValueTask.FromException(new ObjectDisposedException(nameof(EpollSocketStream)));
        }
        Operation op = _write;
        while (!buffer.IsEmpty)
        {
            int state = Volatile.Read(ref op.State);
            if (state != op.Drained || !Volatile.Read(ref _watchingWrites))
            {
                int n = Send(buffer.Span, state, out int errno);
                if (n == buffer.Length)
                {
                    break;
                }
                if (n >= 0)
                {
                    buffer = buffer.Slice(n);
                }
                else if (errno != EpollNative.EAGAIN)
                {
                    return ValueTask.FromException(Error(errno));
                }
                // Partial or EAGAIN: the socket buffer is full; from here on EPOLLOUT says when it has room.
                if (!EnsureWatching(writes: true))
                {
                    return ValueTask.FromException(Error(9));
                }
                continue;
            }
            if (cancellationToken.IsCancellationRequested)
            {
                return ValueTask.FromCanceled(cancellationToken);
            }
            op.Buffer = MemoryMarshal.AsMemory(buffer);
            if (op.TryPark(state, cancellationToken))
            {
                return new ValueTask(op, op.Core.Version);
            }
        }
        return default;
    }

    /// <summary>
    /// For the pipes: calls <paramref name="continuation"/>(<paramref name="state"/>) once the read that
    /// <see cref="ReadAsync(Memory{byte}, CancellationToken)"/> just returned pending has completed, as awaiting that
    /// ValueTask would (the token is the one it carries: only the next park resets the operation), but with the
    /// pipe's static delegate instead of an Action per pipe, two per connection.
    /// </summary>
    internal void OnPendingReadCompleted(Action<object?> continuation, object state)
        => _read.OnCompleted(continuation, state, _read.Core.Version, ValueTaskSourceOnCompletedFlags.None);

    /// <summary>As <see cref="OnPendingReadCompleted"/>, for the write that WriteAsync just returned pending.</summary>
    internal void OnPendingWriteCompleted(Action<object?> continuation, object state)
        => _write.OnCompleted(continuation, state, _write.Core.Version, ValueTaskSourceOnCompletedFlags.None);

    /// <summary>
    /// For <see cref="EpollPipeReader"/> (CancelPendingRead, Complete): takes a parked read back from the engine and
    /// completes it with -1, a result no recv() gives, so the reader knows no bytes moved. No-op when nothing is parked
    /// (the reader looks at its flags again after it parks, so a call racing with the park is not lost).
    /// </summary>
    internal void InterruptRead() => _read.Interrupt();

    /// <summary>
    /// For <see cref="EpollPipeWriter"/> (CancelPendingFlush, Complete): takes a parked write back from the engine and
    /// fails it with <see cref="OperationCanceledException"/> (rare path: the allocation does not matter).
    /// </summary>
    internal void InterruptWrite() => _write.Interrupt();

    /// <summary>
    /// sendmsg() of several buffers in one call (MSG_DONTWAIT|MSG_NOSIGNAL). Returns the bytes sent, or -1 with errno;
    /// a partial send or EAGAIN marks the write direction drained like <see cref="Send"/>. The caller then waits with
    /// <see cref="WriteAsync(ReadOnlyMemory{byte}, CancellationToken)"/> on what is left of its first buffer.
    /// </summary>
    internal unsafe long SendVector(EpollNative.IoVec* vectors, int count, long total, out int errno)
    {
        int state = Volatile.Read(ref _write.State);
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            EpollNative.MsgHdr message = default;
            message.Iov = vectors;
            message.IovLen = (nuint)count;
            nint n;
            do
            {
                n = EpollNative.SendMsg(_fd, &message, _sendFlags);
                errno = n < 0 ? Marshal.GetLastSystemError() : 0;
            }
            while (n < 0 && errno == EpollNative.EINTR);
            if (n < 0)
            {
                if (errno == EpollNative.EAGAIN)
                {
                    _write.Drained = state & ~Waiting;
                }
                return -1;
            }
            if (n < total && !_write.Sticky)
            {
                _write.Drained = state & ~Waiting;
            }
            return n;
        }
        catch (ObjectDisposedException)
        {
            errno = 9;
            return -1;
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    /// <summary>The IOException a failed send/recv reports (the same as the stream's), for the pipes.</summary>
    internal static IOException TransferError(int errno) => Error(errno);

    /// <summary>Completes when EPOLLOUT (or an error) was reported: the end of a non-blocking connect.</summary>
    private ValueTask WaitWritableAsync(CancellationToken cancellationToken)
    {
        Operation op = _write;
        while (true)
        {
            int state = Volatile.Read(ref op.State);
            if (state != op.Drained)
            {
                return default;
            }
            cancellationToken.ThrowIfCancellationRequested();
            op.Buffer = default;
            if (op.TryPark(state, cancellationToken))
            {
                return new ValueTask(op, op.Core.Version);
            }
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    /// <summary>recv() calls made for this socket (tests count syscalls with it; a plain increment, owner thread only).</summary>
    internal int ReceiveCalls;

    /// <summary>True until an operation of this socket first has to wait (the engine knows nothing of its readiness yet).</summary>
    internal bool IsUnwatched => Volatile.Read(ref _registration) == Unregistered;

    /// <summary>
    /// For a socket the engine does not watch yet: one recv() into <paramref name="buffer"/>. Returns the bytes
    /// received (0: end of stream), or -1 when nothing is there; the socket is then watched, so the zero-byte wait that
    /// follows parks without a syscall of its own. Returns -1 at once, without a syscall, once the socket is watched.
    /// <para>Why: before the first wait, a zero-byte wait has no readiness to go by and costs a recv() of its own, and a
    /// new connection's request is usually already there; a connection per request paid two recv() for it.</para>
    /// </summary>
    internal int TryReceiveUnwatched(Span<byte> buffer)
    {
        if (_disposed || Volatile.Read(ref _registration) != Unregistered)
        {
            return -1;
        }
        int n = Receive(buffer, Volatile.Read(ref _read.State), out int errno);
        if (n >= 0)
        {
            return n;
        }
        if (errno != EpollNative.EAGAIN)
        {
            throw Error(errno);
        }
        // False when detached meanwhile: the wait that follows reports it.
        _ = EnsureWatching(writes: false);
        return -1;
    }

    /// <summary>
    /// Blocking read, for callers that insist (none on the data plane): waits with poll(), not the engine, so it
    /// cannot deadlock even on the engine thread.
    /// </summary>
    public override int Read(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        while (true)
        {
            int n = Receive(buffer, Volatile.Read(ref _read.State), out int errno);
            if (n >= 0)
            {
                return n;
            }
            if (errno != EpollNative.EAGAIN)
            {
                throw Error(errno);
            }
            PollBlocking(EpollNative.POLLIN);
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    /// <summary>Blocking write (StreamPipeWriter.Complete flushes what is left through it); waits with poll().</summary>
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        while (!buffer.IsEmpty)
        {
            int n = Send(buffer, Volatile.Read(ref _write.State), out int errno);
            if (n >= 0)
            {
                buffer = buffer.Slice(n);
                continue;
            }
            if (errno != EpollNative.EAGAIN)
            {
                throw Error(errno);
            }
            PollBlocking(EpollNative.POLLOUT);
        }
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>
    /// Stream.Close would also call GC.SuppressFinalize, which this stream (no finalizer) does not need: a runtime call
    /// per connection for nothing.
    /// </summary>
    public override void Close() => Dispose(true);

    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            _disposed = true;
            Detach(closing: true);
            _read.TryAbortAborted();
            _write.TryAbortAborted();
        }
        base.Dispose(disposing);
    }

    /// <summary>
    /// Leaves the engine: EPOLL_CTL_DEL while our handle reference still pins the fd, then releases the reference
    /// (the socket may be closed from here on). A parked operation is failed by the caller (Dispose) or, after
    /// EPOLLHUP, completes through the signal that follows.
    /// <para>When <paramref name="closing"/> (Dispose: the socket is closed right after, see <see cref="SocketPipes"/>)
    /// only the slot is freed. Closing the fd drops its epoll registration (the kernel removes it when the socket's
    /// file is released), so a DEL would be a syscall per connection for nothing; an event that still comes before the
    /// close carries a token whose slot is empty or reused, and is dropped.</para>
    /// </summary>
    private void Detach(bool closing = false)
    {
        lock (_lock)
        {
            if (_registration != Registered)
            {
                Volatile.Write(ref _registration, Detached);
                return;
            }
            if (closing)
            {
                _engine.Release(Token);
            }
            else
            {
                _engine.Deregister(Token, _fd);
            }
            Volatile.Write(ref _registration, Detached);
        }
        _handle.DangerousRelease();
    }

    /// <summary>Called by the engine thread for each event of this socket.</summary>
    internal void OnEvents(uint events)
    {
        // End of stream and errors are levels, not edges: once reported they raise no further event, so a short
        // read after them must not count as drained (data and FIN often arrive together: recv returns the data
        // short, and the next recv returns 0 without any new event).
        if ((events & (EpollNative.EPOLLRDHUP | EpollNative.EPOLLHUP | EpollNative.EPOLLERR)) != 0)
        {
            _read.Sticky = true;
        }
        if ((events & (EpollNative.EPOLLHUP | EpollNative.EPOLLERR)) != 0)
        {
            _write.Sticky = true;
        }
        if ((events & EpollNative.EPOLLHUP) != 0)
        {
            // Terminal: no further event can matter. Detaching here also ends a Socket.Close spinning on our reference.
            Detach();
        }
        if ((events & (EpollNative.EPOLLIN | EpollNative.EPOLLRDHUP | EpollNative.EPOLLHUP | EpollNative.EPOLLERR)) != 0)
        {
            _read.Signal();
        }
        if ((events & (EpollNative.EPOLLOUT | EpollNative.EPOLLHUP | EpollNative.EPOLLERR)) != 0)
        {
            _write.Signal();
        }
    }

    /// <summary>
    /// recv() with MSG_DONTWAIT. A short read (0 &lt; n &lt; asked) or EAGAIN records <paramref name="state"/>, read
    /// before the call, as drained: an event after that read bumps the sequence, so it is never lost. End of stream
    /// (0) stays ready: it is permanent and raises no further edge. Returns -1 with errno on failure.
    /// </summary>
    private unsafe int Receive(Span<byte> buffer, int state, out int errno)
    {
        ReceiveCalls++;
        bool added = false;
        try
        {
            // Per-call reference: Deregister may release ours and the socket be closed while this call is on its way,
            // and a closed fd number can already belong to another socket.
            _handle.DangerousAddRef(ref added);
            nint n;
            fixed (byte* p = buffer)
            {
                do
                {
                    n = EpollNative.Recv(_fd, p, (nuint)buffer.Length, EpollNative.MSG_DONTWAIT);
                    errno = n < 0 ? Marshal.GetLastSystemError() : 0;
                }
                while (n < 0 && errno == EpollNative.EINTR);
            }
            if (n < 0)
            {
                if (errno == EpollNative.EAGAIN)
                {
                    _read.Drained = state & ~Waiting;
                }
                return -1;
            }
            if (n > 0 && n < buffer.Length && !_read.Sticky)
            {
                _read.Drained = state & ~Waiting;
            }
            return (int)n;
        }
        catch (ObjectDisposedException)
        {
            errno = EpollNative.EBADF; // the socket was closed
            return -1;
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    /// <summary>send() with MSG_DONTWAIT|MSG_NOSIGNAL (EPIPE, not SIGPIPE); a partial send or EAGAIN marks drained.</summary>
    private unsafe int Send(ReadOnlySpan<byte> buffer, int state, out int errno)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            nint n;
            fixed (byte* p = buffer)
            {
                do
                {
                    n = EpollNative.Send(_fd, p, (nuint)buffer.Length, _sendFlags);
                    errno = n < 0 ? Marshal.GetLastSystemError() : 0;
                }
                while (n < 0 && errno == EpollNative.EINTR);
            }
            if (n < 0)
            {
                if (errno == EpollNative.EAGAIN)
                {
                    _write.Drained = state & ~Waiting;
                }
                return -1;
            }
            if (n < buffer.Length && !_write.Sticky)
            {
                _write.Drained = state & ~Waiting;
            }
            return (int)n;
        }
        catch (ObjectDisposedException)
        {
            errno = 9;
            return -1;
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    private unsafe void PollBlocking(short events)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            EpollNative.PollFd fd = new() { Fd = _fd, Events = events };
            _ = EpollNative.Poll(&fd, 1, -1);
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static IOException Error(int errno)
    {
        var socketError = new SocketException((int)EpollNative.ToSocketError(errno));
        return new IOException($"Unable to transfer data on the transport connection: {socketError.Message}.", socketError);
    }

    /// <summary>
    /// One direction's readiness and its parked operation.
    ///
    /// <see cref="State"/> is an event sequence (stepping by 2) with <see cref="Waiting"/> in the low bit; it is the
    /// only field both sides write, always by compare-exchange, which settles the race between an event and an
    /// operation parking itself:
    /// <list type="bullet">
    /// <item>the engine bumps the sequence and clears Waiting in one CAS; if Waiting was set, it now owns the parked
    /// operation and completes it (after the recv/send it was parked for);</item>
    /// <item>an operation parks with CAS(seq -> seq|Waiting) against the sequence it found drained; if an event came in
    /// between, the CAS fails and it retries the syscall instead of waiting for an event that already happened;</item>
    /// <item>cancellation and Dispose take a parked operation with CAS(seq|Waiting -> seq), so exactly one of
    /// engine, canceller and disposer completes it.</item>
    /// </list>
    /// <see cref="Drained"/> (the sequence at which a syscall found the queue empty or full) is written only by the
    /// side that currently owns the direction: the caller while not parked, the engine while completing.
    /// </summary>
    private sealed class Operation : IValueTaskSource<int>, IValueTaskSource
    {
        private readonly EpollSocketStream _owner;
        private readonly bool _isRead;
        public int State;
        public int Drained;
        /// <summary>End of stream or an error was reported (set by the engine thread before it signals).</summary>
        public volatile bool Sticky;
        public Memory<byte> Buffer;
        public ManualResetValueTaskSourceCore<int> Core;
        private CancellationToken _token;
        private CancellationTokenRegistration _registration;
        /// <summary>
        /// Interrupt requests so far, and the count when the current operation first parked. A request that finds no
        /// Waiting bit because the engine owns the operation (between an event and its re-park) would be lost; the
        /// re-park compares the counts and honours it. A request older than the operation is left to the pipes' own
        /// flags (they look at them after parking), so it never interrupts a later, unrelated operation.
        /// </summary>
        private int _interrupts;
        private int _interruptsAtPark;

        public Operation(EpollSocketStream owner, bool isRead)
        {
            _owner = owner;
            _isRead = isRead;
            // Continuations run on the completing thread (the engine's), like the runtime's inline completions.
            Core.RunContinuationsAsynchronously = false;
        }

        /// <summary>Not parked, and no cancellation registration left: nothing of the last socket can complete it.</summary>
        public bool IsIdle => (Volatile.Read(ref State) & Waiting) == 0 && _registration.Token == default;

        /// <summary>As new, for the next socket (see <see cref="EpollSocketStream.Reuse"/>); the version moves on, so a stale awaiter fails.</summary>
        public void Reuse()
        {
            Core.Reset();
            Buffer = default;
            _token = default;
            _registration = default;
            Sticky = false;
            _interrupts = 0;
            _interruptsAtPark = 0;
            Drained = -1;
            Volatile.Write(ref State, 0);
        }

        /// <summary>Parks this operation unless an event arrived since <paramref name="state"/> was read.</summary>
        public bool TryPark(int state, CancellationToken cancellationToken)
        {
            Core.Reset();
            _interruptsAtPark = Volatile.Read(ref _interrupts);
            if (cancellationToken.CanBeCanceled)
            {
                // Registered before parking, so the completer (who clears Waiting) always sees it to unregister.
                _token = cancellationToken;
                _registration = cancellationToken.UnsafeRegister(s_onCanceled, this);
            }
            if (Interlocked.CompareExchange(ref State, state | Waiting, state) != state)
            {
                _registration.Unregister();
                _registration = default;
                _token = default;
                Buffer = default;
                return false;
            }
            // A cancel, interrupt or Dispose that ran before we parked found nothing to take: look again now that we are parked.
            if (cancellationToken.IsCancellationRequested)
            {
                OnCanceled();
            }
            else if (Volatile.Read(ref _interrupts) != _interruptsAtPark)
            {
                InterruptParked();
            }
            else if (_owner.IsDetached)
            {
                // No event will come any more: disposed, or detached at EPOLLHUP (after which EAGAIN should not happen).
                TryAbortAborted();
            }
            return true;
        }

        /// <summary>Engine thread: a readiness event for this direction.</summary>
        public void Signal()
        {
            int old;
            while (true)
            {
                old = Volatile.Read(ref State);
                if (Interlocked.CompareExchange(ref State, (old & ~Waiting) + 2, old) == old)
                {
                    break;
                }
            }
            if ((old & Waiting) != 0)
            {
                Resume();
            }
        }

        /// <summary>Owner of a parked operation after an event: finish its syscall, or park again (spurious event).</summary>
        private void Resume()
        {
            while (true)
            {
                int state = Volatile.Read(ref State);
                if (state == Drained)
                {
                    if (Interlocked.CompareExchange(ref State, state | Waiting, state) == state)
                    {
                        // Parked again; a cancel, interrupt or Dispose meanwhile found no Waiting bit, so look again.
                        if (_token.IsCancellationRequested)
                        {
                            OnCanceled();
                        }
                        else if (Volatile.Read(ref _interrupts) != _interruptsAtPark)
                        {
                            InterruptParked();
                        }
                        else if (_owner.IsDetached)
                        {
                            // No event will come any more: disposed, or detached at EPOLLHUP (after which EAGAIN should not happen).
                            TryAbortAborted();
                        }
                        return;
                    }
                    continue;
                }
                if (Buffer.IsEmpty)
                {
                    Complete(0, null);
                    return;
                }
                int errno;
                if (_isRead)
                {
                    int n = _owner.Receive(Buffer.Span, state, out errno);
                    if (n >= 0)
                    {
                        Complete(n, null);
                        return;
                    }
                }
                else
                {
                    int n = _owner.Send(Buffer.Span, state, out errno);
                    if (n >= 0)
                    {
                        Buffer = Buffer.Slice(n);
                        continue;
                    }
                }
                if (errno != EpollNative.EAGAIN)
                {
                    Complete(0, Error(errno));
                    return;
                }
            }
        }

        public void OnCanceled()
        {
            if (TryTake())
            {
                Complete(0, new OperationCanceledException(_token));
            }
        }

        /// <summary>Takes a parked operation back without a syscall: a read completes with -1, a write fails.</summary>
        public void Interrupt()
        {
            // Counted first (a full fence), then TryTake reads State: either it sees Waiting, or the parker's CAS
            // comes after the count and its look at the count sees this request.
            Interlocked.Increment(ref _interrupts);
            InterruptParked();
        }

        private void InterruptParked()
        {
            if (TryTake())
            {
                if (_isRead)
                {
                    Complete(-1, null);
                }
                else
                {
                    Complete(0, new OperationCanceledException());
                }
            }
        }

        public void TryAbortAborted()
        {
            if ((Volatile.Read(ref State) & Waiting) != 0 && TryTake())
            {
                Complete(0, new IOException("The connection was closed.", new SocketException((int)SocketError.OperationAborted)));
            }
        }

        private bool TryTake()
        {
            while (true)
            {
                int state = Volatile.Read(ref State);
                if ((state & Waiting) == 0)
                {
                    return false;
                }
                if (Interlocked.CompareExchange(ref State, state & ~Waiting, state) == state)
                {
                    return true;
                }
            }
        }

        private void Complete(int result, Exception? error)
        {
            _registration.Unregister();
            _registration = default;
            _token = default;
            Buffer = default;
            if (error is null)
            {
                Core.SetResult(result);
            }
            else
            {
                Core.SetException(error);
            }
        }

        public ValueTaskSourceStatus GetStatus(short token) => Core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
            => Core.OnCompleted(continuation, state, token, flags);

        int IValueTaskSource<int>.GetResult(short token) => Core.GetResult(token);

        void IValueTaskSource.GetResult(short token) => Core.GetResult(token);
    }
}
