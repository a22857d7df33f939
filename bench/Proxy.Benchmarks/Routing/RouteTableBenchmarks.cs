using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Model;
using Proxy.Routing;

namespace Proxy.Benchmarks.Routing;

/// <summary>
/// Route match against 1,000 routes shaped like a real gateway: per-service literal prefixes
/// (/api/v1/service{n}/...), parameters, catch-alls, some routes bound to hosts or methods. The trie
/// beside the naive alternative: a linear scan in precedence order over the same compiled predicates.
/// </summary>
[MemoryDiagnoser]
public class RouteTableBenchmarks
{
    private RouteTable _table = null!;
    private LinearRouteMatcher _linear = null!;
    private RequestHead _deepHit = null!;
    private RequestHead _catchAllHit = null!;
    private RequestHead _miss = null!;

    [GlobalSetup]
    public void Setup()
    {
        var routes = new List<RouteModel>();
        for (int n = 0; n < 200; n++)
        {
            Add(routes, $"svc{n}-item", $"/api/v1/service{n}/items/{{id}}", methods: ["GET", "HEAD"]);
            Add(routes, $"svc{n}-items", $"/api/v1/service{n}/items");
            Add(routes, $"svc{n}-admin", $"/api/v1/service{n}/admin/{{**rest}}", hosts: ["admin.example.com"]);
            Add(routes, $"svc{n}-all", $"/api/v1/service{n}/{{**rest}}");
            Add(routes, $"app{n}-static", $"/static/app{n}/{{**rest}}", hosts: ["*.cdn.example.com"]);
        }
        _table = RouteTable.Build(routes);
        _linear = new LinearRouteMatcher(_table);

        _deepHit = Request("GET", "/api/v1/service187/items/42", "api.example.com");
        _catchAllHit = Request("POST", "/api/v1/service187/orders/9/lines", "api.example.com:8443");
        _miss = Request("GET", "/api/v2/unknown/thing", "api.example.com");

        Check(_deepHit, "svc187-item");
        Check(_catchAllHit, "svc187-all");
        Check(_miss, null);
    }

    [Benchmark]
    public object? Trie_DeepHit() => _table.Match(_deepHit, 0);

    [Benchmark(Baseline = true)]
    public object? Linear_DeepHit() => _linear.Match(_deepHit, 0);

    [Benchmark]
    public object? Trie_CatchAllHit() => _table.Match(_catchAllHit, 0);

    [Benchmark]
    public object? Linear_CatchAllHit() => _linear.Match(_catchAllHit, 0);

    [Benchmark]
    public object? Trie_Miss() => _table.Match(_miss, 0);

    [Benchmark]
    public object? Linear_Miss() => _linear.Match(_miss, 0);

    private void Check(RequestHead request, string? expected)
    {
        if (_table.Match(request, 0)?.Id != expected || _linear.Match(request, 0)?.Id != expected)
        {
            throw new InvalidOperationException($"benchmark setup: expected {expected ?? "no match"}");
        }
    }

    private static void Add(List<RouteModel> routes, string id, string path, string[]? hosts = null, string[]? methods = null)
        => routes.Add(new RouteModel
        {
            Id = id,
            Order = routes.Count,
            Match = new RouteMatchModel { Path = path, Hosts = hosts ?? [], Methods = methods ?? [] },
        });

    /// <summary>Lays out a request head by hand, with a few ordinary fields, as the HTTP/1.1 parser would.</summary>
    private static RequestHead Request(string method, string target, string host)
    {
        (string Name, string Value)[] fields =
        [
            ("Host", host),
            ("User-Agent", "bench/1.0"),
            ("Accept", "application/json"),
            ("Accept-Encoding", "gzip"),
        ];
        var text = new StringBuilder($"{method} {target} HTTP/1.1\r\n");
        foreach (var (name, value) in fields)
        {
            text.Append($"{name}: {value}\r\n");
        }
        text.Append("\r\n");
        byte[] bytes = Encoding.ASCII.GetBytes(text.ToString());

        var head = new RequestHead();
        bytes.CopyTo(head.PrepareBuffer(bytes.Length));
        head.MethodStart = 0;
        head.MethodLength = method.Length;
        head.TargetStart = method.Length + 1;
        head.TargetLength = target.Length;
        head.PathLength = target.IndexOf('?') is int q && q >= 0 ? q : target.Length;
        head.Version = HttpVersion.Http11;
        int offset = head.TargetStart + target.Length + " HTTP/1.1\r\n".Length;
        foreach (var (name, value) in fields)
        {
            ref HeaderField f = ref head.AddField();
            f.NameStart = offset;
            f.NameLength = name.Length;
            f.ValueStart = offset + name.Length + 2;
            f.ValueLength = value.Length;
            offset += name.Length + value.Length + 4;
        }
        head.HostIndex = 0;
        return head;
    }
}

/// <summary>The naive design: every route in precedence order, path template first, then the other predicates.</summary>
internal sealed class LinearRouteMatcher(RouteTable table)
{
    private readonly RouteEntry[] _entries = table.Entries.ToArray();

    public RouteModel? Match(RequestHead request, int listenerIndex)
    {
        var context = new MatchContext(request, listenerIndex);
        ReadOnlySpan<byte> path = request.Path;
        foreach (RouteEntry entry in _entries)
        {
            if (entry.Template.Matches(path) && entry.Accepts(in context))
            {
                return entry.Route;
            }
        }
        return null;
    }
}
