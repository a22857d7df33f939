using System.Buffers;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;

namespace Proxy.Diagnostics;

/// <summary>
/// Structured JSON log lines on stdout, or the writer an embedder chose (one object per line). Lines are formatted by the caller only when
/// the level is enabled, then queued to a bounded channel drained by one background writer: a slow stdout
/// drops lines (and counts them) instead of blocking a request.
/// </summary>
internal static class ProxyLog
{
    private static readonly Channel<string> s_lines = Channel.CreateBounded<string>(
        new BoundedChannelOptions(8192) { FullMode = BoundedChannelFullMode.DropWrite, SingleReader = true });
    private static long s_dropped;
    private static readonly TextWriter s_stdout = CreateStdout();
    // Swapped by SetOutput on any thread; the writer loop reads it once per batch.
    private static volatile TextWriter s_output = s_stdout;
    private static readonly Task s_writer = Task.Run(WriteLoopAsync);

    /// <summary>Process-wide; read before formatting each line (<see cref="ProxyLogging.MinimumLevel"/>).</summary>
    public static ProxyLogLevel MinimumLevel { get; set; } = ProxyLogLevel.Info;

    /// <summary>
    /// Lines lost since start (<c>proxy_log_dropped_total</c>): the queue was full, or the output threw while writing or
    /// flushing their batch.
    /// </summary>
    public static long DroppedLines => Interlocked.Read(ref s_dropped);

    /// <summary>
    /// Redirects output (<see cref="ProxyLogging.SetOutput"/>); null goes back to stdout. Pass <see cref="TextWriter.Null"/> to silence.
    /// </summary>
    public static void SetOutput(TextWriter? writer) => s_output = writer ?? s_stdout;

    public static bool IsEnabled(ProxyLogLevel level) => level >= MinimumLevel;

    public static void Write(ProxyLogLevel level, string evt, params ReadOnlySpan<(string Key, object? Value)> fields)
    {
        if (!IsEnabled(level))
        {
            return;
        }
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("time", DateTime.UtcNow);
            json.WriteString("level", level switch { ProxyLogLevel.Debug => "debug", ProxyLogLevel.Info => "info", ProxyLogLevel.Warn => "warn", _ => "error" });
            json.WriteString("event", evt);
            foreach (var (key, value) in fields)
            {
                switch (value)
                {
                    case null: json.WriteNull(key); break;
                    case int i: json.WriteNumber(key, i); break;
                    case long l: json.WriteNumber(key, l); break;
                    case double d: json.WriteNumber(key, d); break;
                    case bool b: json.WriteBoolean(key, b); break;
                    case string[] list:
                        json.WriteStartArray(key);
                        foreach (var s in list)
                        {
                            json.WriteStringValue(s);
                        }
                        json.WriteEndArray();
                        break;
                    default: json.WriteString(key, value.ToString()); break;
                }
            }
            json.WriteEndObject();
        }
        if (!s_lines.Writer.TryWrite(Encoding.UTF8.GetString(buffer.WrittenSpan)))
        {
            Interlocked.Increment(ref s_dropped);
        }
    }

    public static void Info(string evt, params ReadOnlySpan<(string Key, object? Value)> fields) => Write(ProxyLogLevel.Info, evt, fields);
    public static void Warn(string evt, params ReadOnlySpan<(string Key, object? Value)> fields) => Write(ProxyLogLevel.Warn, evt, fields);
    public static void Error(string evt, params ReadOnlySpan<(string Key, object? Value)> fields) => Write(ProxyLogLevel.Error, evt, fields);

    /// <summary>Waits (briefly) until queued lines are written; used at shutdown.</summary>
    public static async Task FlushAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (s_lines.Reader.Count > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10).ConfigureAwait(false);
        }
        await Task.Delay(10).ConfigureAwait(false);
    }

    private static TextWriter CreateStdout()
        => new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false), 16 * 1024) { AutoFlush = false };

    private static async Task WriteLoopAsync()
    {
        var reader = s_lines.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            var output = s_output;
            long batch = 0;
            try
            {
                while (reader.TryRead(out var line))
                {
                    batch++;
                    output.Write(line);
                    output.Write('\n');
                }
                output.Flush();
            }
            catch (Exception)
            {
                // stdout gone (closed pipe), or an embedder's writer failed: the batch taken so far is lost (what the
                // writer buffered may or may not have gone out), so it counts as dropped, like a full queue's lines.
                // Keep draining so producers never block.
                Interlocked.Add(ref s_dropped, batch);
            }
        }
    }

    public static string Format(EndPoint? endPoint) => endPoint?.ToString() ?? "";
}
