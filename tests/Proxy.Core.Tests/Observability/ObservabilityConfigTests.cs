using Proxy.Configuration;
using Proxy.Diagnostics;

namespace Proxy.Core.Tests.Observability;

public sealed class ObservabilityConfigTests
{
    private const string Base = """
        listeners:
          - { name: public, address: "127.0.0.1:0" }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200 } }

        """;

    private static ConfigLoadResult Load(string extra) => ConfigLoader.LoadText(Base + extra, "t.yaml");

    [Fact]
    public void Load_NoBlocks_TracingAndAccessLogOffInsightsOn()
    {
        var result = Load("");
        Assert.True(result.Success);
        var model = result.Snapshot!.Observability;
        Assert.Null(model.Tracing);
        Assert.Null(model.AccessLog);
        Assert.True(model.Insights.Enabled);
    }

    [Fact]
    public void Load_AllBlocks_Compiled()
    {
        var result = Load("""
            tracing: { sampling: 0.1, otlp: { endpoint: "http://127.0.0.1:4318/", protocol: http/protobuf } }
            access_log: { path: /tmp/proxy-access.log, fields: [time, route, status, request_id], buffer: 1024 }
            insights: { interval: 5s, baseline_intervals: 12, spike_factor: 2.5, min_requests: 7 }
            """);
        Assert.True(result.Success, string.Join("\n", result.Errors));
        var model = result.Snapshot!.Observability;
        Assert.Equal(0.1, model.Tracing!.Sampling);
        Assert.Equal("http://127.0.0.1:4318", model.Tracing.OtlpEndpoint);
        Assert.Equal(OtlpProtocol.HttpProtobuf, model.Tracing.OtlpProtocol);
        Assert.Equal("/tmp/proxy-access.log", model.AccessLog!.Path);
        Assert.Equal([AccessLogField.Time, AccessLogField.Route, AccessLogField.Status, AccessLogField.RequestId], model.AccessLog.Fields);
        Assert.Equal(1024, model.AccessLog.Buffer);
        Assert.Equal(TimeSpan.FromSeconds(5), model.Insights.Interval);
        Assert.Equal(12, model.Insights.BaselineIntervals);
        Assert.Equal(2.5, model.Insights.SpikeFactor);
        Assert.Equal(7, model.Insights.MinRequests);
    }

    [Fact]
    public void Load_MetricsOtlp_CompiledWithDefaults()
    {
        var full = Load("metrics: { otlp: { endpoint: \"http://127.0.0.1:4318/\", protocol: grpc, interval: 5s } }");
        var minimal = Load("metrics: { otlp: { endpoint: \"https://collector.example:4318\" } }");
        var none = Load("metrics: { }");

        Assert.True(full.Success, string.Join("\n", full.Errors));
        var metrics = full.Snapshot!.Observability.Metrics!;
        Assert.Equal("http://127.0.0.1:4318", metrics.OtlpEndpoint);
        Assert.Equal(OtlpProtocol.Grpc, metrics.OtlpProtocol);
        Assert.Equal(TimeSpan.FromSeconds(5), metrics.OtlpInterval);
        Assert.True(minimal.Success, string.Join("\n", minimal.Errors));
        Assert.Equal(OtlpProtocol.HttpProtobuf, minimal.Snapshot!.Observability.Metrics!.OtlpProtocol);
        Assert.Equal(MetricsModel.DefaultInterval, minimal.Snapshot.Observability.Metrics.OtlpInterval);
        Assert.True(none.Success, string.Join("\n", none.Errors));
        Assert.Null(none.Snapshot!.Observability.Metrics);
        Assert.Null(Load("").Snapshot!.Observability.Metrics);
    }

    [Fact]
    public void Load_EmptyAccessLogBlockAndPercentSampling_Defaults()
    {
        var result = Load("""
            tracing: { sampling: 25% }
            access_log: { }
            """);
        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.Equal(0.25, result.Snapshot!.Observability.Tracing!.Sampling);
        Assert.Equal("stdout", result.Snapshot.Observability.AccessLog!.Path);
        Assert.Equal(AccessLogFields.All, result.Snapshot.Observability.AccessLog.Fields);
        Assert.Equal(8192, result.Snapshot.Observability.AccessLog.Buffer);
    }

    [Theory]
    [InlineData("tracing: { sampling: 1.5 }", "t.yaml:5:22: 'sampling' must be a number between 0 and 1")]
    [InlineData("tracing: { otlp: { endpoint: localhost:4318 } }", "otlp endpoint must be an http:// or https:// URL")]
    [InlineData("tracing: { otlp: { endpoint: \"http://x:4318\", protocol: thrift } }", "unknown protocol 'thrift'")]
    [InlineData("access_log: { fields: [time, statuss] }", "unknown access_log field 'statuss'; did you mean 'status'?")]
    [InlineData("access_log: { fields: [time, time] }", "access_log field 'time' is listed twice")]
    [InlineData("access_log: { buffer: 2 }", "'buffer' must be between 16 and")]
    [InlineData("access_log: { path: \"\" }", "'path' must not be empty")]
    [InlineData("insights: { spike_factor: 1 }", "'spike_factor' must be a number above 1")]
    [InlineData("insights: { intervall: 1s }", "did you mean 'interval'?")]
    [InlineData("metrics: { otlp: { endpoint: localhost:4318 } }", "otlp endpoint must be an http:// or https:// URL")]
    [InlineData("metrics: { otlp: { endpoint: \"http://x:4318\", interval: 10ms } }", "'interval' must be between 100ms and 1h")]
    [InlineData("metrics: { otlp: { endpoint: \"http://x:4318\", protocol: thrift } }", "unknown protocol 'thrift'")]
    [InlineData("metrics: { otlp: { interval: 1s } }", "'endpoint'")]
    [InlineData("metrics: { prometheus: true }", "prometheus")]
    public void Load_BadValue_PreciseError(string extra, string expected)
    {
        var result = Load(extra);
        Assert.False(result.Success);
        Assert.True(result.Errors.Any(e => e.ToString().Contains(expected, StringComparison.Ordinal)), string.Join("\n", result.Errors));
    }
}
