using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Proxy.Diagnostics;

namespace Proxy.Transport.Epoll;

/// <summary>
/// One epoll instance and the thread that waits on it. Connected sockets are registered once, edge-triggered, for both
/// directions (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET): the kernel then reports each change of readiness once, and the
/// <see cref="EpollSocketStream"/> remembers it, so a read or write makes a syscall only when it can succeed and no
/// epoll_ctl is needed per operation. Listening sockets are the exception: level-triggered, one accept per report
/// (see <see cref="EpollAcceptor"/>). (The runtime's engine is edge-triggered as well, but its Socket tries recv()
/// before waiting, and a zero-byte read costs a recv() that fails with EAGAIN and another one that returns 0:
/// about two wasted recv() per proxied request; see docs/performance.md.)
///
/// Completions run inline on this thread, like DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1: the code after an
/// await on a socket must never block. One engine per processor; sockets are assigned round robin.
///
/// An event carries a 64-bit token (slot index | generation &lt;&lt; 32) rather than a pointer or GCHandle: an event
/// fetched by epoll_wait can still be handled after another thread deregistered its socket, and the generation makes
/// such a stale event (or one for a slot already reused) fall on nothing instead of on freed memory.
/// </summary>
internal sealed unsafe class EpollEngine
{
    private const int MaxEvents = 256;
    /// <summary>Deferred work items run per pass before the engine looks at its sockets again (see <see cref="RunDeferred"/>).</summary>
    private const int MaxDeferredPerPass = 1024;

    private static readonly Lazy<EpollEngine[]> s_engines = new(CreateEngines);
    private static int s_next;
    [ThreadStatic]
    private static EpollEngine? t_current;

    private readonly int _epfd;
    private readonly Lock _lock = new();
    // Guarded by _lock for writes; the engine thread reads the array reference and its elements without the lock
    // (a stale read finds a stream whose token no longer matches, or null, and drops the event).
    // Each slot holds an EpollSocketStream or an EpollAcceptor.Registration (a listening socket).
    private object?[] _slots = new object?[256];
    private int[] _free = new int[256];
    private int _freeCount;
    private int _used;
    private uint _generation;
    // Engine thread only: work scheduled through AfterBatch while a pass ran, run when it ends.
    private readonly Queue<(Action<object?> Action, object? State)> _deferred = new();

    private EpollEngine(int index)
    {
        _epfd = EpollNative.EpollCreate1(EpollNative.EPOLL_CLOEXEC);
        if (_epfd < 0)
        {
            throw new IOException($"epoll_create1 failed: errno {Marshal.GetLastPInvokeError()}");
        }
        var thread = new Thread(Run) { IsBackground = true, Name = $"proxy-epoll-{index}" };
        thread.UnsafeStart();
    }

    /// <summary>The epoll instance's fd (tests read its registrations in /proc/self/fdinfo).</summary>
    internal int Descriptor => _epfd;

    /// <summary>
    /// Client transports closed cleanly on any thread, waiting for the next connection this engine's thread accepts
    /// (<see cref="EpollSocketTransport"/>): pushed from anywhere, taken on this engine's thread only, so that thread
    /// is never inside an event of a transport's old socket while it starts the next one. Last in, first out.
    /// </summary>
    internal FreeList<EpollSocketTransport> Transports { get; } = new(EpollSocketTransport.FreeListCapacity);

    /// <summary>A small bounded stack under a lock (pushes and pops are rare next to the syscalls around them).</summary>
    internal sealed class FreeList<T>(int capacity) where T : class
    {
        private readonly Lock _lock = new();
        private readonly T?[] _items = new T?[capacity];
        private int _count;

        /// <summary>False when full: the caller drops the item.</summary>
        public bool TryPush(T item)
        {
            lock (_lock)
            {
                if (_count == _items.Length)
                {
                    return false;
                }
                _items[_count++] = item;
                return true;
            }
        }

        public T? TryPop()
        {
            if (Volatile.Read(ref _count) == 0)
            {
                return null;
            }
            lock (_lock)
            {
                if (_count == 0)
                {
                    return null;
                }
                T item = _items[--_count]!;
                _items[_count] = null;
                return item;
            }
        }
    }

    /// <summary>True when the engine can run here (Linux only).</summary>
    public static bool IsSupported => OperatingSystem.IsLinux();

    /// <summary>The engine whose thread is running, or null off the engine threads.</summary>
    public static EpollEngine? Current => t_current;

    /// <summary>
    /// A scheduler that, on an engine thread, runs work once the engine has handled the events of its current
    /// epoll_wait (on the same thread, outside any lock the scheduling code held), and off the engine threads queues
    /// it to the thread pool. An HTTP/2 connection writes its frames through it: the responses that one pass over the
    /// sockets completed leave in one write, without a thread switch, and without waiting for a thread-pool worker to
    /// get the core the engine thread is holding.
    /// </summary>
    public static PipeScheduler AfterBatch { get; } = new AfterBatchScheduler();

    /// <summary>Every engine (created on first use): a listening socket is registered with each.</summary>
    public static EpollEngine[] All => s_engines.Value;

    /// <summary>The next engine, round robin.</summary>
    public static EpollEngine Next()
    {
        EpollEngine[] engines = s_engines.Value;
        uint i = (uint)Interlocked.Increment(ref s_next);
        return engines[i % (uint)engines.Length];
    }

    private static EpollEngine[] CreateEngines()
    {
        var engines = new EpollEngine[Math.Max(1, Environment.ProcessorCount)];
        for (int i = 0; i < engines.Length; i++)
        {
            engines[i] = new EpollEngine(i);
        }
        return engines;
    }

    /// <summary>
    /// Adds <paramref name="fd"/> to the epoll set and sets <see cref="EpollSocketStream.Token"/> before the first
    /// event can arrive (EPOLL_CTL_ADD reports an already-ready socket at once).
    /// </summary>
    public void Register(EpollSocketStream stream, int fd, uint events) => Register((object)stream, fd, events | EpollNative.EPOLLET);

    /// <summary>
    /// Adds a listening socket (see <see cref="EpollAcceptor"/>), level-triggered: while connections wait in its
    /// backlog, every epoll_wait reports it again. Sets the registration's token first.
    /// </summary>
    public void Register(EpollAcceptor.Registration registration, int fd, uint events) => Register((object)registration, fd, events);

    private void Register(object handler, int fd, uint events)
    {
        int index;
        ulong token;
        lock (_lock)
        {
            if (_freeCount > 0)
            {
                index = _free[--_freeCount];
            }
            else
            {
                if (_used == _slots.Length)
                {
                    // Grow by copy: the engine thread may still read the old array, whose entries stay valid objects.
                    Array.Resize(ref _free, _slots.Length * 2);
                    var slots = new object?[_slots.Length * 2];
                    Array.Copy(_slots, slots, _slots.Length);
                    Volatile.Write(ref _slots, slots);
                }
                index = _used++;
            }
            token = (ulong)(uint)index | ((ulong)++_generation << 32);
            if (handler is EpollSocketStream stream)
            {
                stream.Token = token;
            }
            else
            {
                ((EpollAcceptor.Registration)handler).Token = token;
            }
            Volatile.Write(ref _slots[index], handler);
        }
        byte* evt = stackalloc byte[16];
        EpollNative.WriteEvent(evt, events, token);
        if (EpollNative.EpollCtl(_epfd, EpollNative.EPOLL_CTL_ADD, fd, evt) != 0)
        {
            int errno = Marshal.GetLastSystemError();
            if (errno == EpollNative.EINVAL && (events & EpollNative.EPOLLEXCLUSIVE) != 0)
            {
                // Kernels before 4.5 know no EPOLLEXCLUSIVE: every engine then wakes for a new connection, and all
                // but one find nothing to accept.
                EpollNative.WriteEvent(evt, events & ~EpollNative.EPOLLEXCLUSIVE, token);
                if (EpollNative.EpollCtl(_epfd, EpollNative.EPOLL_CTL_ADD, fd, evt) == 0)
                {
                    return;
                }
                errno = Marshal.GetLastSystemError();
            }
            Release(token);
            throw new IOException($"epoll_ctl(ADD) failed: errno {errno}");
        }
    }

    /// <summary>Changes the events of a registered socket (EPOLL_CTL_MOD reports a level that is already there).</summary>
    public void Modify(ulong token, int fd, uint events)
    {
        byte* evt = stackalloc byte[16];
        EpollNative.WriteEvent(evt, events | EpollNative.EPOLLET, token);
        if (EpollNative.EpollCtl(_epfd, EpollNative.EPOLL_CTL_MOD, fd, evt) != 0)
        {
            throw new IOException($"epoll_ctl(MOD) failed: errno {Marshal.GetLastSystemError()}");
        }
    }

    /// <summary>
    /// Removes <paramref name="fd"/> from the epoll set (the caller still holds a reference on the socket's handle,
    /// so the fd is the socket's) and frees the slot. Events already fetched for it find the slot empty or reused.
    /// </summary>
    public void Deregister(ulong token, int fd)
    {
        byte* evt = stackalloc byte[16];
        EpollNative.WriteEvent(evt, 0, 0); // kernels before 2.6.9 required a non-null event for DEL
        _ = EpollNative.EpollCtl(_epfd, EpollNative.EPOLL_CTL_DEL, fd, evt);
        Release(token);
    }

    /// <summary>
    /// Frees the slot of <paramref name="token"/> without EPOLL_CTL_DEL, for a socket whose fd is about to be closed
    /// (the close drops the registration). Events already fetched, or still coming before the close, find the slot
    /// empty or reused.
    /// </summary>
    public void Release(ulong token)
    {
        int index = (int)(uint)token;
        lock (_lock)
        {
            if (_slots[index] is { } handler && TokenOf(handler) == token)
            {
                Volatile.Write(ref _slots[index], null);
                _free[_freeCount++] = index;
            }
        }
    }

    private static ulong TokenOf(object handler)
        => handler is EpollSocketStream stream ? stream.Token : ((EpollAcceptor.Registration)handler).Token;

    private void Run()
    {
        t_current = this;
        int size = EpollNative.EventSize;
        int dataOffset = EpollNative.EventDataOffset;
        byte* events = (byte*)NativeMemory.Alloc((nuint)(MaxEvents * size));
        while (true)
        {
            // Deferred work left over from the last pass: look at the sockets without waiting, then run it.
            int count = EpollNative.EpollWait(_epfd, events, MaxEvents, _deferred.Count > 0 ? 0 : -1);
            if (count < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == EpollNative.EINTR)
                {
                    continue;
                }
                // EBADF/EINVAL cannot happen on our own epoll fd; if they ever do, spinning would burn a core.
                Environment.FailFast($"epoll_wait failed: errno {errno}");
            }
            for (int i = 0; i < count; i++)
            {
                byte* e = events + (i * size);
                uint flags = *(uint*)e;
                ulong token = System.Runtime.CompilerServices.Unsafe.ReadUnaligned<ulong>(e + dataOffset);
                int index = (int)(uint)token;
                // Read the array per event: a socket registered during this batch may live in a grown copy.
                object?[] slots = Volatile.Read(ref _slots);
                if ((uint)index >= (uint)slots.Length)
                {
                    continue;
                }
                object? handler = Volatile.Read(ref slots[index]);
                try
                {
                    // Sockets first: an exact type check on a sealed class, no interface dispatch per event.
                    if (handler is EpollSocketStream stream)
                    {
                        if (stream.Token == token)
                        {
                            stream.OnEvents(flags);
                        }
                    }
                    else if (handler is EpollAcceptor.Registration registration && registration.Token == token)
                    {
                        registration.Owner.OnReadable();
                    }
                }
                catch (Exception ex)
                {
                    // Continuations run inline here; an escaping exception must not stop every socket of this engine.
                    ProxyLog.Error("epoll_completion_failed", ("error", ex.ToString()));
                }
            }
            RunDeferred();
        }
    }

    /// <summary>
    /// Runs the work the pass deferred, and the work that work defers (a response pump's frames wake the connection's
    /// writer, which then sends them all at once), up to <see cref="MaxDeferredPerPass"/> items so that sockets are
    /// not starved; the rest runs after the next, non-blocking, look at them.
    /// </summary>
    private void RunDeferred()
    {
        for (int ran = 0; ran < MaxDeferredPerPass && _deferred.TryDequeue(out (Action<object?> Action, object? State) work); ran++)
        {
            try
            {
                work.Action(work.State);
            }
            catch (Exception ex)
            {
                ProxyLog.Error("epoll_deferred_failed", ("error", ex.ToString()));
            }
        }
    }

    private sealed class AfterBatchScheduler : PipeScheduler
    {
        public override void Schedule(Action<object?> action, object? state)
        {
            if (t_current is { } engine)
            {
                engine._deferred.Enqueue((action, state));
            }
            else
            {
                // As PipeScheduler.ThreadPool does for a pipe (the pipe flows the execution context itself): the
                // unsafe queue takes an async state machine's continuation without allocating a work item for it.
                System.Threading.ThreadPool.UnsafeQueueUserWorkItem(action, state, preferLocal: false);
            }
        }
    }
}
