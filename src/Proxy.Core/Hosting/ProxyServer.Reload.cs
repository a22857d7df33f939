using Proxy.Configuration;
using Proxy.Diagnostics;
using Proxy.Handlers;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Upstream;

namespace Proxy.Hosting;

/// <summary>The outcome of one config reload.</summary>
public sealed class ConfigReloadResult
{
    internal ConfigReloadResult(bool success, string version, IReadOnlyList<string> errors, bool changed)
    {
        Success = success;
        Version = version;
        Errors = errors;
        Changed = changed;
    }

    /// <summary>True when the new config is active (or was identical to the active one).</summary>
    public bool Success { get; }

    /// <summary>The version active after the attempt: the new one on success, the old one on failure.</summary>
    public string Version { get; }

    /// <summary>Every problem found, each as "FILE:LINE:COL: message" (a listener that cannot bind: at its address); empty on success.</summary>
    public IReadOnlyList<string> Errors { get; }

    /// <summary>False when the file had the active version's exact text, so nothing was swapped.</summary>
    public bool Changed { get; }

    /// <summary>When the attempt ended (UTC).</summary>
    public DateTimeOffset At { get; } = DateTimeOffset.UtcNow;
}

// Hot reload: parse, validate and compile off the hot path, bind new listeners, then publish the snapshot with one
// atomic swap (the order of the steps: ApplyAsync). Requests in flight keep the snapshot they started with; clusters
// whose compiled definition is unchanged are the same objects in the new snapshot (pools, health, breaker and budget
// carry over), and rate-limit policies whose definition is unchanged share the running policy's tables (every key's
// budget and quota count carry over).
public sealed partial class ProxyServer
{
    /// <summary>The file the server was created from; null for <see cref="FromYaml"/>.</summary>
    private readonly string? _configPath;
    /// <summary>One reload at a time; StopAsync waits for a running one.</summary>
    private readonly SemaphoreSlim _reloadGate = new(1, 1);
    private FileSystemWatcher? _watcher;
    private string? _watchedName;
    private Timer? _watchDebounce;
    private volatile ConfigReloadResult? _lastReload;
    /// <summary>Set under the reload gate once StartAsync bound the listeners: from then on a reload diffs them.</summary>
    private bool _running;

    /// <summary>How long a burst of file events must be quiet before the watcher reloads (editors write in steps).</summary>
    internal static readonly TimeSpan WatchDebounce = TimeSpan.FromMilliseconds(200);

    /// <summary>
    /// Whether to watch the config file when the file does not say (<c>server.watch_config</c> absent).
    /// The <c>proxy</c> command sets it to true; embedders opt in here or in the file. Set before <see cref="StartAsync"/>.
    /// </summary>
    public bool WatchConfigByDefault { get; set; }

    /// <summary>The last reload attempt, or null when none was made.</summary>
    public ConfigReloadResult? LastReload => _lastReload;

    /// <summary>True while the config file is watched for changes.</summary>
    public bool IsWatchingConfig => Volatile.Read(ref _watcher) is not null;

    /// <summary>
    /// Reads the config file the server was created from again and, when it is valid, makes it active: new listeners
    /// bind, removed ones stop accepting and drain, unchanged clusters keep their connections and health state,
    /// unchanged rate-limit policies their budgets and quota counts.
    /// An invalid file (or a listener that cannot bind) leaves the running config untouched; every error is logged,
    /// counted in <c>proxy_config_reloads_total{result="failure"}</c> and returned. Never throws for a bad config.
    /// </summary>
    /// <exception cref="InvalidOperationException">The server was created with <see cref="FromYaml"/>.</exception>
    public Task<ConfigReloadResult> ReloadAsync()
    {
        string path = _configPath ?? throw new InvalidOperationException(
            "The server was created from YAML text, not a file: call ReloadAsync(string yaml).");
        return ReloadCoreAsync(previous => ConfigLoader.LoadFile(path, previous), path, "file");
    }

    /// <summary>Like <see cref="ReloadAsync()"/> with the given YAML text instead of the file (embedders, tests).</summary>
    public Task<ConfigReloadResult> ReloadAsync(string yaml)
    {
        ArgumentNullException.ThrowIfNull(yaml);
        string fileName = _configPath ?? _runtime.Current.SourcePath;
        return ReloadCoreAsync(previous => ConfigLoader.LoadText(yaml, fileName, previous), fileName, "text");
    }

    // fileName: the file as the load's errors name it, for an error found after the load (a listener that cannot bind).
    private async Task<ConfigReloadResult> ReloadCoreAsync(Func<ProxySnapshot, ConfigLoadResult> load,
        string fileName, string trigger)
    {
        await _reloadGate.WaitAsync().ConfigureAwait(false);
        try
        {
            ProxySnapshot current = _runtime.Current;
            if (Volatile.Read(ref _stopped) != 0 || Volatile.Read(ref _draining) != 0)
            {
                return Fail(current, ["the server is stopping or draining: reload refused"], trigger);
            }
            // Control plane work (YAML, validation, compile) runs on the thread pool, never on a socket thread.
            // The running snapshot: what the new one may take over (unchanged clusters, rate-limit state).
            ConfigLoadResult result = await Task.Run(() => load(current)).ConfigureAwait(false);
            if (!result.Success)
            {
                return Fail(current, result.Errors.Select(e => e.ToString()).ToArray(), trigger);
            }
            ProxySnapshot next = result.Snapshot!;
            if (next.Version == current.Version)
            {
                var same = new ConfigReloadResult(true, current.Version, [], changed: false);
                _lastReload = same;
                _runtime.Metrics.ConfigReloaded(success: true);
                ProxyLog.Info("config_reload_unchanged", ("version", current.Version), ("trigger", trigger));
                return same;
            }
            if (!_running)
            {
                // Not started: nothing is bound or pooled yet; StartAsync will use the new snapshot.
                _runtime.Publish(next);
                return Succeed(current, next, trigger);
            }
            return await ApplyAsync(current, next, fileName, trigger).ConfigureAwait(false);
        }
        finally
        {
            _reloadGate.Release();
        }
    }

    // The order of a reload is what lets it drop no connection (docs/operations.md, Reload):
    //  1. Listeners are matched by address. One whose address stays keeps its socket, with the connections waiting in its
    //     accept queue, whatever else changed (name, handler, limits, TLS): two sockets on one address would split
    //     its connections between two configs, and closing one resets the connections in its queue. New addresses bind now, before anything
    //     is published, so a port in use fails the reload with the old config intact; they do not accept yet (the kernel
    //     queues their connections meanwhile).
    //  2. Clusters of the new snapshot get their pools and health checkers.
    //  3. The publish, then each kept listener takes its new settings and the new snapshot as one pair: a request reads
    //     that pair when it starts, so it is served by the old config or the new one, never by a mix.
    //  4. New listeners start accepting: they only ever serve the new snapshot.
    //  5. Removed listeners refuse new handshakes, accept what their queues hold, serve it with the snapshot they had
    //     (their routes are not in the new one), and close; their connections close after their current request.
    //  6. What the new snapshot no longer uses retires; requests still on it hold the old objects and finish.
    private async Task<ConfigReloadResult> ApplyAsync(ProxySnapshot current, ProxySnapshot next, string fileName, string trigger)
    {
        SocketListener[] running = _listeners;
        var serving = new List<SocketListener>();
        var kept = new List<(SocketListener Listener, ListenerModel Model)>();
        var added = new List<SocketListener>();
        foreach (ListenerModel model in next.Listeners)
        {
            SocketListener? same = running.FirstOrDefault(l => SameAddress(l.Model, model) && !serving.Contains(l));
            if (same is not null)
            {
                kept.Add((same, model));
                serving.Add(same);
                continue;
            }
            var listener = new SocketListener(_runtime, model, next);
            try
            {
                listener.Bind();
            }
            catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException or UnauthorizedAccessException)
            {
                _ = listener.StopAsync(acceptQueued: false);
                await Task.WhenAll(added.Select(l => l.StopAsync(acceptQueued: false))).ConfigureAwait(false);
                // At the listener's address in the file, like every other config error (FILE:LINE:COL: message).
                var error = new ConfigError(fileName, model.AddressMark.Line, model.AddressMark.Column,
                    ListenerBindException.Describe(model, e.Message));
                return Fail(current, [error.ToString()], trigger);
            }
            added.Add(listener);
            serving.Add(listener);
        }
        SocketListener[] removed = running.Where(l => !serving.Contains(l)).ToArray();

        StartClusters(next);

        _runtime.Publish(next);
        foreach (var (listener, model) in kept)
        {
            ListenerModel was = listener.Model;
            listener.Serve(model, next);
            if (was.Name != model.Name || was.Handler != model.Handler)
            {
                ProxyLog.Info("listener_changed", ("listener", model.Name), ("previous_name", was.Name), ("address", listener.EndPoint.ToString()),
                    ("handler", model.Handler.ToString().ToLowerInvariant()));
            }
        }
        foreach (SocketListener listener in added)
        {
            listener.StartAccepting();
        }
        _listeners = [.. serving];

        await Task.WhenAll(removed.Select(l => l.StopAsync())).ConfigureAwait(false);
        foreach (var listener in removed)
        {
            ProxyLog.Info("listener_removed", ("listener", listener.Model.Name), ("address", listener.EndPoint.ToString()));
        }
        if (removed.Length > 0)
        {
            foreach (var connection in _runtime.Registry.Connections)
            {
                // HTTP/1.1 connections and HTTP/2 connections (h2c or ALPN h2) alike: both carry their accept loop.
                if (connection.Origin is { } origin && removed.Contains(origin))
                {
                    connection.BeginDrain();
                }
            }
        }

        var nextClusters = new HashSet<ClusterModel>(next.Clusters.Values, ReferenceEqualityComparer.Instance);
        foreach (ClusterModel old in current.Clusters.Values)
        {
            if (nextClusters.Contains(old))
            {
                continue;
            }
            if (_healthCheckers.Remove(old, out var checker))
            {
                await checker.DisposeAsync().ConfigureAwait(false);
            }
            foreach (DestinationState destination in old.Destinations)
            {
                destination.Pool?.Retire();
            }
        }
        UpdateWatcher(next);
        return Succeed(current, next, trigger);
    }

    /// <summary>
    /// The same listening address: equal configured endpoints, and for port 0 the same name too (each port-0 listener
    /// has a port of its own, so two of them on 127.0.0.1:0 are different listeners).
    /// </summary>
    private static bool SameAddress(ListenerModel running, ListenerModel next)
        => running.EndPoint.Equals(next.EndPoint) && (next.EndPoint.Port != 0 || running.Name == next.Name);

    private ConfigReloadResult Succeed(ProxySnapshot current, ProxySnapshot next, string trigger)
    {
        var result = new ConfigReloadResult(true, next.Version, [], changed: true);
        _lastReload = result;
        _runtime.Metrics.ConfigReloaded(success: true);
        ProxyLog.Info("config_reloaded", ("version", next.Version), ("previous_version", current.Version), ("trigger", trigger));
        // The `proxy` command builds its OTLP exporters (tracing.otlp, metrics.otlp) once at start; everything else in
        // those blocks (sampling) applies now. Say so rather than let an operator believe the new endpoint is in use.
        ObservabilityModel was = current.Observability, now = next.Observability;
        if (was.Metrics != now.Metrics || was.Tracing?.OtlpEndpoint != now.Tracing?.OtlpEndpoint
            || was.Tracing?.OtlpProtocol != now.Tracing?.OtlpProtocol)
        {
            ProxyLog.Warn("otlp_change_needs_restart", ("version", next.Version),
                ("reason", "tracing.otlp and metrics.otlp are read at start; the exporters keep their previous settings until a restart"));
        }
        return result;
    }

    private ConfigReloadResult Fail(ProxySnapshot current, string[] errors, string trigger)
    {
        var result = new ConfigReloadResult(false, current.Version, errors, changed: false);
        _lastReload = result;
        _runtime.Metrics.ConfigReloaded(success: false);
        // One line per error (each is greppable on its own), then a summary.
        foreach (var error in errors)
        {
            ProxyLog.Error("config_reload_error", ("error", error));
        }
        ProxyLog.Error("config_reload_failed", ("errors", errors.Length), ("active_version", current.Version), ("trigger", trigger));
        return result;
    }

    /// <summary>Pools for every destination without one, and a health checker for every checked cluster without one.</summary>
    private void StartClusters(ProxySnapshot snapshot)
    {
        foreach (ClusterModel cluster in snapshot.Clusters.Values)
        {
            foreach (DestinationState destination in cluster.Destinations)
            {
                destination.Pool ??= new ConnectionPool(destination, cluster);
            }
            if (cluster.HealthCheck is not null && !_healthCheckers.ContainsKey(cluster))
            {
                var checker = new ActiveHealthChecker(cluster);
                _healthCheckers.Add(cluster, checker);
                checker.Start();
            }
        }
    }

    // ---- file watch -----------------------------------------------------------------------------

    /// <summary>Starts or stops watching to match the snapshot's <c>server.watch_config</c> (or the host's default).</summary>
    private void UpdateWatcher(ProxySnapshot snapshot)
    {
        bool watch = _configPath is not null && (snapshot.Server.WatchConfig ?? WatchConfigByDefault);
        if (!watch)
        {
            StopWatcher();
            return;
        }
        if (_watcher is not null)
        {
            return;
        }
        string fullPath = Path.GetFullPath(_configPath!);
        // The directory, not the file: editors and config managers replace the file by a rename, which a watch on
        // the old file would miss. Every name in it, filtered in OnConfigFileEvent: a Kubernetes ConfigMap volume
        // updates by swapping its "..data" symlink, and the file's own name sees no event.
        _watchedName = Path.GetFileName(fullPath);
        var watcher = new FileSystemWatcher(Path.GetDirectoryName(fullPath)!)
        {
            NotifyFilter = NotifyFilters.LastWrite | NotifyFilters.FileName | NotifyFilters.DirectoryName | NotifyFilters.Size
                | NotifyFilters.CreationTime,
        };
        _watchDebounce = new Timer(_ => OnWatchQuiet(), null, Timeout.Infinite, Timeout.Infinite);
        watcher.Changed += OnConfigFileEvent;
        watcher.Created += OnConfigFileEvent;
        watcher.Renamed += OnConfigFileEvent;
        watcher.EnableRaisingEvents = true;
        Volatile.Write(ref _watcher, watcher);
        ProxyLog.Info("config_watch_started", ("path", fullPath));
    }

    private void OnConfigFileEvent(object sender, FileSystemEventArgs e)
    {
        // The config file itself, or the symlink a ConfigMap volume swaps ("..data", made as "..data_tmp" and renamed).
        // Anything else in the directory (a log file next to the config) is not a reason to reload.
        if (string.Equals(e.Name, _watchedName, StringComparison.Ordinal)
            || (e.Name is { } name && name.StartsWith("..data", StringComparison.Ordinal)))
        {
            _watchDebounce?.Change(WatchDebounce, Timeout.InfiniteTimeSpan);
        }
    }

    private void OnWatchQuiet()
    {
        _ = Task.Run(async () =>
        {
            try
            {
                if (Volatile.Read(ref _stopped) == 0 && File.Exists(_configPath))
                {
                    await ReloadCoreAsync(previous => ConfigLoader.LoadFile(_configPath!, previous), _configPath!, "watch").ConfigureAwait(false);
                }
            }
            catch (Exception e)
            {
                ProxyLog.Error("config_reload_failed", ("error", e.ToString()), ("trigger", "watch"));
            }
        });
    }

    private void StopWatcher()
    {
        if (Interlocked.Exchange(ref _watcher, null) is { } watcher)
        {
            watcher.EnableRaisingEvents = false;
            watcher.Dispose();
        }
        Interlocked.Exchange(ref _watchDebounce, null)?.Dispose();
    }

    ConfigReloadResult? IAdminHost.LastReload => _lastReload;

    bool IAdminHost.CanReloadFromFile => _configPath is not null;

    Task<ConfigReloadResult> IAdminHost.ReloadAsync() => ReloadAsync();
}
