using System.Diagnostics;
using System.Diagnostics.Metrics;
using BenchmarkDotNet.Attributes;
using Proxy.Configuration;
using Proxy.Diagnostics;
using Proxy.Model;
using Proxy.Transport;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Benchmarks.Diagnostics;

/// <summary>
/// The per-request metrics update (<see cref="ProxyMetrics.RequestEnded"/>): counters pre-bound to the route at
/// compile time, updated with interlocked adds. Beside it, the same update with an OpenTelemetry-style
/// <see cref="MeterListener"/> subscribed to the duration histogram, and the naive alternative: a
/// <see cref="Counter{T}"/> and a <see cref="Histogram{T}"/> fed a four-tag <see cref="TagList"/> per request.
/// </summary>
[MemoryDiagnoser]
public class RequestMetricsBenchmarks
{
    private const string Yaml = """
        listeners:
          - { name: public, address: "127.0.0.1:0" }
        routes:
          - { id: api, match: { path: "/api/{**rest}" }, cluster: backend }
        clusters:
          backend: { destinations: ["http://127.0.0.1:9000"] }
        """;

    private ProxyRuntime _plain = null!;
    private ProxyRuntime _listened = null!;
    private ListenerModel _plainListener = null!;
    private RouteModel _plainRoute = null!;
    private ListenerModel _listenedListener = null!;
    private RouteModel _listenedRoute = null!;
    private MeterListener _meterListener = null!;
    private Meter _naiveMeter = null!;
    private Counter<long> _naiveRequests = null!;
    private Histogram<double> _naiveDuration = null!;
    private long _start;
    private long _observed;

    [GlobalSetup]
    public void Setup()
    {
        _plain = new ProxyRuntime(Compile());
        _listened = new ProxyRuntime(Compile());
        (_plainListener, _plainRoute) = (_plain.Current.Listeners[0], _plain.Current.Routes.InMatchOrder[0]);
        (_listenedListener, _listenedRoute) = (_listened.Current.Listeners[0], _listened.Current.Routes.InMatchOrder[0]);

        _naiveMeter = new Meter("Bench.Naive");
        _naiveRequests = _naiveMeter.CreateCounter<long>("requests");
        _naiveDuration = _naiveMeter.CreateHistogram<double>("duration", "s");

        // Stands in for an OpenTelemetry SDK: subscribed, receives every measurement, keeps a running count.
        _meterListener = new MeterListener
        {
            InstrumentPublished = (instrument, listener) =>
            {
                if (ReferenceEquals(instrument.Meter, _listened.Metrics.HttpMeter) || ReferenceEquals(instrument.Meter, _naiveMeter))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            },
        };
        _meterListener.SetMeasurementEventCallback<double>((_, _, _, _) => _observed++);
        _meterListener.SetMeasurementEventCallback<long>((_, _, _, _) => _observed++);
        _meterListener.Start();
        _start = Stopwatch.GetTimestamp();
    }

    private static ProxySnapshot Compile() => ConfigLoader.LoadText(Yaml, "bench.yaml").Snapshot!;

    [GlobalCleanup]
    public void Cleanup()
    {
        _meterListener.Dispose();
        _naiveMeter.Dispose();
        _plain.Dispose();
        _listened.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void PreBoundCounters() => _plain.Metrics.RequestEnded(_plainListener, _plainRoute, HttpMethod.Get, 200, _start);

    /// <summary>The clock read inside every update, to tell its share of the cost from the counters'.</summary>
    [Benchmark]
    public long ClockOnly() => Stopwatch.GetTimestamp() - _start;

    [Benchmark]
    public void PreBoundCounters_HistogramListened() => _listened.Metrics.RequestEnded(_listenedListener, _listenedRoute, HttpMethod.Get, 200, _start);

    [Benchmark]
    public void TagListInstruments_Listened()
    {
        double seconds = (Stopwatch.GetTimestamp() - _start) / (double)Stopwatch.Frequency;
        var tags = new TagList
        {
            { "route", _listenedRoute.Id },
            { "cluster", _listenedRoute.Cluster!.Name },
            { "method", "GET" },
            { "status_class", "2xx" },
        };
        _naiveRequests.Add(1, tags);
        _naiveDuration.Record(seconds, tags);
    }
}
