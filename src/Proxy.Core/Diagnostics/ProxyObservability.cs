using Proxy.Diagnostics.AccessLog;
using Proxy.Diagnostics.Insights;
using Proxy.Model;

namespace Proxy.Diagnostics;

/// <summary>
/// The process-lifetime parts of tracing, access log and insights for one server: the access log writer (kept
/// across reloads while its settings are unchanged, replaced otherwise) and the traffic insights. Per-request
/// settings are read from the request's snapshot (<see cref="ProxySnapshot.Observability"/>).
/// </summary>
internal sealed class ProxyObservability : IDisposable
{
    private readonly Lock _lock = new();
    private AccessLogWriter? _accessLog;
    private long _droppedBefore;
    private long _writtenBefore;

    public ProxyObservability(Func<IReadOnlyList<RouteMetrics>> routes)
    {
        Insights = new TrafficInsights(routes);
    }

    /// <summary>The current access log, or null when none is configured (read once per request).</summary>
    public AccessLogWriter? AccessLog => Volatile.Read(ref _accessLog);

    public TrafficInsights Insights { get; }

    /// <summary>Lines dropped because the access log buffer was full, since start (every writer so far).</summary>
    public long AccessLogDropped => _droppedBefore + (AccessLog?.Dropped ?? 0);

    public long AccessLogWritten => _writtenBefore + (AccessLog?.Written ?? 0);

    /// <summary>Applies a snapshot's settings before it is published (control plane).</summary>
    public void Apply(ProxySnapshot snapshot)
    {
        ObservabilityModel model = snapshot.Observability;
        lock (_lock)
        {
            Insights.Configure(model.Insights);
            AccessLogWriter? current = _accessLog;
            if (model.AccessLog is null ? current is null : model.AccessLog.SameAs(current?.Model))
            {
                return;
            }
            AccessLogWriter? next = null;
            if (model.AccessLog is { } settings)
            {
                try
                {
                    next = new AccessLogWriter(settings);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // The config is valid; the file system said no. Requests go on without a log rather than failing.
                    ProxyLog.Error("access_log_open_failed", ("path", settings.Path), ("error", e.Message));
                }
            }
            Volatile.Write(ref _accessLog, next);
            if (current is not null)
            {
                current.Stop(TimeSpan.FromSeconds(2));
                _droppedBefore += current.Dropped;
                _writtenBefore += current.Written;
            }
        }
    }

    /// <summary>SIGUSR1: reopen the access log file (after logrotate renamed it).</summary>
    public void ReopenAccessLog() => AccessLog?.Reopen();

    public void Dispose()
    {
        lock (_lock)
        {
            _accessLog?.Stop(TimeSpan.FromSeconds(2));
            Insights.Dispose();
        }
    }
}
