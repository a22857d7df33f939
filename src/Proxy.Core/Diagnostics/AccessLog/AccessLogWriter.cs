using System.Buffers;
using System.Diagnostics;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Proxy.Diagnostics.AccessLog;

/// <summary>
/// The access log: requests enqueue fixed-size records into an <see cref="AccessLogRing"/>; one background thread
/// formats them with <see cref="Utf8JsonWriter"/> (one JSON object per line) and writes whole lines to stdout or a
/// file. When the ring is full the record is dropped and counted; a request never blocks on the log.
/// <see cref="Reopen"/> (SIGUSR1) closes and reopens the file, for rotation by rename.
/// </summary>
internal sealed class AccessLogWriter : IDisposable
{
    private const int FlushThreshold = 64 * 1024;

    /// <summary>
    /// The writer wakes on its own this often: waking it per record would cost a futex wake and a context switch
    /// per request when traffic is light (measured), so lines reach the output within this delay, as with nginx's
    /// buffered access_log. A quarter-full ring wakes it early.
    /// </summary>
    private const int FlushIntervalMs = 100;

    private static readonly JsonWriterOptions s_jsonOptions = new()
    {
        // Paths and ids are ASCII from the wire: escape only what JSON requires, keep '/', '+', '&' readable.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        SkipValidation = true,
    };

    private readonly AccessLogRing _ring;
    private readonly AccessLogField[] _fields;
    private readonly Thread _thread;
    private readonly ManualResetEventSlim _wake = new(false);
    private readonly ArrayBufferWriter<byte> _buffer = new(FlushThreshold + 4096);
    private readonly Utf8JsonWriter _json;
    private Stream? _stream;
    private long _dropped;
    private long _written;
    /// <summary>Lines formatted into <see cref="_buffer"/> since the last <see cref="WriteOut"/> (writer thread only).</summary>
    private int _pending;
    private int _sleeping;
    private readonly int _wakeAt;
    private int _reopen;
    private volatile bool _stopping;

    public AccessLogWriter(AccessLogModel model)
    {
        Model = model;
        _fields = model.Fields;
        _ring = new AccessLogRing(model.Buffer);
        _wakeAt = Math.Max(1, _ring.Capacity / 4);
        _json = new Utf8JsonWriter(_buffer, s_jsonOptions);
        _stream = Open(model.Path); // a bad path fails here, on the control plane, with the caller's error handling
        _thread = new Thread(Run) { IsBackground = true, Name = "proxy-access-log" };
        _thread.Start();
    }

    public AccessLogModel Model { get; }

    /// <summary>Lines dropped because the ring was full or the output failed them (<c>proxy_access_log_dropped_total</c>).</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Lines the output took (<c>proxy_access_log_lines_total</c>).</summary>
    public long Written => Interlocked.Read(ref _written);

    /// <summary>Data plane: claims a slot for a record, or counts a drop and returns false.</summary>
    public bool TryClaim(out long position)
    {
        if (_ring.TryClaim(out position))
        {
            return true;
        }
        Interlocked.Increment(ref _dropped);
        return false;
    }

    public ref AccessLogRecord RecordAt(long position) => ref _ring.RecordAt(position);

    /// <summary>Data plane: publishes a filled record; wakes a sleeping writer only when the ring is filling up.</summary>
    public void Publish(long position)
    {
        _ring.Publish(position);
        if (Volatile.Read(ref _sleeping) != 0 && _ring.ApproximateCount >= _wakeAt)
        {
            _wake.Set();
        }
    }

    /// <summary>Reopens the file at its configured path on the writer thread (after a rename by logrotate).</summary>
    public void Reopen()
    {
        Volatile.Write(ref _reopen, 1);
        _wake.Set();
    }

    /// <summary>A <see cref="Reopen"/> the writer thread has not taken up yet (tests wait on it).</summary>
    internal bool ReopenPending => Volatile.Read(ref _reopen) != 0;

    private static Stream Open(string path)
    {
        if (path == AccessLogModel.Stdout)
        {
            return Console.OpenStandardOutput();
        }
        string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null)
        {
            Directory.CreateDirectory(directory);
        }
        // Shared read/delete: tail -f and a rotating rename keep working while we hold it.
        return new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete, bufferSize: 0);
    }

    private void Run()
    {
        while (true)
        {
            bool any = false;
            while (_ring.TryPeek(out long position))
            {
                Format(ref _ring.RecordAt(position));
                _ring.Release(position);
                any = true;
                if (_buffer.WrittenCount >= FlushThreshold)
                {
                    WriteOut();
                }
            }
            if (any)
            {
                WriteOut();
            }
            if (Interlocked.Exchange(ref _reopen, 0) != 0)
            {
                DoReopen();
            }
            if (_stopping)
            {
                if (!_ring.TryPeek(out _))
                {
                    return;
                }
                continue;
            }
            Volatile.Write(ref _sleeping, 1);
            // Re-check after announcing sleep: a producer that filled the ring before seeing the flag did not wake us.
            // (A claimed slot not yet published counts too, so "filling up" also needs a record ready, or we would spin.)
            if ((_ring.ApproximateCount < _wakeAt || !_ring.TryPeek(out _)) && Volatile.Read(ref _reopen) == 0)
            {
                _wake.Wait(FlushIntervalMs);
            }
            Volatile.Write(ref _sleeping, 0);
            _wake.Reset();
        }
    }

    private void DoReopen()
    {
        if (Model.Path == AccessLogModel.Stdout)
        {
            return;
        }
        Stream reopened;
        try
        {
            reopened = Open(Model.Path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // As nginx does: lines go on to the file already open (renamed, most likely) until a reopen succeeds.
            ProxyLog.Error("access_log_reopen_failed", ("path", Model.Path), ("error", e.Message));
            return;
        }
        _stream?.Dispose();
        _stream = reopened;
        ProxyLog.Info("access_log_reopened", ("path", Model.Path));
    }

    private void WriteOut()
    {
        if (_buffer.WrittenCount == 0)
        {
            return;
        }
        bool written = false;
        try
        {
            if (_stream is { } stream)
            {
                stream.Write(_buffer.WrittenSpan);
                stream.Flush();
                written = true;
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            ProxyLog.Error("access_log_write_failed", ("path", Model.Path), ("error", e.Message));
        }
        // A failed write (a full disk, stdout a broken pipe) lost its lines: counted as dropped, not as written.
        if (written)
        {
            Interlocked.Add(ref _written, _pending);
        }
        else
        {
            Interlocked.Add(ref _dropped, _pending);
        }
        _pending = 0;
        _buffer.ResetWrittenCount();
    }

    private void Format(ref AccessLogRecord r)
    {
        _json.Reset(_buffer);
        _json.WriteStartObject();
        foreach (AccessLogField field in _fields)
        {
            switch (field)
            {
                case AccessLogField.Time:
                    _json.WriteString("time"u8, new DateTime(r.StartUtcTicks, DateTimeKind.Utc));
                    break;
                case AccessLogField.Listener:
                    _json.WriteString("listener"u8, r.Listener);
                    break;
                case AccessLogField.Route:
                    WriteNullable("route"u8, r.Route);
                    break;
                case AccessLogField.Cluster:
                    WriteNullable("cluster"u8, r.Cluster);
                    break;
                case AccessLogField.Destination:
                    WriteNullable("destination"u8, r.Destination);
                    break;
                case AccessLogField.Method:
                    WriteNullable("method"u8, r.Method);
                    break;
                case AccessLogField.Path:
                    WritePath(ref r);
                    break;
                case AccessLogField.Status:
                    _json.WriteNumber("status"u8, r.Status);
                    break;
                case AccessLogField.DurationMs:
                    _json.WriteNumber("duration_ms"u8, Milliseconds(r.DurationTicks));
                    break;
                case AccessLogField.UpstreamMs:
                    if (r.UpstreamTicks < 0)
                    {
                        _json.WriteNull("upstream_ms"u8);
                    }
                    else
                    {
                        _json.WriteNumber("upstream_ms"u8, Milliseconds(r.UpstreamTicks));
                    }
                    break;
                case AccessLogField.BytesIn:
                    _json.WriteNumber("bytes_in"u8, r.BytesIn);
                    break;
                case AccessLogField.BytesOut:
                    _json.WriteNumber("bytes_out"u8, r.BytesOut);
                    break;
                case AccessLogField.Client:
                    WriteClient(ref r);
                    break;
                case AccessLogField.Consumer:
                    WriteConsumer(ref r);
                    break;
                case AccessLogField.Policy:
                    WriteNullable("policy"u8, r.Policy);
                    break;
                case AccessLogField.TraceId:
                    if (r.HasTrace)
                    {
                        _json.WriteString("trace_id"u8, (ReadOnlySpan<byte>)r.TraceId);
                    }
                    else
                    {
                        _json.WriteNull("trace_id"u8);
                    }
                    break;
                case AccessLogField.SpanId:
                    if (r.HasSpan)
                    {
                        _json.WriteString("span_id"u8, (ReadOnlySpan<byte>)r.SpanId);
                    }
                    else
                    {
                        _json.WriteNull("span_id"u8);
                    }
                    break;
                case AccessLogField.RequestId:
                    _json.WriteString("request_id"u8, ((ReadOnlySpan<byte>)r.RequestId)[..r.RequestIdLength]);
                    break;
            }
        }
        _json.WriteEndObject();
        _json.Flush();
        _buffer.Write("\n"u8);
        _pending++;
    }

    private void WriteNullable(ReadOnlySpan<byte> name, string? value)
    {
        if (value is null)
        {
            _json.WriteNull(name);
        }
        else
        {
            _json.WriteString(name, value);
        }
    }

    private void WritePath(ref AccessLogRecord r)
    {
        ReadOnlySpan<byte> path = ((ReadOnlySpan<byte>)r.Path)[..r.PathLength];
        // The target is bytes from the client; invalid UTF-8 would make the line invalid JSON, so it is escaped as Latin-1.
        if (System.Text.Unicode.Utf8.IsValid(path))
        {
            _json.WriteString("path"u8, path);
        }
        else
        {
            _json.WriteString("path"u8, System.Text.Encoding.Latin1.GetString(path));
        }
        if (r.PathTruncated)
        {
            _json.WriteBoolean("path_truncated"u8, true);
        }
    }

    private void WriteConsumer(ref AccessLogRecord r)
    {
        if (r.ConsumerLength == 0)
        {
            _json.WriteNull("consumer"u8);
            return;
        }
        ReadOnlySpan<byte> consumer = ((ReadOnlySpan<byte>)r.Consumer)[..r.ConsumerLength];
        // Identities are opaque bytes (a key store's or a token's); invalid UTF-8 is written as Latin-1, like the path.
        if (System.Text.Unicode.Utf8.IsValid(consumer))
        {
            _json.WriteString("consumer"u8, consumer);
        }
        else
        {
            _json.WriteString("consumer"u8, System.Text.Encoding.Latin1.GetString(consumer));
        }
        if (r.ConsumerTruncated)
        {
            _json.WriteBoolean("consumer_truncated"u8, true);
        }
    }

    private void WriteClient(ref AccessLogRecord r)
    {
        if (r.Client is null)
        {
            _json.WriteNull("client"u8);
            return;
        }
        Span<char> text = stackalloc char[64];
        if (r.Client.TryFormat(text, out int written))
        {
            _json.WriteString("client"u8, text[..written]);
        }
    }

    private static double Milliseconds(long stopwatchTicks)
        => Math.Round(stopwatchTicks * 1000.0 / Stopwatch.Frequency, 3);

    public void Dispose() => Stop(TimeSpan.FromSeconds(2));

    /// <summary>Stops accepting, writes what is queued (bounded by <paramref name="timeout"/>), closes the file.</summary>
    public void Stop(TimeSpan timeout)
    {
        if (_stopping)
        {
            return;
        }
        _stopping = true;
        _wake.Set();
        _thread.Join(timeout);
        if (_stream is { } stream && Model.Path != AccessLogModel.Stdout)
        {
            stream.Dispose();
        }
        _stream = null;
    }
}
