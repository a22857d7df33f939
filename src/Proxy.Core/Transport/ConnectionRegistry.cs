using System.Text;

namespace Proxy.Transport;

/// <summary>What a connection is waiting for when its deadline passes.</summary>
internal enum TimeoutKind : byte
{
    None = 0,
    /// <summary>Waiting for the first byte of the next request on a kept-alive connection.</summary>
    KeepAlive,
    /// <summary>Waiting for the rest of a request head (slowloris).</summary>
    RequestHead,
    /// <summary>Waiting for the next request body bytes.</summary>
    RequestBody,
    /// <summary>Waiting for the upstream's response head or its next body bytes.</summary>
    Upstream,
    /// <summary>A send to the client or the upstream does not complete (peer not reading).</summary>
    Write,
}

/// <summary>
/// A connection whose waits are bounded by the registry's heartbeat instead of a timer per wait: arming a
/// deadline is two field writes, so the data plane never allocates a timer or a CancellationTokenSource.
/// </summary>
internal abstract class TimedConnection
{
    private long _deadline = long.MaxValue;
    private TimeoutKind _armedKind;

    /// <summary>Set by the heartbeat when a deadline passed; read and cleared by the connection.</summary>
    protected TimeoutKind FiredTimeout;

    public long Id { get; } = Interlocked.Increment(ref s_nextId);
    private static long s_nextId;

    // The registry's intrusive list (guarded by its lock): joining and leaving it allocates nothing.
    internal TimedConnection? RegistryPrevious;
    internal TimedConnection? RegistryNext;
    internal bool InRegistry;
    /// <summary>Counted in <see cref="ConnectionRegistry.AdminCount"/> (set by Add, so Remove undoes what Add did).</summary>
    internal bool CountedAsAdmin;

    /// <summary>
    /// The listener this connection came from: each request reads its settings and snapshot from it, and a reload that
    /// removes it drains the connection. The per-stream bridges of an HTTP/2 connection have their connection's (they
    /// are not in the registry: they drain with their connection, GOAWAY).
    /// </summary>
    internal SocketListener? Origin { get; init; }

    protected void Arm(TimeoutKind kind, TimeSpan timeout)
    {
        _armedKind = kind;
        Volatile.Write(ref _deadline, Environment.TickCount64 + Milliseconds(timeout));
    }

    /// <summary>
    /// Whole milliseconds of <paramref name="timeout"/> (truncated, like <c>(long)timeout.TotalMilliseconds</c>): an
    /// integer division where <see cref="TimeSpan.TotalMilliseconds"/> is an out-of-line call through doubles, which
    /// showed in profiles of the per-request arming.
    /// </summary>
    internal static long Milliseconds(TimeSpan timeout) => timeout.Ticks / TimeSpan.TicksPerMillisecond;

    protected void Disarm() => Volatile.Write(ref _deadline, long.MaxValue);

    /// <summary>
    /// A deadline of <paramref name="kind"/> is armed: what the connection waits for now. Read by the heartbeat while the
    /// connection's thread may change it, so only a hint: at worst one tick acts on the wait just before or after.
    /// </summary>
    protected bool Awaits(TimeoutKind kind) => _armedKind == kind && Volatile.Read(ref _deadline) != long.MaxValue;

    /// <summary>Heartbeat entry: this connection's deadline, plus whatever it owns (an HTTP/2 connection's stream bridges).</summary>
    internal virtual void Heartbeat(long now) => CheckDeadline(now);

    internal void CheckDeadline(long now)
    {
        if (Volatile.Read(ref _deadline) <= now)
        {
            Volatile.Write(ref _deadline, long.MaxValue);
            FiredTimeout = _armedKind;
            OnTimeout(_armedKind);
        }
    }

    /// <summary>Runs on the heartbeat thread: must only cancel a pending read or abort sockets, never block.</summary>
    protected abstract void OnTimeout(TimeoutKind kind);

    /// <summary>Asks the connection to finish its current exchange and close (graceful shutdown).</summary>
    public abstract void BeginDrain();

    /// <summary>Closes the connection now.</summary>
    public abstract void Abort();
}

/// <summary>
/// Every open client connection, plus the one-second heartbeat that enforces their deadlines, evicts idle
/// upstream connections and refreshes the cached Date header. Add/remove happen per connection, not per request:
/// an intrusive doubly linked list under a lock (a dictionary allocated a node per connection).
/// </summary>
internal sealed class ConnectionRegistry : IDisposable
{
    private readonly Lock _lock = new();
    private TimedConnection? _first;
    private int _count;
    private int _adminCount;
    private readonly List<Action<long>> _tickHandlers = [];
    private readonly Timer _heartbeat;
    /// <summary>The heartbeat's copy of the list (its thread only), reused from tick to tick.</summary>
    private TimedConnection[] _tickSnapshot = new TimedConnection[64];

    public ConnectionRegistry()
    {
        _heartbeat = new Timer(static s => ((ConnectionRegistry)s!).Tick(), this, 1000, 1000);
    }

    /// <summary>Every open client connection, admin ones included (shutdown waits for them all).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Open connections on the admin listener: capped on their own, not against <c>server.max_connections</c>.</summary>
    public int AdminCount => Volatile.Read(ref _adminCount);

    /// <summary>
    /// Open connections on proxy and echo listeners: what <c>server.max_connections</c> caps. Two reads without the
    /// lock (checked on every accept): an admin connection joining or leaving between them is off by one at worst.
    /// </summary>
    public int DataPlaneCount => Math.Max(Volatile.Read(ref _count) - Volatile.Read(ref _adminCount), 0);

    /// <param name="connection">The connection, not yet in the registry.</param>
    /// <param name="admin">It came from the admin listener: counted in <see cref="AdminCount"/>, not in <see cref="DataPlaneCount"/>.</param>
    public void Add(TimedConnection connection, bool admin = false)
    {
        lock (_lock)
        {
            if (connection.InRegistry)
            {
                return;
            }
            connection.InRegistry = true;
            connection.CountedAsAdmin = admin;
            if (admin)
            {
                Volatile.Write(ref _adminCount, _adminCount + 1);
            }
            connection.RegistryPrevious = null;
            connection.RegistryNext = _first;
            if (_first is not null)
            {
                _first.RegistryPrevious = connection;
            }
            _first = connection;
            Volatile.Write(ref _count, _count + 1);
        }
    }

    /// <summary>Takes <paramref name="connection"/> out; a no-op when it is not in (a connection handed to HTTP/2 leaves early).</summary>
    public void Remove(TimedConnection connection)
    {
        lock (_lock)
        {
            if (!connection.InRegistry)
            {
                return;
            }
            connection.InRegistry = false;
            if (connection.CountedAsAdmin)
            {
                connection.CountedAsAdmin = false;
                Volatile.Write(ref _adminCount, _adminCount - 1);
            }
            TimedConnection? previous = connection.RegistryPrevious, next = connection.RegistryNext;
            if (previous is null)
            {
                _first = next;
            }
            else
            {
                previous.RegistryNext = next;
            }
            if (next is not null)
            {
                next.RegistryPrevious = previous;
            }
            connection.RegistryPrevious = connection.RegistryNext = null;
            Volatile.Write(ref _count, _count - 1);
        }
    }

    /// <summary>A snapshot of the open connections (control plane: shutdown, reload, admin).</summary>
    public IEnumerable<TimedConnection> Connections
    {
        get
        {
            lock (_lock)
            {
                var connections = new List<TimedConnection>(_count);
                for (TimedConnection? c = _first; c is not null; c = c.RegistryNext)
                {
                    connections.Add(c);
                }
                return connections;
            }
        }
    }

    /// <summary>Runs <paramref name="handler"/> on every heartbeat with the current tick count (control plane).</summary>
    public void OnTick(Action<long> handler)
    {
        lock (_tickHandlers)
        {
            _tickHandlers.Add(handler);
        }
    }

    private void Tick()
    {
        // A timer callback may start while the previous one still runs (a tick slower than a second): skip it, the
        // snapshot array is the heartbeat's alone.
        if (Interlocked.Exchange(ref _ticking, 1) != 0)
        {
            return;
        }
        try
        {
            TickCore();
        }
        finally
        {
            Volatile.Write(ref _ticking, 0);
        }
    }

    private int _ticking;

    private void TickCore()
    {
        long now = Environment.TickCount64;
        DateHeader.Refresh();
        // Copied under the lock, run outside it: a timeout may abort a connection, whose close then leaves the list.
        TimedConnection[] snapshot;
        int count = 0;
        lock (_lock)
        {
            snapshot = _tickSnapshot;
            if (snapshot.Length < _count)
            {
                snapshot = _tickSnapshot = new TimedConnection[Math.Max(_count, snapshot.Length * 2)];
            }
            for (TimedConnection? c = _first; c is not null; c = c.RegistryNext)
            {
                snapshot[count++] = c;
            }
        }
        for (int i = 0; i < count; i++)
        {
            try
            {
                snapshot[i].Heartbeat(now);
            }
            catch (Exception)
            {
                // A timeout action only cancels reads or disposes sockets; a race with close is harmless.
            }
        }
        // No reference kept until the next tick: a closed connection must not stay reachable from here.
        Array.Clear(snapshot, 0, count);
        Action<long>[] handlers;
        lock (_tickHandlers)
        {
            handlers = [.. _tickHandlers];
        }
        foreach (var h in handlers)
        {
            h(now);
        }
    }

    public void Dispose() => _heartbeat.Dispose();
}

/// <summary>The <c>Date</c> field value (RFC 9110 section 6.6.1), formatted once a second instead of per response.</summary>
internal static class DateHeader
{
    private static byte[] s_value = Format();

    public static ReadOnlySpan<byte> Value => Volatile.Read(ref s_value);

    public static void Refresh() => Volatile.Write(ref s_value, Format());

    private static byte[] Format() => Encoding.ASCII.GetBytes(DateTime.UtcNow.ToString("r"));
}
