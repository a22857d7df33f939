using System.Net;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Benchmarks.Pipeline;

/// <summary>
/// The rate-limit decision of an authenticated request with plans and a quota: the identity set (as a JWT or API-key
/// filter would), the plan picked by name, the quota counted, GCRA checked, and the RateLimit fields formatted for
/// the response. Beside it, the plain header-keyed decision without plans or quota, and the same with the response
/// fields written (both from the memory store).
/// </summary>
[MemoryDiagnoser]
public class RateLimitPlanBenchmarks
{
    private RateLimitFilter _plans = null!;
    private RateLimitFilter _plain = null!;
    private RequestContext _context = null!;
    private RequestHead _head = null!;
    private readonly IPAddress _client = IPAddress.Parse("10.20.30.40");

    [GlobalSetup]
    public void Setup()
    {
        // Budgets large enough that every call is allowed: the common case.
        _plans = new RateLimitFilter(new RateLimitOptions
        {
            PolicyName = "per-plan",
            KeyKind = RateLimitKeyKind.Consumer,
            Plans =
            [
                new RateLimitPlan { Name = "free", Rate = 10, Burst = 20, Quota = 10_000, QuotaPeriod = QuotaPeriod.Day },
                new RateLimitPlan { Name = "pro", Rate = 1_000_000_000, Burst = 1_000_000_000, Quota = int.MaxValue, QuotaPeriod = QuotaPeriod.Month },
            ],
            DefaultPlan = "free",
        });
        _plain = new RateLimitFilter(new RateLimitOptions
        {
            PolicyName = "per-client",
            KeyKind = RateLimitKeyKind.Header,
            HeaderName = "x-api-key",
            Rate = 1_000_000_000,
            Burst = 1_000_000_000,
        });
        _head = new RequestHead();
        var raw = Encoding.ASCII.GetBytes(
            "GET /orders/42?expand=items HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: application/json\r\n" +
            "Authorization: Bearer abc.def.ghi\r\nX-API-Key: 7f3c9a0e-5b1d-4c2e-9f8a-1234567890ab\r\nAccept-Encoding: gzip\r\n\r\n");
        Http1RequestReader.TryRead(new System.Buffers.ReadOnlySequence<byte>(raw), _head, HttpLimits.Default, out _, out _);
        _context = new RequestContext();
    }

    /// <summary>Consumer key, plan "pro" (rate and monthly quota), RateLimit fields on the allowed response.</summary>
    [Benchmark]
    public FilterStatus PlanAndQuotaDecision()
    {
        RequestContext context = _context;
        context.Begin(_head, _client, "orders", "public");
        context.Identity.SetConsumer("acme-corp"u8);
        context.Identity.SetPlan("pro"u8);
        return _plans.OnRequestHeaders(context);
    }

    /// <summary>Header key, one rate, no plan or quota (the memory store's simplest decision), fields included.</summary>
    [Benchmark(Baseline = true)]
    public FilterStatus PlainDecision()
    {
        RequestContext context = _context;
        context.Begin(_head, _client, "orders", "public");
        return _plain.OnRequestHeaders(context);
    }
}
