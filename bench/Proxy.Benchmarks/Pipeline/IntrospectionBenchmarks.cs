using System.Net;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Benchmarks.Pipeline;

/// <summary>
/// The <c>introspection</c> policy's steady state: a token whose answer is cached, through the filter (Authorization
/// looked up in a parsed head, b64token check, SHA-256 into the stack, two slot reads, identity copied). Beside it the
/// parser that runs once per miss, on a typical RFC 7662 answer. The network call itself is not measured.
/// </summary>
[MemoryDiagnoser]
public class IntrospectionBenchmarks
{
    private IntrospectionFilter _filter = null!;
    private RequestContext _context = null!;
    private byte[] _answer = null!;
    private readonly byte[][] _scopes = [Encoding.UTF8.GetBytes("orders.read")];

    [GlobalSetup]
    public void Setup()
    {
        _filter = new IntrospectionFilter(new IntrospectionOptions
        {
            PolicyName = "opaque",
            Url = new Uri("http://127.0.0.1:1/introspect"),
            ClientId = "gw",
            ClientSecret = "s3cret",
            RequiredScopes = ["orders.read"],
            CacheTtl = TimeSpan.FromHours(1),
        });
        // A typical opaque token: 43 base64url characters (32 random bytes).
        const string token = "2YotnFZFEjr1zCsicMWpAA-kLHw3Dx8sU8tFa1XyQ0E";
        long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        _answer = Encoding.UTF8.GetBytes($$"""
            {"active":true,"client_id":"orders-web","username":"jdoe","scope":"openid profile orders.read orders.write","sub":"Z5O3upPC88QrAjx00dis","aud":"https://orders.example.test","iss":"https://idp.example.test","exp":{{now / 1000 + 3600}},"iat":{{now / 1000}}}
            """);
        if (!IntrospectionResponseParser.TryParse(_answer, _scopes, out var result))
        {
            throw new InvalidOperationException("benchmark answer does not parse");
        }
        _filter.Cache.Add(_filter.ToEntry(TokenDigest.Of(Encoding.ASCII.GetBytes(token)), result, now), now);

        byte[] raw = Encoding.ASCII.GetBytes($"GET /orders/42 HTTP/1.1\r\nHost: api.example.test\r\nAuthorization: Bearer {token}\r\nAccept: */*\r\n\r\n");
        var head = new RequestHead();
        Http1RequestReader.TryRead(new System.Buffers.ReadOnlySequence<byte>(raw), head, HttpLimits.Default, out _, out _);
        _context = new RequestContext();
        _context.Begin(head, IPAddress.Loopback, "orders", "public");
        if (_filter.OnRequestHeaders(_context) != FilterStatus.Continue)
        {
            throw new InvalidOperationException("benchmark token is not cached");
        }
    }

    /// <summary>The steady state: a cached active token, through the filter.</summary>
    [Benchmark(Baseline = true)]
    public FilterStatus CachedToken() => _filter.OnRequestHeaders(_context);

    /// <summary>The per-miss parse of the endpoint's answer (allocates the identity it keeps).</summary>
    [Benchmark]
    public bool ParseAnswer() => IntrospectionResponseParser.TryParse(_answer, _scopes, out _);
}
