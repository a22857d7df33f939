using System.Collections.Concurrent;
using System.Net;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Benchmarks.Pipeline;

/// <summary>
/// The two built-in policies' per-request decision: a GCRA rate-limit check through the filter (header key looked up
/// in a parsed head, hashed, one table set locked and updated) and a CIDR match. Beside each, the naive design it
/// replaces: a string-keyed <see cref="ConcurrentDictionary{TKey,TValue}"/> of buckets, and <see cref="IPNetwork.Contains"/>.
/// </summary>
[MemoryDiagnoser]
public class PolicyBenchmarks
{
    private RateLimitFilter _rateLimit = null!;
    private RequestContext _context = null!;
    private RequestHead _head = null!;
    private IPAddress _client = null!;
    private IpFilter _ipFilter = null!;
    private IPNetwork[] _networks = null!;
    private IPAddress _v4 = null!;
    private IPAddress _v6 = null!;
    private readonly ConcurrentDictionary<string, long> _naiveBuckets = new();
    private byte[] _keyBytes = null!;

    [GlobalSetup]
    public void Setup()
    {
        // A budget large enough that every benchmark call is allowed: the common case.
        _rateLimit = new RateLimitFilter(new RateLimitOptions
        {
            PolicyName = "per-client",
            KeyKind = RateLimitKeyKind.Header,
            HeaderName = "x-api-key",
            Rate = 1_000_000_000,
            WindowSeconds = 1,
            Burst = 1_000_000_000,
        });
        var head = new RequestHead();
        var raw = Encoding.ASCII.GetBytes(
            "GET /orders/42?expand=items HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: application/json\r\n" +
            "Authorization: Bearer abc.def.ghi\r\nX-API-Key: 7f3c9a0e-5b1d-4c2e-9f8a-1234567890ab\r\nAccept-Encoding: gzip\r\n\r\n");
        Http1RequestReader.TryRead(new System.Buffers.ReadOnlySequence<byte>(raw), head, HttpLimits.Default, out _, out _);
        _context = new RequestContext();
        _head = head;
        _client = IPAddress.Parse("10.20.30.40");
        _context.Begin(head, _client, "orders", "public");
        _keyBytes = Encoding.ASCII.GetBytes("7f3c9a0e-5b1d-4c2e-9f8a-1234567890ab");

        string[] cidrs = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "2001:db8::/32", "fd00::/8", "::1/128"];
        _networks = cidrs.Select(IPNetwork.Parse).ToArray();
        _ipFilter = new IpFilter("office-only", _networks, [IPNetwork.Parse("10.1.2.3/32")]);
        _v4 = IPAddress.Parse("192.168.7.9");
        _v6 = IPAddress.Parse("fd00::1234");
    }

    /// <summary>Rebinds the context per call, as the connection does per request (allowed requests add RateLimit fields to it).</summary>
    [Benchmark]
    public FilterStatus RateLimitDecision()
    {
        _context.Begin(_head, _client, "orders", "public");
        return _rateLimit.OnRequestHeaders(_context);
    }

    /// <summary>Naive: the key as a string (one allocation per request) in a concurrent dictionary.</summary>
    [Benchmark]
    public long RateLimitNaiveDictionary()
    {
        _context.TryGetHeader("x-api-key"u8, out var value);
        string key = Encoding.ASCII.GetString(value);
        return _naiveBuckets.AddOrUpdate(key, 1, static (_, n) => n + 1);
    }

    [Benchmark]
    public bool CidrMatchV4() => _ipFilter.IsAllowed(_v4);

    [Benchmark]
    public bool CidrMatchV6() => _ipFilter.IsAllowed(_v6);

    /// <summary>Naive: <see cref="IPNetwork.Contains"/> over the allow list.</summary>
    [Benchmark]
    public bool CidrMatchNaiveIPNetwork()
    {
        foreach (var n in _networks)
        {
            if (n.Contains(_v4))
            {
                return true;
            }
        }
        return false;
    }
}
