using System.Buffers;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http2.HPack;
using Proxy.Http2.Server;

namespace Proxy.Benchmarks.Http2;

/// <summary>
/// The per-stream header conversion of the HTTP/2 server: a warm HPACK block of the browser request decoded,
/// validated (RFC 9113 section 8) and written as an HTTP/1.1 head for the bridged pipeline. Baseline: the HPACK
/// decode alone into a counting sink, so the difference is the cost of validation and synthesis.
/// </summary>
[MemoryDiagnoser]
public class Http2StreamConversionBenchmarks
{
    private byte[] _warmBlock = [];
    private HPackDecoder _decoder = null!;
    private HPackDecoder _baselineDecoder = null!;
    private readonly Http2RequestHead _head = new(32 * 1024);
    private readonly ArrayBufferWriter<byte> _output = new(4096);

    private struct CountingSink : IHeaderSink
    {
        public int Octets;

        public void OnStaticIndexedHeader(int index) => Octets++;

        public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed) => Octets += value.Length;

        public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed) => Octets += name.Length + value.Length;
    }

    [GlobalSetup]
    public void Setup()
    {
        var encoder = new HPackEncoder();
        var block = new byte[4096];
        byte[] first = Encode(encoder, block);
        _warmBlock = Encode(encoder, block);
        _decoder = new HPackDecoder();
        _baselineDecoder = new HPackDecoder();
        CountingSink sink = default;
        _baselineDecoder.Decode(first, endHeaders: true, ref sink);
        _head.Reset(trailers: false);
        Http2RequestHead.Sink headSink = _head.AsSink();
        _decoder.Decode(first, endHeaders: true, ref headSink);
        Console.WriteLine($"// warm block {_warmBlock.Length} octets");
    }

    private static byte[] Encode(HPackEncoder encoder, byte[] block)
    {
        encoder.TryBeginHeaderBlock(block, out int length);
        foreach (var (name, value) in HPackBenchmarks.BrowserRequest)
        {
            encoder.TryEncode(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), HPackIndexing.Auto, block.AsSpan(length), out int written);
            length += written;
        }
        return block.AsSpan(0, length).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _decoder.Dispose();
        _baselineDecoder.Dispose();
    }

    [Benchmark(Baseline = true)]
    public int HPackDecodeOnly()
    {
        CountingSink sink = default;
        _baselineDecoder.Decode(_warmBlock, endHeaders: true, ref sink);
        return sink.Octets;
    }

    [Benchmark]
    public int DecodeValidateAndWriteHttp11Head()
    {
        _head.Reset(trailers: false);
        Http2RequestHead.Sink sink = _head.AsSink();
        _decoder.Decode(_warmBlock, endHeaders: true, ref sink);
        _head.Complete(endStream: true);
        _output.ResetWrittenCount();
        _head.WriteTo(_output);
        return _output.WrittenCount;
    }
}
