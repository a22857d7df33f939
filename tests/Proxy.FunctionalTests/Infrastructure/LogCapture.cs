using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Proxy.Diagnostics;
using Proxy.Hosting;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// Tests that redirect the engine log (<see cref="ProxyLogging"/>, process-wide) or change its level: xunit runs this
/// collection alone, after the parallel ones, so no other test's lines or settings interleave.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessLogCollection
{
    public const string Name = "process log";
}

/// <summary>
/// The engine's log lines, captured through the public <see cref="ProxyLogging.SetOutput"/> while it is alive; disposing
/// it flushes the queue and sends the log back to stdout. Use only in <see cref="ProcessLogCollection"/>.
/// </summary>
internal sealed class LogCapture : IAsyncDisposable
{
    private readonly Sink _sink = new();
    private bool _stopped;

    private LogCapture() => ProxyLogging.SetOutput(_sink);

    public static LogCapture Start() => new();

    /// <summary>Every complete line so far, parsed.</summary>
    public JsonElement[] Lines => _sink.Lines.Select(line => JsonDocument.Parse(line).RootElement).ToArray();

    /// <summary>The lines of one event so far.</summary>
    public JsonElement[] Events(string evt) => Lines.Where(line => line.GetProperty("event").GetString() == evt).ToArray();

    /// <summary>The first line of <paramref name="evt"/> that <paramref name="match"/> accepts, waiting for it (bounded).</summary>
    public async Task<JsonElement> WaitForEventAsync(string evt, Func<JsonElement, bool> match)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            foreach (JsonElement line in Events(evt))
            {
                if (match(line))
                {
                    return line;
                }
            }
            if (clock.Elapsed > TestDefaults.Timeout)
            {
                Assert.Fail($"no '{evt}' log line matched; captured:\n{string.Join('\n', _sink.Lines)}");
            }
            await Task.Delay(20);
        }
    }

    /// <summary>Waits for the lines queued so far to be written, then sends the log back to stdout.</summary>
    public async ValueTask StopAsync()
    {
        if (!_stopped)
        {
            _stopped = true;
            await ProxyServer.FlushLogsAsync();
            ProxyLogging.SetOutput(null);
        }
    }

    public ValueTask DisposeAsync() => StopAsync();

    /// <summary>Written by the engine's one background log writer; read by the test thread.</summary>
    private sealed class Sink : TextWriter
    {
        private readonly ConcurrentQueue<string> _lines = new();
        private readonly StringBuilder _partial = new();

        public override Encoding Encoding => Encoding.UTF8;

        public string[] Lines => _lines.ToArray();

        public override void Write(char value)
        {
            if (value == '\n')
            {
                _lines.Enqueue(_partial.ToString());
                _partial.Clear();
            }
            else
            {
                _partial.Append(value);
            }
        }

        public override void Write(string? value)
        {
            foreach (char c in value ?? "")
            {
                Write(c);
            }
        }
    }
}
