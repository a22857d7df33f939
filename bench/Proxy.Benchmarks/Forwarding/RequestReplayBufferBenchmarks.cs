using System.Buffers;
using System.IO.Pipelines;
using BenchmarkDotNet.Attributes;
using Proxy.Forwarding;
using Proxy.Transport;

namespace Proxy.Benchmarks.Forwarding;

/// <summary>
/// The retry replay buffer on a 1 KiB request body (a typical JSON POST or gRPC call): keeping the copy while it
/// streams (Append, in two reads as a pump would), replaying it in content-length or chunked framing into a pipe, and
/// giving the block back. Baseline: the naive copy, a fresh array per request. The buffer's copy should be 0 B warm.
/// </summary>
[MemoryDiagnoser]
public class RequestReplayBufferBenchmarks
{
    private readonly BlockMemoryPool _pool = new(16 * 1024, maxRetained: 64);
    private RequestReplayBuffer _buffer = null!;
    private ReadOnlySequence<byte> _first;
    private ReadOnlySequence<byte> _second;
    private Pipe _pipe = null!;

    [GlobalSetup]
    public void Setup()
    {
        byte[] body = new byte[1024];
        new Random(42).NextBytes(body);
        _first = new ReadOnlySequence<byte>(body, 0, 700);
        _second = new ReadOnlySequence<byte>(body, 700, 324);
        _buffer = new RequestReplayBuffer(_pool);
        _pipe = new Pipe(new PipeOptions(pool: _pool, minimumSegmentSize: 16 * 1024, useSynchronizationContext: false,
            readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline));
    }

    [Benchmark(Baseline = true)]
    public int NaiveArrayCopy()
    {
        byte[] copy = new byte[_first.Length + _second.Length];
        _first.CopyTo(copy);
        _second.CopyTo(copy.AsSpan((int)_first.Length));
        _pipe.Writer.Write(copy);
        return Drain();
    }

    [Benchmark]
    public int AppendAndReplay_ContentLength() => AppendAndReplay(BodyFraming.ContentLength);

    [Benchmark]
    public int AppendAndReplay_Chunked() => AppendAndReplay(BodyFraming.Chunked);

    private int AppendAndReplay(BodyFraming framing)
    {
        _buffer.Start(64 * 1024);
        _buffer.Append(_first);
        _buffer.Append(_second);
        _buffer.WriteHttp1(_pipe.Writer, framing);
        _buffer.Reset();
        return Drain();
    }

    private int Drain()
    {
        // Completes synchronously: far below the pause threshold.
        _ = _pipe.Writer.FlushAsync().GetAwaiter().GetResult();
        _pipe.Reader.TryRead(out ReadResult result);
        int length = (int)result.Buffer.Length;
        _pipe.Reader.AdvanceTo(result.Buffer.End);
        return length;
    }
}
