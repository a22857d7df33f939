using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Text;
using System.Text.Json;
using BenchmarkDotNet.Attributes;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;
using Proxy.Transport;

namespace Proxy.Benchmarks.Pipeline;

/// <summary>
/// The request-body phase (Http1ServerConnection.RequestBodyPhaseAsync) on a 4 KiB JSON POST, without sockets: the
/// phase's body pump reads the content-length body from a pipe into the connection's
/// <see cref="RequestReplayBuffer"/> (pooled 16 KiB blocks, as the phase uses), the built-in <c>request_body</c> policy
/// (<see cref="RequestBodyFilter"/>: content type listed, well-formed JSON) checks the buffered sequence, and the
/// buffer gives its block back at the end of the request. Each part alone beside the whole, and the naive design as
/// the baseline: a fresh array per body and <see cref="JsonDocument"/> to validate it. The phase should be 0 B warm.
/// </summary>
[MemoryDiagnoser]
public class RequestBodyPhaseBenchmarks
{
    private const int BodyBytes = 4096;

    private readonly BodyPump _pump = new();
    private readonly NoTimer _timer = new();
    private RequestReplayBuffer _buffer = null!;
    private RequestBodyFilter _filter = null!;
    private RequestContext _context = null!;
    private RequestHead _head = null!;
    private Pipe _pipe = null!;
    private byte[] _body = null!;
    private readonly IPAddress _client = IPAddress.Parse("10.20.30.40");

    [GlobalSetup]
    public void Setup()
    {
        // A realistic JSON document of exactly 4 KiB: an array of small objects, padded with trailing whitespace.
        const string Item = "{\"id\":12345,\"name\":\"widget \\u00e9\",\"price\":19.99,\"ok\":true},";
        const string End = "{\"id\":0}]}";
        var json = new StringBuilder("{\"items\":[");
        while (json.Length + Item.Length + End.Length <= BodyBytes)
        {
            json.Append(Item);
        }
        json.Append(End);
        _body = Encoding.UTF8.GetBytes(json.ToString().PadRight(BodyBytes));
        if (_body.Length != BodyBytes || !RequestBodyFilter.IsWellFormedJson(new ReadOnlySequence<byte>(_body)))
        {
            throw new InvalidOperationException("The benchmark body must be 4 KiB of valid JSON.");
        }

        _head = new RequestHead();
        byte[] raw = Encoding.ASCII.GetBytes(
            "POST /api/orders HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nContent-Type: application/json; charset=utf-8\r\n" +
            "Content-Length: 4096\r\n\r\n");
        Http1RequestReader.TryRead(new ReadOnlySequence<byte>(raw), _head, HttpLimits.Default, out _, out _);
        _context = new RequestContext();
        _context.Begin(_head, _client, "orders", "public");
        _filter = new RequestBodyFilter(64 * 1024, ["application/json"], json: true);
        _buffer = new RequestReplayBuffer(BlockMemoryPool.Large);
        // Inline schedulers: a read of bytes already written completes synchronously, as on a warm connection whose
        // body arrived with its head.
        _pipe = new Pipe(new PipeOptions(pool: BlockMemoryPool.Large, minimumSegmentSize: 16 * 1024, useSynchronizationContext: false,
            readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline));
    }

    /// <summary>The whole phase: body read into the buffer, the request_body check, the block given back.</summary>
    [Benchmark]
    public FilterStatus BufferAndCheck()
    {
        Buffer();
        FilterStatus status = _filter.OnRequestBody(_context, _buffer.AsSequence());
        _buffer.Reset();
        return status;
    }

    /// <summary>The body-buffer part alone: pump into the replay buffer and reset.</summary>
    [Benchmark]
    public long BufferOnly()
    {
        Buffer();
        long length = _buffer.AsSequence().Length;
        _buffer.Reset();
        return length;
    }

    /// <summary>The request_body policy's check alone, over a body already buffered (direct Append, then kept).</summary>
    [Benchmark]
    public FilterStatus CheckOnly()
    {
        _buffer.Start(64 * 1024);
        _buffer.Append(_body);
        FilterStatus status = _filter.OnRequestBody(_context, _buffer.AsSequence());
        _buffer.Reset();
        return status;
    }

    /// <summary>Naive: the body copied into a fresh array, validated by parsing a <see cref="JsonDocument"/>.</summary>
    [Benchmark(Baseline = true)]
    public bool NaiveArrayAndJsonDocument()
    {
        _pipe.Writer.Write(_body);
        _ = _pipe.Writer.FlushAsync().GetAwaiter().GetResult();
        _pipe.Reader.TryRead(out ReadResult result);
        byte[] copy = result.Buffer.ToArray();
        _pipe.Reader.AdvanceTo(result.Buffer.End);
        try
        {
            using var document = JsonDocument.Parse(copy);
            return document.RootElement.ValueKind == JsonValueKind.Object;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    private void Buffer()
    {
        _pipe.Writer.Write(_body);
        _ = _pipe.Writer.FlushAsync().GetAwaiter().GetResult();
        _buffer.Start(64 * 1024);
        // Completes synchronously: the whole body is already in the pipe.
        PumpResult result = _pump.CopyAsync(_pipe.Reader, null, BodyFraming.ContentLength, BodyBytes, BodyFraming.None, 64 * 1024, _timer, _buffer)
            .GetAwaiter().GetResult();
        if (result != PumpResult.Completed)
        {
            throw new InvalidOperationException(result.ToString());
        }
    }

    /// <summary>The connection arms its read and write deadlines here; a benchmark has none.</summary>
    private sealed class NoTimer : IBodyPumpTimer
    {
        public void ArmRead(PipeReader source)
        {
        }

        public void ArmWrite()
        {
        }

        public void DisarmPump()
        {
        }

        public void LastFlush(BodyPump pump)
        {
        }
    }
}
