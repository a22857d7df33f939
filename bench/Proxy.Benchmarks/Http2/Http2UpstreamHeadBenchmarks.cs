using System.Buffers;
using System.Net;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Benchmarks.Http1;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Http2.Client;
using Proxy.Http2.HPack;
using Proxy.Model;
using Proxy.Upstream;

namespace Proxy.Benchmarks.Http2;

/// <summary>
/// The HTTP/2 upstream client's head work per request on a warm connection: the browser request's shared field lines
/// (<see cref="UpstreamRequestWriter.WriteFields"/>) re-encoded as an HPACK block (the dynamic table already holds
/// the repeated fields), and a typical response block decoded into a <see cref="ResponseHead"/>. Target: 0 B.
/// </summary>
[MemoryDiagnoser]
public class Http2UpstreamHeadBenchmarks
{
    private readonly RequestHead _head = new();
    private readonly IPAddress _client = IPAddress.Parse("203.0.113.7");
    private readonly DestinationState _destination = new("http://127.0.0.1:9000", "127.0.0.1", 9000, 1);
    private readonly ForwardedModel _append = new() { Mode = ForwardedMode.Append };
    private readonly FieldLineWriter _lines = new();
    private readonly HPackEncoder _encoder = new();
    private readonly byte[] _block = new byte[8192];
    private readonly ResponseHead _response = new();
    private HPackDecoder _decoder = null!;
    private byte[] _responseBlock = [];

    [GlobalSetup]
    public void Setup()
    {
        var bytes = new ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(Http1ParserBenchmarks.BrowserRequest));
        if (Http1RequestReader.TryRead(bytes, _head, HttpLimits.Default, out _, out _) != HeadStatus.Complete)
        {
            throw new InvalidOperationException("benchmark request does not parse");
        }
        // A response whose fields repeat from response to response: after the first, all indexed from the table.
        var encoder = new HPackEncoder();
        var block = new byte[1024];
        int length = 0;
        foreach (var (name, value) in new[]
        {
            (":status", "200"), ("content-type", "application/json; charset=utf-8"), ("server", "Kestrel"),
            ("cache-control", "no-store"), ("x-request-id", "7d0e5c3a-1c2b-4c47-9a6e-3f1e0c9d2b11"), ("content-length", "512"),
        })
        {
            encoder.TryEncode(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), HPackIndexing.Auto, block.AsSpan(length), out int n);
            length += n;
        }
        _responseBlock = block[..length];
        _decoder = new HPackDecoder();
        // Decoding the same block again on the warm table: literals with incremental indexing insert again (evicting
        // the oldest), which is what a peer that re-sends literals costs; still nothing is allocated.
        EncodeRequestHead();
        DecodeResponseHead();
    }

    [Benchmark]
    public int EncodeRequestHead()
    {
        _lines.Reset();
        UpstreamRequestWriter.WriteFields(_lines, _head, _append, _client, _destination);
        Http2RequestEncoder.TryEncode(_encoder, _head, "http"u8, _head.Host, _lines.Written, false, false, _block, out int written);
        return written;
    }

    [Benchmark]
    public int DecodeResponseHead()
    {
        _response.Reset();
        var sink = new ResponseFieldSink(_response, trailers: false);
        _decoder.Decode(_responseBlock, endHeaders: true, ref sink);
        return _response.FieldCount;
    }
}
