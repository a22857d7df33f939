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
    public void Load_BadValue_PreciseError(string extra, string expected)
    {
        var result = Load(extra);
        Assert.False(result.Success);
        Assert.True(result.Errors.Any(e => e.ToString().Contains(expected, StringComparison.Ordinal)), string.Join("\n", result.Errors));
    }
}
