using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Diagnostics;
using Proxy.Diagnostics.AccessLog;
using Proxy.Diagnostics.Tracing;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Upstream;

namespace Proxy.Benchmarks.Observability;

/// <summary>
/// The per-request cost of tracing when nothing records spans (no listener on the "Proxy" ActivitySource and
/// sampling 0): parse the client's traceparent, choose a new span id, write traceparent/tracestate upstream, end.
/// Must allocate 0 B. Also the access log's hot-path part: claim a ring slot, copy the values, publish.
/// </summary>
[MemoryDiagnoser]
public class TracePropagationBenchmarks
{
    private static readonly byte[] s_traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"u8.ToArray();
    private readonly byte[] _traceId = new byte[32];
    private readonly byte[] _parentId = new byte[16];
    private readonly RequestHead _head = new();
    private readonly RequestTelemetry _telemetry = new();
    private readonly DestinationState _destination = new("http://127.0.0.1:9000", "127.0.0.1", 9000, 1);
    private readonly Pipe _pipe = new(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
    private AccessLogWriter? _log;

    [GlobalSetup]
    public void Setup()
    {
        string request = "GET /api/items?page=2 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n"
            + "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r\n\r\n";
        if (Http1RequestReader.TryRead(new ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(request)), _head, HttpLimits.Default, out _, out _) != HeadStatus.Complete)
        {
            throw new InvalidOperationException("benchmark request does not parse");
        }
        if (ProxyTracing.Source.HasListeners())
        {
            throw new InvalidOperationException("something listens to the Proxy source: this benchmark measures the unobserved path");
        }
        _log = new AccessLogWriter(new AccessLogModel { Path = Path.Combine(Path.GetTempPath(), "proxy-bench-access.log"), Buffer = 8192 });
    }

    [GlobalCleanup]
    public void Cleanup() => _log?.Stop(TimeSpan.FromSeconds(5));

    [Benchmark]
    public bool ParseTraceParent() => TraceContext.TryParseTraceParent(s_traceParent, _traceId, _parentId, out _);

    [Benchmark]
    public long PropagateUnsampled()
    {
        RequestTelemetry telemetry = _telemetry;
        telemetry.Prepare(s_tracing, "public", "origin");
        telemetry.UpstreamRequestStarting(_head, _destination);
        var headWriter = new HeadWriter(_pipe.Writer);
        telemetry.WriteTraceFields(ref headWriter, _head);
        headWriter.Commit();
        telemetry.UpstreamResponseReceived(_head, 200);
        telemetry.End(_head, "all", 200, default);
        telemetry.Reset();
        _pipe.Writer.FlushAsync().GetAwaiter().GetResult();
        _pipe.Reader.TryRead(out ReadResult result);
        long length = result.Buffer.Length;
        _pipe.Reader.AdvanceTo(result.Buffer.End);
        return length;
    }

    private static readonly TracingModel s_tracing = new() { Sampling = 0 };

    [Benchmark]
    public bool EnqueueAccessLogRecord()
    {
        if (!_log!.TryClaim(out long position))
        {
            return false;
        }
        ref AccessLogRecord r = ref _log.RecordAt(position);
        r.StartUtcTicks = DateTime.UtcNow.Ticks;
        r.DurationTicks = 1234;
        r.UpstreamTicks = 1000;
        r.Listener = "public";
        r.Route = "all";
        r.Cluster = "origin";
        r.Destination = _destination.Address;
        r.Method = "GET";
        r.Status = 200;
        ReadOnlySpan<byte> path = _head.Path;
        path.CopyTo(r.Path);
        r.PathLength = path.Length;
        r.SetConsumer("alice"u8);
        r.Policy = null;
        _log.Publish(position);
        return true;
    }
}
