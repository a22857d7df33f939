using System.Net;
using System.Security.Cryptography;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Benchmarks.Pipeline;

/// <summary>
/// The identity policies' per-request cost: an API key found among 10,000 (SHA-256 of the presented key into the
/// stack, an open-addressing probe, a constant-time compare), beside the naive design it replaces (a dictionary of
/// clear-text keys, which needs a string per request).
/// </summary>
[MemoryDiagnoser]
public class IdentityBenchmarks
{
    private ApiKeyFilter _apiKey = null!;
    private RequestContext _context = null!;
    private Dictionary<string, string> _naive = null!;
    private byte[] _keyBytes = null!;
    private DenyFilter _deny = null!;

    [GlobalSetup]
    public void Setup()
    {
        var keys = new List<ApiKeyEntry>();
        _naive = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < 10_000; i++)
        {
            string key = $"7f3c9a0e-5b1d-4c2e-9f8a-{i:D12}";
            keys.Add(new ApiKeyEntry(SHA256.HashData(Encoding.ASCII.GetBytes(key)), $"consumer-{i}", "free"));
            _naive[key] = $"consumer-{i}";
        }
        _apiKey = new ApiKeyFilter(new ApiKeyOptions { PolicyName = "keys", Header = "x-api-key", Keys = keys });
        var head = new RequestHead();
        var raw = Encoding.ASCII.GetBytes(
            "GET /orders/42?expand=items HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: application/json\r\n" +
            "X-API-Key: 7f3c9a0e-5b1d-4c2e-9f8a-000000004242\r\nAccept-Encoding: gzip\r\n\r\n");
        Http1RequestReader.TryRead(new System.Buffers.ReadOnlySequence<byte>(raw), head, HttpLimits.Default, out _, out _);
        _context = new RequestContext();
        _context.Begin(head, IPAddress.Parse("10.20.30.40"), "orders", "public");
        _keyBytes = Encoding.ASCII.GetBytes("7f3c9a0e-5b1d-4c2e-9f8a-000000004242");
        _deny = new DenyFilter(new DenyOptions
        {
            PolicyName = "waf",
            PathTraversal = true,
            SqlInjection = true,
            Xss = true,
            Methods = ["GET", "POST"],
            Patterns = ["wp-login", "/.git/"],
        });
    }

    /// <summary>Every WAF rule over the path, the query and the five header values of a clean request.</summary>
    [Benchmark]
    public FilterStatus DenyRulesCleanRequest() => _deny.OnRequestHeaders(_context);

    [Benchmark]
    public FilterStatus ApiKeyLookup() => _apiKey.OnRequestHeaders(_context);

    [Benchmark(Baseline = true)]
    public bool NaiveClearTextDictionary() => _naive.ContainsKey(Encoding.ASCII.GetString(_keyBytes));
}
