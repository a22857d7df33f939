using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Benchmarks.Http1;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Routing;
using Proxy.Upstream;

namespace Proxy.Benchmarks.Forwarding;

/// <summary>
/// Writing the upstream request head for a typical browser request: hop-by-hop fields dropped, X-Forwarded-*
/// added, framing written, into a pipe's pooled memory. Target: 0 B allocated. The rewrite case is the same request
/// on a route with <c>rewrite: { path: "/v2/{id}/{rest}" }</c> over <c>/catalog/products/{id}/{**rest}</c>: captures
/// found in the path and written straight into the head, against the baseline that writes the client's target.
/// </summary>
[MemoryDiagnoser]
public class UpstreamRequestWriterBenchmarks
{
    private readonly RequestHead _head = new();
    private readonly Pipe _pipe = new(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
    private readonly IPAddress _client = IPAddress.Parse("203.0.113.7");
    private readonly DestinationState _destination = new("http://127.0.0.1:9000", "127.0.0.1", 9000, 1);
    private readonly ForwardedModel _append = new() { Mode = ForwardedMode.Append };
    private readonly PathRewrite _rewrite = PathRewrite.Compile("/v2/{id}/{rest}", "/catalog/products/{id}/{**rest}");

    [GlobalSetup]
    public void Setup()
    {
        var bytes = new ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(Http1ParserBenchmarks.BrowserRequest));
        if (Http1RequestReader.TryRead(bytes, _head, HttpLimits.Default, out _, out _) != HeadStatus.Complete)
        {
            throw new InvalidOperationException("benchmark request does not parse");
        }
    }

    [Benchmark(Baseline = true)]
    public long WriteUpstreamRequest()
    {
        UpstreamRequestWriter.WriteHead(_pipe.Writer, _head, _append, _client, _destination);
        return Drain();
    }

    [Benchmark]
    public long WriteUpstreamRequestWithRewrite()
    {
        UpstreamRequestWriter.WriteHead(_pipe.Writer, _head, _append, _client, _destination, rewrite: _rewrite);
        return Drain();
    }

    private long Drain()
    {
        _pipe.Writer.FlushAsync().GetAwaiter().GetResult();
        _pipe.Reader.TryRead(out ReadResult result);
        long length = result.Buffer.Length;
        _pipe.Reader.AdvanceTo(result.Buffer.End);
        return length;
    }
}
