using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http2.HPack;

namespace Proxy.Benchmarks.Http2;

/// <summary>
/// HPACK on the browser request of <c>Http1ParserBenchmarks</c> (13 fields, ~560 octets decoded): a first
/// block (literals, Huffman, table insertions) and a repeat on a warm table (one indexed octet per field).
/// </summary>
[MemoryDiagnoser]
public class HPackBenchmarks
{
    internal static readonly (string Name, string Value)[] BrowserRequest =
    [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "shop.example.com"),
        (":path", "/catalog/products/12345/reviews?page=2&sort=newest&lang=en"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("referer", "https://shop.example.com/catalog/products/12345"),
        ("cookie", "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; consent=yes"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
    ];

    private byte[][] _names = [];
    private byte[][] _values = [];
    private byte[] _firstBlock = [];
    private byte[] _warmBlock = [];
    private readonly byte[] _output = new byte[4096];
    private HPackDecoder _coldDecoder = null!;
    private HPackDecoder _warmDecoder = null!;
    private HPackEncoder _coldEncoder = null!;
    private HPackEncoder _warmEncoder = null!;

    private struct Sink : IHeaderSink
    {
        public int Octets;

        public void OnStaticIndexedHeader(int index) => Octets++;

        public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed) => Octets += value.Length;

        public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed) => Octets += name.Length + value.Length;
    }

    [GlobalSetup]
    public void Setup()
    {
        _names = Array.ConvertAll(BrowserRequest, f => Encoding.ASCII.GetBytes(f.Name));
        _values = Array.ConvertAll(BrowserRequest, f => Encoding.ASCII.GetBytes(f.Value));

        HPackEncoder encoder = new();
        int first = EncodeAll(encoder, _output);
        // Prefix: size updates to 0 then 4096 empty the decoder's table, so every iteration is a first block.
        _firstBlock = [0x20, 0x3F, 0xE1, 0x1F, .. _output.AsSpan(0, first)];
        int warm = EncodeAll(encoder, _output);
        _warmBlock = _output.AsSpan(0, warm).ToArray();

        _coldDecoder = new HPackDecoder();
        _warmDecoder = new HPackDecoder();
        Sink sink = default;
        _warmDecoder.Decode(_firstBlock, endHeaders: true, ref sink);
        _coldEncoder = new HPackEncoder();
        _warmEncoder = new HPackEncoder();
        EncodeAll(_warmEncoder, _output);
        Console.WriteLine($"// first block {first} octets, warm block {warm} octets");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _coldDecoder.Dispose();
        _warmDecoder.Dispose();
    }

    [Benchmark]
    public int DecodeFirstBlock()
    {
        Sink sink = default;
        _coldDecoder.Decode(_firstBlock, endHeaders: true, ref sink);
        return sink.Octets;
    }

    [Benchmark]
    public int DecodeWarmTable()
    {
        Sink sink = default;
        _warmDecoder.Decode(_warmBlock, endHeaders: true, ref sink);
        return sink.Octets;
    }

    /// <summary>First block split in two fragments (HEADERS + CONTINUATION): literals go through the buffers.</summary>
    [Benchmark]
    public int DecodeFirstBlockTwoFragments()
    {
        Sink sink = default;
        int half = _firstBlock.Length / 2;
        _coldDecoder.Decode(_firstBlock.AsSpan(0, half), endHeaders: false, ref sink);
        _coldDecoder.Decode(_firstBlock.AsSpan(half), endHeaders: true, ref sink);
        return sink.Octets;
    }

    [Benchmark]
    public int EncodeFirstBlock()
    {
        // Shrink to 0 and back: the table is empty again, as on a new connection (plus two size-update octets).
        _coldEncoder.SetPeerHeaderTableSize(0);
        _coldEncoder.SetPeerHeaderTableSize(4096);
        return EncodeAll(_coldEncoder, _output);
    }

    [Benchmark]
    public int EncodeWarmTable() => EncodeAll(_warmEncoder, _output);

    private int EncodeAll(HPackEncoder encoder, byte[] output)
    {
        encoder.TryBeginHeaderBlock(output, out int length);
        for (int i = 0; i < _names.Length; i++)
        {
            encoder.TryEncode(_names[i], _values[i], HPackIndexing.Auto, output.AsSpan(length), out int written);
            length += written;
        }
        return length;
    }
}
