using System.Net;
using Proxy.Configuration;
using Proxy.Diagnostics;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Upstream;

namespace Proxy.Hosting;

/// <summary>
/// The embeddable gateway: loads a config file, binds its listeners and proxies until stopped.
/// This is the engine's public entry point; the <c>proxy</c> command-line host is a thin shell around it.
/// </summary>
public sealed class ProxyServer : IAsyncDisposable
{
    private readonly ProxyRuntime _runtime;
    private readonly List<SocketListener> _listeners = [];
    private int _started;
    private int _stopped;

    private ProxyServer(ProxySnapshot snapshot)
    {
        _runtime = new ProxyRuntime(snapshot);
    }

    /// <summary>Creates a server from a YAML config file. Throws <see cref="InvalidDataException"/> listing every config error.</summary>
    public static ProxyServer FromFile(string path) => FromResult(ConfigLoader.LoadFile(path));

    /// <summary>Creates a server from YAML text (<paramref name="fileName"/> names it in error messages).</summary>
    public static ProxyServer FromYaml(string yaml, string fileName = "inline.yaml") => FromResult(ConfigLoader.LoadText(yaml, fileName));

    private static ProxyServer FromResult(ConfigLoadResult result)
    {
        if (!result.Success)
        {
            throw new InvalidDataException(string.Join(Environment.NewLine, result.Errors));
        }
        return new ProxyServer(result.Snapshot!);
    }

    /// <summary>Checks a config file without starting anything: every problem as "FILE:LINE:COL: message".</summary>
    public static IReadOnlyList<string> Validate(string path)
    {
        ConfigLoadResult result = ConfigLoader.LoadFile(path);
        return result.Errors.Select(e => e.ToString()).ToArray();
    }

    /// <summary>How long <see cref="StopAsync"/> should wait for requests in flight (config <c>server.shutdown_timeout</c>).</summary>
    public TimeSpan ShutdownTimeout => _runtime.Current.Server.ShutdownTimeout;

    /// <summary>Waits briefly until queued log lines are written (before process exit).</summary>
    public static Task FlushLogsAsync() => ProxyLog.FlushAsync(TimeSpan.FromSeconds(2));

    /// <summary>Hash of the loaded config file.</summary>
    public string ConfigVersion => _runtime.Current.Version;

    /// <summary>Binds every listener and starts accepting.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("The server was already started.");
        }
        ProxySnapshot snapshot = _runtime.Current;
        _runtime.AllocatedAtStart = GC.GetTotalAllocatedBytes(precise: false);
        foreach (ClusterModel cluster in snapshot.Clusters.Values)
        {
            foreach (DestinationState destination in cluster.Destinations)
            {
                destination.Pool ??= new ConnectionPool(destination, cluster);
            }
        }
        _runtime.Registry.OnTick(now =>
        {
            foreach (ClusterModel cluster in _runtime.Current.Clusters.Values)
            {
                foreach (DestinationState destination in cluster.Destinations)
                {
                    destination.Pool?.EvictIdle(now);
                }
            }
        });
        try
        {
            foreach (ListenerModel model in snapshot.Listeners)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var listener = new SocketListener(_runtime, model);
                _listeners.Add(listener);
                listener.Start();
            }
        }
        catch
        {
            foreach (var l in _listeners)
            {
                _ = l.StopAsync();
            }
            throw;
        }
        return Task.CompletedTask;
    }

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

    /// <summary>Requests received since start.</summary>
    public long RequestsServed => _runtime.Requests;

    /// <summary>Connections currently open from clients.</summary>
    public int OpenConnections => _runtime.Registry.Count;

    /// <summary>
    /// Graceful stop: closes the listeners, lets requests in flight finish within <paramref name="timeout"/>,
    /// closes idle keep-alive connections, then aborts what is left.
    /// </summary>
    public async Task StopAsync(TimeSpan timeout)
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }
        int inFlightAtStart = _runtime.Registry.Count;
        ProxyLog.Info("shutdown_started", ("connections", inFlightAtStart), ("timeout_ms", (long)timeout.TotalMilliseconds));
        await Task.WhenAll(_listeners.Select(l => l.StopAsync())).ConfigureAwait(false);

        foreach (var connection in _runtime.Registry.Connections)
        {
            connection.BeginDrain();
        }
        var deadline = DateTime.UtcNow + timeout;
        while (_runtime.Registry.Count > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20).ConfigureAwait(false);
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
        _runtime.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        if (Volatile.Read(ref _started) != 0)
        {
            await StopAsync(TimeSpan.Zero).ConfigureAwait(false);
        }
        else
        {
            _runtime.Dispose();
        }
    }
}
