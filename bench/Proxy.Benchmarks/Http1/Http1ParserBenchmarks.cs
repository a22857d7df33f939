using System.Buffers;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Http1;

namespace Proxy.Benchmarks.Http1;

/// <summary>HTTP/1.1 head parsing: a typical browser request (~500 bytes, 12 fields) and an upstream response.</summary>
[MemoryDiagnoser]
public class Http1ParserBenchmarks
{
    internal const string BrowserRequest =
        "GET /catalog/products/12345/reviews?page=2&sort=newest&lang=en HTTP/1.1\r\n" +
        "Host: shop.example.com\r\n" +
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Firefox/121.0\r\n" +
        "Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n" +
        "Accept-Language: en-US,en;q=0.5\r\n" +
        "Accept-Encoding: gzip, deflate, br\r\n" +
        "Referer: https://shop.example.com/\r\n" +
        "Connection: keep-alive\r\n" +
        "Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n" +
        "Upgrade-Insecure-Requests: 1\r\n" +
        "Sec-Fetch-Dest: document\r\n" +
        "Sec-Fetch-Mode: navigate\r\n" +
        "Sec-Fetch-Site: same-origin\r\n" +
        "\r\n";

    private const string UpstreamResponse =
        "HTTP/1.1 200 OK\r\n" +
        "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n" +
        "Server: upstream\r\n" +
        "Content-Type: application/json; charset=utf-8\r\n" +
        "Content-Length: 1234\r\n" +
        "Cache-Control: no-cache\r\n" +
        "Connection: keep-alive\r\n" +
        "\r\n";

    private readonly RequestHead _requestHead = new();
    private readonly ResponseHead _responseHead = new();
    private readonly HttpLimits _limits = HttpLimits.Default;
    private ReadOnlySequence<byte> _request;
    private ReadOnlySequence<byte> _requestSplit;
    private ReadOnlySequence<byte> _requestPercentEncoded;
    private ReadOnlySequence<byte> _response;
    private byte[] _requestBytes = [];

    [GlobalSetup]
    public void Setup()
    {
        _requestBytes = Encoding.ASCII.GetBytes(BrowserRequest);
        _request = new ReadOnlySequence<byte>(_requestBytes);
        _requestSplit = BenchSegments.Split(_requestBytes, _requestBytes.Length / 2);
        // The same head with escapes in the path: three unreserved ones decoded in place, one (%2F) kept.
        _requestPercentEncoded = new ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(
            BrowserRequest.Replace("/catalog/products/12345/", "/c%61talog/products/%31%32345/a%2Fb/", StringComparison.Ordinal)));
        _response = new ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(UpstreamResponse));
    }

    [Benchmark(Baseline = true)]
    public int ParseRequest()
        => (int)Http1RequestReader.TryRead(_request, _requestHead, _limits, out _, out _);

    /// <summary>Head split across two segments: the line-scanning slow path.</summary>
    [Benchmark]
    public int ParseRequestTwoSegments()
        => (int)Http1RequestReader.TryRead(_requestSplit, _requestHead, _limits, out _, out _);

    /// <summary>A path with percent-escapes: the in-place decoding of unreserved characters (RFC 3986 section 6.2.2.2).</summary>
    [Benchmark]
    public int ParseRequestPercentEncodedPath()
        => (int)Http1RequestReader.TryRead(_requestPercentEncoded, _requestHead, _limits, out _, out _);

    [Benchmark]
    public int ParseResponse()
        => (int)Http1ResponseReader.TryRead(_response, _responseHead, 64 * 1024, out _, out _);

    /// <summary>The naive alternative: decode to a string, split lines, build a dictionary.</summary>
    [Benchmark]
    public int NaiveStringParse()
    {
        string text = Encoding.ASCII.GetString(_requestBytes);
        string[] lines = text.Split("\r\n");
        Dictionary<string, string> fields = new(StringComparer.OrdinalIgnoreCase);
        for (int i = 1; i < lines.Length && lines[i].Length > 0; i++)
        {
            int colon = lines[i].IndexOf(':');
            fields[lines[i][..colon]] = lines[i][(colon + 1)..].Trim();
        }
        return fields.Count + lines[0].Split(' ').Length;
    }
}

/// <summary>Chunked body decoding: 16 KiB payload in 4 chunks, whole and arriving in 4 KiB segments.</summary>
[MemoryDiagnoser]
public class ChunkedDecoderBenchmarks
{
    private ReadOnlySequence<byte> _body;
    private ReadOnlySequence<byte> _bodySegmented;

    [GlobalSetup]
    public void Setup()
    {
        ArrayBufferWriter<byte> writer = new();
        byte[] chunk = new byte[4096];
        Random.Shared.NextBytes(chunk);
        for (int i = 0; i < 4; i++)
        {
            writer.Advance(ChunkedWriter.WriteChunkHeader(writer.GetSpan(ChunkedWriter.MaxChunkHeaderLength), chunk.Length));
            writer.Write(chunk);
            writer.Write(ChunkedWriter.Crlf);
        }
        writer.Write(ChunkedWriter.LastChunk);
        byte[] body = writer.WrittenSpan.ToArray();
        _body = new ReadOnlySequence<byte>(body);
        _bodySegmented = BenchSegments.Split(body, 4096, 8192, 12288, 16384);
    }

    [Benchmark(Baseline = true)]
    public long Decode16KiBIn4Chunks() => Decode(_body);

    [Benchmark]
    public long Decode16KiBIn4ChunksSegmented() => Decode(_bodySegmented);

    private static long Decode(ReadOnlySequence<byte> buffer)
    {
        ChunkedDecoder decoder = default;
        long total = 0;
        while (decoder.Read(buffer, out ReadOnlySequence<byte> data, out SequencePosition consumed, out _) == ChunkStatus.Data)
        {
            total += data.Length;
            buffer = buffer.Slice(consumed);
        }
        return total;
    }
}

internal static class BenchSegments
{
    public static ReadOnlySequence<byte> Split(byte[] data, params int[] cuts)
    {
        Segment first = new(data.AsMemory(0, cuts[0]), 0);
        Segment last = first;
        for (int i = 0; i < cuts.Length; i++)
        {
            int end = i + 1 < cuts.Length ? cuts[i + 1] : data.Length;
            last = last.Append(data.AsMemory(cuts[i], end - cuts[i]));
        }
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            Segment next = new(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
