using System.Net;
using Proxy.Configuration;
using Proxy.Diagnostics;
using Proxy.Handlers;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Upstream;

namespace Proxy.Hosting;

/// <summary>
/// The embeddable gateway: loads a config file, binds its listeners and proxies until stopped.
/// This is the engine's public entry point; the <c>proxy</c> command-line host is a thin shell around it.
/// </summary>
public sealed partial class ProxyServer : IAsyncDisposable, IAdminHost
{
    private readonly ProxyRuntime _runtime;

    /// <summary>The running proxy's shared state (for tests that look at its connections).</summary>
    internal ProxyRuntime Runtime => _runtime;
    /// <summary>Accepting listeners; replaced as a whole (copy on write) by a reload so readers need no lock.</summary>
    private volatile SocketListener[] _listeners = [];
    /// <summary>Health checkers by the cluster object they probe; changed only under the reload gate (or at start/stop).</summary>
    private readonly Dictionary<ClusterModel, ActiveHealthChecker> _healthCheckers = new(ReferenceEqualityComparer.Instance);
    private int _started;
    private int _stopped;
    private int _draining;
    private volatile bool _bound;

    private ProxyServer(ProxySnapshot snapshot, string? configPath)
    {
        _runtime = new ProxyRuntime(snapshot) { AdminHost = this };
        _configPath = configPath;
    }

    /// <summary>
    /// Creates a server from a YAML config file, which <see cref="ReloadAsync()"/> reads again.
    /// Throws <see cref="InvalidDataException"/> listing every config error.
    /// </summary>
    public static ProxyServer FromFile(string path) => FromResult(ConfigLoader.LoadFile(path), path);

    /// <summary>
    /// Creates a server from YAML text (<paramref name="fileName"/> names it in error messages). Such a server has
    /// no file to re-read: reload it with <see cref="ReloadAsync(string)"/>.
    /// </summary>
    public static ProxyServer FromYaml(string yaml, string fileName = "inline.yaml") => FromResult(ConfigLoader.LoadText(yaml, fileName), null);

    private static ProxyServer FromResult(ConfigLoadResult result, string? configPath)
    {
        if (!result.Success)
        {
            throw new InvalidDataException(string.Join(Environment.NewLine, result.Errors));
        }
        return new ProxyServer(result.Snapshot!, configPath);
    }

    /// <summary>Checks a config file without starting anything: every problem as "FILE:LINE:COL: message".</summary>
    public static IReadOnlyList<string> Validate(string path)
        => ConfigLoader.CheckFile(path).Select(e => e.ToString()).ToArray();

    /// <summary>
    /// Checks YAML text without starting anything, as <see cref="Validate"/> checks a file: every problem as
    /// "FILE:LINE:COL: message", where FILE is <paramref name="fileName"/> (as in <see cref="FromYaml"/>). Empty when the
    /// config is valid. Relative paths in it (certificate files) resolve against the directory of <paramref name="fileName"/>,
    /// the current directory for a bare name.
    /// </summary>
    public static IReadOnlyList<string> ValidateYaml(string yaml, string fileName = "inline.yaml")
        => ConfigLoader.CheckText(yaml, fileName).Select(e => e.ToString()).ToArray();

    /// <summary>
    /// As <see cref="FromFile"/>, with the problems instead of an exception: the command loads the file once (a second
    /// compile would build every policy twice and fetch each JWKS twice).
    /// </summary>
    internal static ProxyServer? TryFromFile(string path, out IReadOnlyList<string> errors)
    {
        ConfigLoadResult result = ConfigLoader.LoadFile(path);
        errors = result.Errors.Select(e => e.ToString()).ToArray();
        return result.Success ? new ProxyServer(result.Snapshot!, path) : null;
    }

    /// <summary>How long <see cref="StopAsync(TimeSpan)"/> should wait for requests in flight (config <c>server.shutdown_timeout</c>).</summary>
    public TimeSpan ShutdownTimeout => _runtime.Current.Server.ShutdownTimeout;

    /// <summary>Waits briefly until queued log lines are written (before process exit).</summary>
    public static Task FlushLogsAsync() => ProxyLog.FlushAsync(TimeSpan.FromSeconds(2));

    /// <summary>Reopens the access log file at its configured path, after rotation by rename (the host does it on SIGUSR1).</summary>
    public void ReopenLogs() => _runtime.Observability.ReopenAccessLog();

    /// <summary>The config snapshot in use (tests look at cluster and destination state through it).</summary>
    internal ProxySnapshot Snapshot => _runtime.Current;

    /// <summary>Hash of the loaded config file.</summary>
    public string ConfigVersion => _runtime.Current.Version;

    /// <summary>
    /// Binds every listener and starts accepting. A server starts once: a second call, or a call after
    /// <see cref="StopAsync(TimeSpan)"/>, <see cref="DrainAsync"/> or <see cref="DisposeAsync"/>, throws
    /// <see cref="InvalidOperationException"/>. A listener that cannot bind throws <see cref="System.Net.Sockets.SocketException"/>
    /// naming the listener and its address; nothing is served then, and the server can only be disposed.
    /// A token already cancelled throws <see cref="OperationCanceledException"/> and leaves the server unstarted.
    /// </summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (Volatile.Read(ref _stopped) != 0 || Volatile.Read(ref _draining) != 0)
        {
            // Its runtime (meters, pools, timers) is disposed, or it refuses new connections for good: serving from it
            // would run on released state and report itself not ready.
            throw new InvalidOperationException("The server was stopped or drained; create a new ProxyServer to serve again.");
        }
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("The server was already started.");
        }
        // A reload (SIGHUP before the listeners bind) either lands before the start reads the snapshot, or waits for it.
        _reloadGate.Wait(cancellationToken);
        try
        {
            StartCore(cancellationToken);
        }
        finally
        {
            _reloadGate.Release();
        }
        return Task.CompletedTask;
    }

    private void StartCore(CancellationToken cancellationToken)
    {
        ProxySnapshot snapshot = _runtime.Current;
        _runtime.AllocatedAtStart = GC.GetTotalAllocatedBytes(precise: false);
        StartClusters(snapshot);
        _runtime.Registry.OnTick(now =>
        {
            foreach (ClusterModel cluster in _runtime.Current.Clusters.Values)
            {
                foreach (DestinationState destination in cluster.Destinations)
                {
                    destination.Pool?.EvictIdle(now);
                }
            }
            IdleMemory.OnTick(now, _runtime.Registry.Count);
        });
        var started = new List<SocketListener>();
        try
        {
            foreach (ListenerModel model in snapshot.Listeners)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var listener = new SocketListener(_runtime, model, snapshot);
                started.Add(listener);
                try
                {
                    listener.Bind();
                }
                catch (System.Net.Sockets.SocketException e)
                {
                    // The socket's message names no listener; several can fail the same way.
                    throw new ListenerBindException(model, snapshot.SourcePath, e);
                }
            }
            // Every address bound before any accepts: a port in use fails the start with nothing served.
            foreach (SocketListener listener in started)
            {
                listener.StartAccepting();
            }
            _listeners = [.. started];
            _bound = true;
            _running = true;
            UpdateWatcher(snapshot);
            if (snapshot.Admin is { Token: null } admin && !System.Net.IPAddress.IsLoopback(admin.EndPoint.Address))
            {
                ProxyLog.Warn("admin_unauthenticated", ("address", admin.EndPoint.ToString()),
                    ("hint", "the admin API is reachable from other hosts without a token; set admin.token or bind 127.0.0.1"));
            }
        }
        catch
        {
            foreach (var l in started)
            {
                _ = l.StopAsync(acceptQueued: false);
            }
            throw;
        }
    }

    /// <summary>
    /// Binds one listener at start. The runtime's message alone ("Address already in use") does not say which of the
    /// file's addresses failed: the exception keeps its type and error code and names the listener and its address, as
    /// a reload's error does.
    /// </summary>
    /// <summary>The address a listener is bound to (useful with port 0).</summary>
    public IPEndPoint GetEndPoint(string listenerName)
    {
        foreach (var listener in _listeners)
        {
            if (listener.Model.Name == listenerName)
            {
                return listener.EndPoint;
            }
        }
        throw new ArgumentException($"No started listener named '{listenerName}'.", nameof(listenerName));
    }

    /// <summary>True once every listener is bound, until a drain or stop begins (the admin API's <c>/readyz</c>).</summary>
    public bool IsReady => _bound && Volatile.Read(ref _draining) == 0 && Volatile.Read(ref _stopped) == 0;

    /// <summary>True once <see cref="DrainAsync"/> was called.</summary>
    public bool IsDraining => Volatile.Read(ref _draining) != 0;

    /// <summary>
    /// Graceful drain without stopping: closes every listener except the admin one, lets requests in flight
    /// finish and closes client connections as they become idle. Returns true when no client connection is left
    /// (admin connections aside) within <paramref name="timeout"/>; nothing is aborted (that is <see cref="StopAsync(TimeSpan)"/>'s job).
    /// </summary>
    public async Task<bool> DrainAsync(TimeSpan timeout)
    {
        MarkDraining(timeout);
        SocketListener[] serving = _listeners.Where(l => l.Model.Handler != ListenerHandler.Admin).ToArray();
        // The listeners accept what their queues hold, then close (SocketListener.StopAsync). Once the accept loops have
        // ended, nearly every accepted connection is in the registry; the rest (a TLS handshake still running) see their
        // listener retired at their request and close after it.
        await Task.WhenAll(serving.Select(l => l.StopAsync())).ConfigureAwait(false);
        foreach (var connection in _runtime.Registry.Connections)
        {
            if (!IsAdminConnection(connection))
            {
                connection.BeginDrain();
            }
        }
        var deadline = DateTime.UtcNow + timeout;
        int left;
        while ((left = CountClientConnections()) > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }
        ProxyLog.Info("drain_completed", ("connections_left", left));
        return left == 0;
    }

    private static bool IsAdminConnection(TimedConnection connection)
        => connection is Http1ServerConnection { Listener.Handler: ListenerHandler.Admin };

    private int CountClientConnections()
    {
        int count = 0;
        foreach (var connection in _runtime.Registry.Connections)
        {
            if (!IsAdminConnection(connection))
            {
                count++;
            }
        }
        return count;
    }

    private void MarkDraining(TimeSpan timeout)
    {
        if (Interlocked.Exchange(ref _draining, 1) == 0)
        {
            ProxyLog.Info("drain_started", ("connections", CountClientConnections()), ("timeout_ms", (long)timeout.TotalMilliseconds));
        }
    }

    void IAdminHost.BeginDrain()
    {
        // Not ready from the moment the admin API answers 202, not from whenever the thread pool runs the drain.
        MarkDraining(ShutdownTimeout);
        _ = Task.Run(async () =>
        {
            try
            {
                await DrainAsync(ShutdownTimeout).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                ProxyLog.Error("drain_failed", ("error", e.ToString()));
            }
        });
    }

    IPEndPoint? IAdminHost.BoundEndPoint(string listenerName)
    {
        foreach (var listener in _listeners)
        {
            if (listener.Model.Name == listenerName)
            {
                return listener.EndPoint;
            }
        }
        return null;
    }

    /// <summary>Requests received since start.</summary>
    public long RequestsServed => _runtime.Requests;

    /// <summary>Connections currently open from clients.</summary>
    public int OpenConnections => _runtime.Registry.Count;

    /// <summary>
    /// Graceful stop: closes the listeners, lets requests in flight finish within <paramref name="timeout"/>,
    /// closes idle keep-alive connections, then aborts what is left.
    /// </summary>
    public Task StopAsync(TimeSpan timeout) => StopAsync(timeout, CancellationToken.None);

    /// <summary>
    /// As <see cref="StopAsync(TimeSpan)"/>; cancelling <paramref name="abortNow"/> ends the wait for requests in flight
    /// at once and aborts what is still open (the command does it on a second SIGTERM or SIGINT). The stop runs once:
    /// a call while it runs (or after) completes when it has ended, and its <paramref name="abortNow"/> can still cut it short.
    /// </summary>
    public Task StopAsync(TimeSpan timeout, CancellationToken abortNow)
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return JoinStopAsync(abortNow);
        }
        return StopOnceAsync(timeout, abortNow);
    }

    /// <summary>Set when the one stop has ended (or, for a server never started, when it was disposed).</summary>
    private readonly TaskCompletionSource _stopCompleted = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Cancelled by <see cref="DisposeAsync"/>, or by a later caller's abort token, during a graceful stop: the stop
    /// stops waiting for requests in flight, as with its own <c>abortNow</c>. Never disposed: it holds no timer.
    /// </summary>
    private readonly CancellationTokenSource _abortStop = new();

    private async Task JoinStopAsync(CancellationToken abortNow)
    {
        using (abortNow.Register(static state => ((CancellationTokenSource)state!).Cancel(), _abortStop))
        {
            await _stopCompleted.Task.ConfigureAwait(false);
        }
    }

    private async Task StopOnceAsync(TimeSpan timeout, CancellationToken callerAbort)
    {
        try
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(callerAbort, _abortStop.Token);
            await StopCoreAsync(timeout, linked.Token).ConfigureAwait(false);
        }
        finally
        {
            _stopCompleted.TrySetResult();
        }
    }

    private async Task StopCoreAsync(TimeSpan timeout, CancellationToken abortNow)
    {
        // A reload running now finishes first; none starts afterwards (it sees _stopped).
        await _reloadGate.WaitAsync().ConfigureAwait(false);
        _reloadGate.Release();
        StopWatcher();
        foreach (var checker in _healthCheckers.Values)
        {
            await checker.DisposeAsync().ConfigureAwait(false);
        }
        int inFlightAtStart = _runtime.Registry.Count;
        ProxyLog.Info("shutdown_started", ("connections", inFlightAtStart), ("timeout_ms", (long)timeout.TotalMilliseconds));
        // With no time for requests, the queued connections are not accepted only to be aborted.
        bool acceptQueued = timeout > TimeSpan.Zero && !abortNow.IsCancellationRequested;
        await Task.WhenAll(_listeners.Select(l => l.StopAsync(acceptQueued))).ConfigureAwait(false);

        foreach (var connection in _runtime.Registry.Connections)
        {
            connection.BeginDrain();
        }
        var deadline = DateTime.UtcNow + timeout;
        while (_runtime.Registry.Count > 0 && DateTime.UtcNow < deadline && !abortNow.IsCancellationRequested)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }
        if (abortNow.IsCancellationRequested && _runtime.Registry.Count > 0)
        {
            ProxyLog.Warn("shutdown_forced", ("connections", _runtime.Registry.Count));
        }
        int aborted = 0;
        foreach (var connection in _runtime.Registry.Connections)
        {
            connection.Abort();
            aborted++;
        }
        // Aborted connections unwind on their own threads; give them a moment to leave the registry.
        var unwind = DateTime.UtcNow + TimeSpan.FromSeconds(2);
        while (_runtime.Registry.Count > 0 && DateTime.UtcNow < unwind)
        {
            await Task.Delay(10).ConfigureAwait(false);
        }
        foreach (ClusterModel cluster in _runtime.Current.Clusters.Values)
        {
            foreach (DestinationState destination in cluster.Destinations)
            {
                destination.Pool?.CloseIdle();
            }
        }
        long requests = _runtime.Requests;
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - _runtime.AllocatedAtStart;
        ProxyLog.Info("shutdown_completed", ("aborted", aborted), ("requests", requests), ("allocated_bytes", allocated),
            ("allocated_bytes_per_request", requests > 0 ? allocated / requests : 0));
        Drained?.Invoke();
        _runtime.Dispose();
    }

    /// <summary>
    /// Called once by <see cref="StopAsync(TimeSpan)"/> after the drain, while the meters still exist: the <c>proxy</c> command's
    /// last OTLP metrics export, with the counts of the drained requests (disposing the runtime ends the meters).
    /// </summary>
    internal Action? Drained { get; set; }

    /// <summary>
    /// Stops the server at once if it was started: as <see cref="StopAsync(TimeSpan)"/> with no time for requests in
    /// flight, which are aborted (their clients see the connection close). Call <see cref="StopAsync(TimeSpan)"/> first
    /// for a graceful stop; during one, it ends the stop's wait at once and completes when the stop has. Calling it
    /// again, or after a stop, does nothing more.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Volatile.Read(ref _started) != 0)
        {
            if (Volatile.Read(ref _stopped) != 0)
            {
                // A graceful stop is running: disposing means now, so it stops waiting for requests in flight.
                _abortStop.Cancel();
            }
            await StopAsync(TimeSpan.Zero).ConfigureAwait(false);
        }
        else if (Interlocked.Exchange(ref _stopped, 1) == 0)
        {
            _runtime.Dispose();
            _stopCompleted.TrySetResult();
        }
        else
        {
            await _stopCompleted.Task.ConfigureAwait(false);
        }
    }
}
