namespace Proxy.Diagnostics;

/// <summary>Severity of an engine log line; <see cref="ProxyLogging.MinimumLevel"/> drops the lines below it.</summary>
public enum ProxyLogLevel : byte
{
    /// <summary>Detail for debugging the engine; off by default.</summary>
    Debug = 0,

    /// <summary>Normal events: start, reload, local replies below 500 (<c>local_reply</c> 404 <c>no_route</c>).</summary>
    Info,

    /// <summary>Something failed for one request or connection: upstream errors, local replies of 500 and above.</summary>
    Warn,

    /// <summary>A bug or a broken part: a filter that threw (<c>filter_failed</c>), a request that failed unexpectedly.</summary>
    Error,

    /// <summary>As <see cref="ProxyLogging.MinimumLevel"/>: no engine log lines at all.</summary>
    None,
}

/// <summary>
/// Where the engine's log goes and how much of it: one JSON object per line (<c>time</c>, <c>level</c>, <c>event</c>,
/// then the event's fields; see docs/operations.md, "Logs"). By default the lines go to standard output at
/// <see cref="ProxyLogLevel.Info"/> and above.
/// </summary>
/// <remarks>
/// Both settings are <b>process-wide</b>: the log is shared by every <see cref="Hosting.ProxyServer"/> in the process.
/// A request never waits for the log: a line is formatted only when its level is enabled, queued (a bounded queue that
/// drops lines when the output cannot keep up), and written by one background task. The access log is separate
/// (<c>access_log</c> in the config).
/// </remarks>
public static class ProxyLogging
{
    /// <summary>
    /// The least severe level written (default <see cref="ProxyLogLevel.Info"/>; <see cref="ProxyLogLevel.None"/>
    /// writes nothing). Takes effect for the next line. Process-wide.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is not a defined <see cref="ProxyLogLevel"/>.</exception>
    public static ProxyLogLevel MinimumLevel
    {
        get => ProxyLog.MinimumLevel;
        set
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThan((byte)value, (byte)ProxyLogLevel.None, nameof(value));
            ProxyLog.MinimumLevel = value;
        }
    }

    /// <summary>
    /// Sends the log lines to <paramref name="writer"/> (UTF-8 JSON text, each line ended by <c>'\n'</c>), or back to
    /// standard output when it is null; <see cref="TextWriter.Null"/> discards them. Process-wide.
    /// </summary>
    /// <remarks>
    /// The engine writes to the writer from one background task at a time, never from a request's thread, so it needs
    /// no locking of its own, and a slow writer drops lines instead of slowing requests. It is flushed after each batch
    /// of lines. An exception from it loses that batch and nothing else; the lost lines are counted in
    /// <c>proxy_log_dropped_total</c>. Lines queued before the call may still go to the previous writer: await
    /// <see cref="Hosting.ProxyServer.FlushLogsAsync"/> before disposing that one.
    /// </remarks>
    public static void SetOutput(TextWriter? writer) => ProxyLog.SetOutput(writer);
}
