using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http2.HPack;

namespace Proxy.Benchmarks.Http2;

/// <summary>
/// The encoder's dynamic-table lookup (<see cref="HPackDynamicTable.FindExact"/>) on a table the way a busy server
/// connection's ends up: full (4,096 octets, 60 entries) of response fields, with the per-second <c>date</c> values
/// the oldest. One lookup of each of six response fields, five hits and a miss, as one response head does: the hash
/// index against the linear scan it replaced (the baseline).
/// </summary>
[MemoryDiagnoser]
public class HPackTableLookupBenchmarks
{
    private static readonly (string Name, string Value)[] s_response =
    [
        ("server", "nginx/1.26.3"),
        ("date", "Sat, 28 Nov 2026 13:30:00 GMT"),
        ("content-type", "text/plain"),
        ("last-modified", "Sat, 28 Nov 2026 08:00:00 GMT"),
        ("etag", "\"6747f7c0-64\""),
        ("x-request-id", "c0ffee00-1234-4bcd-9876-0123456789ab"),
    ];

    private readonly HPackDynamicTable _linear = new(4096);
    private readonly HPackDynamicTable _indexed = new(4096, indexed: true);
    private byte[][] _names = [];
    private byte[][] _values = [];

    [GlobalSetup]
    public void Setup()
    {
        _names = Array.ConvertAll(s_response, f => Encoding.ASCII.GetBytes(f.Name));
        _values = Array.ConvertAll(s_response, f => Encoding.ASCII.GetBytes(f.Value));
        // Older dates first, then the constant fields (newest): the table fills up the way a minute of traffic fills it.
        for (int second = 0; _linear.Size + 80 < _linear.MaxSize; second++)
        {
            byte[] date = Encoding.ASCII.GetBytes($"Sat, 28 Nov 2026 13:29:{second:00} GMT");
            _linear.Insert("date"u8, date);
            _indexed.Insert("date"u8, date);
        }
        for (int i = 0; i < _names.Length - 1; i++)
        {
            _linear.Insert(_names[i], _values[i]);
            _indexed.Insert(_names[i], _values[i]);
        }
    }

    [Benchmark(Baseline = true)]
    public int LinearScan() => LookUpAll(_linear);

    [Benchmark]
    public int HashIndex() => LookUpAll(_indexed);

    private int LookUpAll(HPackDynamicTable table)
    {
        int sum = 0;
        for (int i = 0; i < _names.Length; i++)
        {
            sum += table.FindExact(_names[i], _values[i]);
        }
        return sum;
    }
}
