using Proxy.Configuration;
using Proxy.Model;

namespace Proxy.Core.Tests.Configuration;

/// <summary>The cluster resilience keys: every key typed and ranged, errors at FILE:LINE:COL, defaults and compiled values.</summary>
public class ResilienceConfigTests
{
    private static readonly string[] s_head =
    [
        "listeners:",
        "  - { name: public, address: \"127.0.0.1:8080\" }",
        "clusters:",
        "  backend:",
        "    destinations: [\"http://127.0.0.1:9000\", \"http://127.0.0.1:9001\"]",
    ];

    private static ConfigLoadResult Load(params string[] clusterLines)
        => ConfigLoader.LoadText(string.Join('\n', s_head.Concat(clusterLines)) + "\n", "t.yaml");

    private static string[] Errors(params string[] clusterLines) => Load(clusterLines).Errors.Select(e => e.ToString()).ToArray();

    private static ClusterModel Cluster(params string[] clusterLines)
    {
        var result = Load(clusterLines);
        Assert.Empty(result.Errors);
        return result.Snapshot!.Clusters["backend"];
    }

    [Fact]
    public void Load_ContractExample_CompilesEveryValue()
    {
        var cluster = Cluster(
            "    health_check: { path: /healthz, interval: 2s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 3 }",
            "    outlier_detection: { consecutive_failures: 5, base_ejection: 30s, max_ejection_percent: 50 }",
            "    retry: { attempts: 2, on: [connect_failure, reset, 502, 503, 504], backoff: { base: 25ms, max: 250ms }, budget_percent: 20 }",
            "    circuit_breaker: { max_connections: 1024, max_pending: 512, max_requests: 10000 }",
            "    panic_mode: true");

        Assert.Equal("/healthz", cluster.HealthCheck!.Path);
        Assert.Equal(TimeSpan.FromSeconds(2), cluster.HealthCheck.Interval);
        Assert.Equal(TimeSpan.FromSeconds(1), cluster.HealthCheck.Timeout);
        Assert.Equal(2, cluster.HealthCheck.HealthyThreshold);
        Assert.Equal(3, cluster.HealthCheck.UnhealthyThreshold);
        Assert.Equal(5, cluster.OutlierDetection!.ConsecutiveFailures);
        Assert.Equal(TimeSpan.FromSeconds(30), cluster.OutlierDetection.BaseEjection);
        Assert.Equal(50, cluster.OutlierDetection.MaxEjectionPercent);
        Assert.Equal(2, cluster.Retry!.Attempts);
        Assert.Equal(RetryOn.ConnectFailure | RetryOn.Reset | RetryOn.Status502 | RetryOn.Status503 | RetryOn.Status504, cluster.Retry.On);
        Assert.Equal(TimeSpan.FromMilliseconds(25), cluster.Retry.BackoffBase);
        Assert.Equal(TimeSpan.FromMilliseconds(250), cluster.Retry.BackoffMax);
        Assert.Equal(20, cluster.Retry.BudgetPercent);
        Assert.Equal(1024, cluster.CircuitBreaker!.MaxConnections);
        Assert.Equal(512, cluster.CircuitBreaker.MaxPending);
        Assert.Equal(10000, cluster.CircuitBreaker.MaxRequests);
        Assert.True(cluster.PanicMode);
        Assert.NotNull(cluster.Breaker);
        Assert.NotNull(cluster.RetryBudget);
        Assert.Same(cluster.OutlierDetection, cluster.Health.Outlier);
    }

    [Fact]
    public void Load_HealthCheckExpectedStatuses_CodesAndClassesPass()
    {
        var custom = Cluster("    health_check: { expected_statuses: [204, 3xx, 404] }").HealthCheck!;
        var defaults = Cluster("    health_check: {}").HealthCheck!;

        Assert.Equal([(204, 204), (300, 399), (404, 404)], custom.ExpectedStatuses);
        Assert.True(custom.Passes(204) && custom.Passes(301) && custom.Passes(404));
        Assert.False(custom.Passes(200) || custom.Passes(403) || custom.Passes(503));
        Assert.True(defaults.Passes(200) && defaults.Passes(299));
        Assert.False(defaults.Passes(300) || defaults.Passes(503));
    }

    [Fact]
    public void Load_NoResilienceKeys_EverythingOff()
    {
        var cluster = Cluster();

        Assert.Null(cluster.HealthCheck);
        Assert.Null(cluster.OutlierDetection);
        Assert.Null(cluster.Retry);
        Assert.Null(cluster.Breaker);
        Assert.Null(cluster.RetryBudget);
        Assert.False(cluster.PanicMode);
        Assert.Same(cluster.Destinations, cluster.Health.Candidates());
    }

    [Fact]
    public void Load_EmptyBlocks_TakeDefaults()
    {
        var cluster = Cluster(
            "    health_check: {}",
            "    outlier_detection: {}",
            "    retry: {}",
            "    circuit_breaker: {}");

        Assert.Equal("/healthz", cluster.HealthCheck!.Path);
        Assert.Equal(5, cluster.OutlierDetection!.ConsecutiveFailures);
        Assert.Equal(RetryOn.ConnectFailure | RetryOn.Reset, cluster.Retry!.On);
        Assert.Equal(10_000, cluster.CircuitBreaker!.MaxRequests);
    }

    [Theory]
    [InlineData("    health_check: { healthy_threshold: 0 }", "t.yaml:6:40: 'healthy_threshold' must be between 1 and 1000, got 0")]
    [InlineData("    health_check: { unhealthy_threshold: x }", "t.yaml:6:42: expected a whole number for 'unhealthy_threshold', got 'x'")]
    [InlineData("    health_check: { interval: 0s }", "t.yaml:6:31: 'interval' must be a positive duration, got '0s'")]
    [InlineData("    health_check: { timeout: 5 }", "t.yaml:6:30: expected a duration for 'timeout', got '5': add a unit (ms, s, m or h), e.g. 5s")]
    [InlineData("    health_check: { path: healthz }", "t.yaml:6:27: health_check 'path' must start with '/' and contain only visible ASCII characters (RFC 9112 section 3.2), got 'healthz'")]
    [InlineData("    health_check: { interval: 1s, timeout: 2s }", "t.yaml:6:44: health_check 'timeout' (2000ms) must not be longer than its 'interval' (1000ms)")]
    [InlineData("    health_check: { intervall: 1s }", "t.yaml:6:21: unknown key 'intervall' in 'health_check'; did you mean 'interval'?")]
    [InlineData("    outlier_detection: { max_ejection_percent: 101 }", "t.yaml:6:48: 'max_ejection_percent' must be between 0 and 100, got 101")]
    [InlineData("    outlier_detection: { consecutive_failures: 0 }", "t.yaml:6:48: 'consecutive_failures' must be between 1 and 1000, got 0")]
    [InlineData("    outlier_detection: { base_ejection: -1s }", "t.yaml:6:41: expected a duration for 'base_ejection' (a number with ms, s, m or h, e.g. 500ms, 2s, 1m), got '-1s'")]
    [InlineData("    retry: { attempts: 11 }", "t.yaml:6:24: 'attempts' must be between 0 and 10, got 11")]
    [InlineData("    retry: { budget_percent: -1 }", "t.yaml:6:30: 'budget_percent' must be between 0 and 100, got -1")]
    [InlineData("    retry: { on: [reset, 500] }", "t.yaml:6:26: unknown retry condition '500'; did you mean '502'? (expected one of: connect_failure, reset, 502, 503, 504, unavailable)")]
    [InlineData("    retry: { on: [conect_failure] }", "t.yaml:6:19: unknown retry condition 'conect_failure'; did you mean 'connect_failure'? (expected one of: connect_failure, reset, 502, 503, 504, unavailable)")]
    [InlineData("    retry: { backoff: { base: 1s, max: 100ms } }", "t.yaml:6:31: retry backoff 'base' (1000ms) must not be greater than 'max' (100ms)")]
    [InlineData("    retry: { backoff: { min: 1s } }", "t.yaml:6:25: unknown key 'min' in 'backoff'; did you mean 'max'?")]
    [InlineData("    circuit_breaker: { max_requests: 0 }", "t.yaml:6:38: 'max_requests' must be at least 1, got 0")]
    [InlineData("    circuit_breaker: { max_pending: -1 }", "t.yaml:6:37: 'max_pending' must be at least 1, got -1")]
    [InlineData("    circuit_breaker: { max_pending: 0 }", "t.yaml:6:37: 'max_pending' must be at least 1, got 0")]
    [InlineData("    health_check: { expected_statuses: [200, 700] }", "t.yaml:6:46: expected_statuses entries are status codes (100..599) or classes (2xx), got '700'")]
    [InlineData("    health_check: { expected_statuses: [] }", "t.yaml:6:21: expected_statuses must list at least one status (leave it out for 2xx)")]
    [InlineData("    panic_mode: maybe", "t.yaml:6:17: expected true or false for 'panic_mode', got 'maybe'")]
    [InlineData("    retry: 3", "t.yaml:6:12: expected a map for 'retry', got '3'")]
    public void Load_InvalidResilienceKey_ReportsPosition(string line, string expected)
    {
        Assert.Equal([expected], Errors(line));
    }
}
