using System.Buffers;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Forwarding;
using Proxy.Http1;

namespace Proxy.Benchmarks.Trailers;

/// <summary>
/// A gRPC-shaped chunked body (one 64-byte message, then grpc-status/grpc-message trailers) decoded with its trailer
/// section kept and walked, against the same body without trailers; and the grpc-timeout parse. All 0 B: the trailer
/// buffer is pooled and returned on Reset.
/// </summary>
[MemoryDiagnoser]
public class TrailerBenchmarks
{
    private ReadOnlySequence<byte> _withTrailers;
    private ReadOnlySequence<byte> _withoutTrailers;
    private readonly byte[] _timeout = "250m"u8.ToArray();

    [GlobalSetup]
    public void Setup()
    {
        string message = new('m', 64);
        _withTrailers = new(Encoding.ASCII.GetBytes($"40\r\n{message}\r\n0\r\ngrpc-status: 0\r\ngrpc-message: OK\r\nx-checksum: 1f3a\r\n\r\n"));
        _withoutTrailers = new(Encoding.ASCII.GetBytes($"40\r\n{message}\r\n0\r\n\r\n"));
    }

    [Benchmark(Baseline = true)]
    public int Decode_NoTrailers() => Decode(_withoutTrailers);

    [Benchmark]
    public int Decode_WithTrailers() => Decode(_withTrailers);

    [Benchmark]
    public long GrpcTimeout_Parse() => GrpcTimeout.TryParse(_timeout, out long ms) ? ms : -1;

    private static int Decode(ReadOnlySequence<byte> buffer)
    {
        ChunkedDecoder decoder = default;
        int fields = 0;
        while (decoder.Read(buffer, out _, out SequencePosition consumed, out _) == ChunkStatus.Data)
        {
            buffer = buffer.Slice(consumed);
        }
        var walk = new TrailerFields(decoder.TrailerSection);
        while (walk.MoveNext(out _, out _, out _))
        {
            fields++;
        }
        decoder.Reset();
        return fields;
    }
}
