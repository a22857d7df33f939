using Proxy.Model;
using Proxy.Upstream;
using Proxy.Upstream.LoadBalancing;

namespace Proxy.Core.Tests.Upstream;

/// <summary>
/// The resilience state machines with time passed in explicitly (milliseconds on the cluster's clock), so ejection
/// expiry and multipliers are tested without sleeping.
/// </summary>
public class ResilienceStateTests
{
    private static DestinationState[] Destinations(int count)
    {
        var result = new DestinationState[count];
        for (int i = 0; i < count; i++)
        {
            result[i] = new DestinationState($"http://10.0.0.{i}:80", $"10.0.0.{i}", 80, 1);
        }
        return result;
    }

    private static ClusterHealth Health(DestinationState[] destinations, int failures = 3, int baseMs = 1000, int percent = 50, bool panic = false)
        => new("c", destinations, new OutlierDetectionModel
        {
            ConsecutiveFailures = failures,
            BaseEjection = TimeSpan.FromMilliseconds(baseMs),
            MaxEjectionPercent = percent,
        }, panic);

    [Fact]
    public void Candidates_AllAvailable_ReturnsTheClusterArrayItself()
    {
        var d = Destinations(3);
        var health = Health(d);

        // Same reference: the balancers' weight-table cache stays valid and nothing is rebuilt.
        Assert.Same(d, health.Candidates(0));
    }

    [Fact]
    public void ReportFailure_ConsecutiveFailuresReachThreshold_EjectsUntilBaseEjection()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 3, baseMs: 1000);

        Assert.False(health.ReportFailure(d[0], 100));
        Assert.False(health.ReportFailure(d[0], 100));
        Assert.True(health.ReportFailure(d[0], 100));

        Assert.Equal([d[1]], health.Candidates(100));
        Assert.Equal([d[1]], health.Candidates(1099));
        Assert.Equal(d, health.Candidates(1100));
        Assert.Equal(0, d[0].EjectedUntil);
    }

    [Fact]
    public void ReportSuccess_BetweenFailures_ResetsTheStreak()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 3);

        health.ReportFailure(d[0], 0);
        health.ReportFailure(d[0], 0);
        health.ReportSuccess(d[0]);
        health.ReportFailure(d[0], 0);
        health.ReportFailure(d[0], 0);

        Assert.Same(d, health.Candidates(0));
        Assert.Equal(2, d[0].ConsecutiveFailures);
    }

    [Fact]
    public void ReportFailure_EjectedAgainSoon_EjectionGrowsByOneBase()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 1, baseMs: 1000);

        Assert.True(health.ReportFailure(d[0], 0));
        Assert.Equal(1000, d[0].EjectedUntil);
        Assert.Equal(d, health.Candidates(1000));
        Assert.True(health.ReportFailure(d[0], 1000));
        Assert.Equal(3000, d[0].EjectedUntil);
        Assert.Equal(2, d[0].Ejections);
    }

    /// <summary>Below 100%, one destination stays in, also when the others are out by health check rather than
    /// ejected: ejecting the last healthy one left the cluster answering 503 for the whole ejection.</summary>
    [Fact]
    public void ReportFailure_OtherDestinationDownByHealthCheck_LastOneNotEjected()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 1, baseMs: 1000, percent: 50);
        d[0].CheckHealthy = false;

        Assert.False(health.ReportFailure(d[1], 0));
        Assert.Equal(0, d[1].EjectedUntil);

        d[0].CheckHealthy = true;
        Assert.True(health.ReportFailure(d[1], 1));
    }

    [Fact]
    public void ReportFailure_OtherDestinationDown_Percent100_StillEjects()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 1, baseMs: 1000, percent: 100);
        d[0].CheckHealthy = false;

        Assert.True(health.ReportFailure(d[1], 0));
    }

    [Fact]
    public void ReportFailure_ManyEjections_MultiplierIsCapped()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 1, baseMs: 10);
        long now = 0;
        for (int i = 0; i < 20; i++)
        {
            Assert.True(health.ReportFailure(d[0], now));
            now = d[0].EjectedUntil;
            health.Candidates(now);
        }
        Assert.Equal(ClusterHealth.MaxEjectionMultiplier, d[0].Ejections);
        Assert.True(health.ReportFailure(d[0], now));
        Assert.Equal(now + 10 * ClusterHealth.MaxEjectionMultiplier, d[0].EjectedUntil);
    }

    [Fact]
    public void ReportFailure_QuietForLongerThanTheLongestEjection_MultiplierStartsOver()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 1, baseMs: 10);
        health.ReportFailure(d[0], 0);
        health.Candidates(10);
        health.ReportFailure(d[0], 10);
        Assert.Equal(2, d[0].Ejections);

        long later = d[0].EjectedUntil + 10 * ClusterHealth.MaxEjectionMultiplier + 1;
        health.Candidates(later);
        health.ReportFailure(d[0], later);

        Assert.Equal(1, d[0].Ejections);
        Assert.Equal(later + 10, d[0].EjectedUntil);
    }

    [Theory]
    [InlineData(2, 50, 1)]
    [InlineData(1, 50, 0)]
    [InlineData(4, 50, 2)]
    [InlineData(3, 100, 3)]
    [InlineData(3, 99, 2)]
    [InlineData(10, 10, 1)]
    [InlineData(5, 0, 0)]
    public void MaxEjected_PercentOfDestinations_RoundsDownAndKeepsOneUnless100(int destinations, int percent, int expected)
    {
        Assert.Equal(expected, ClusterHealth.MaxEjected(destinations, percent));
    }

    [Fact]
    public void ReportFailure_MaxEjectionPercentReached_DoesNotEjectMore()
    {
        var d = Destinations(2);
        var health = Health(d, failures: 1, percent: 50);

        Assert.True(health.ReportFailure(d[0], 0));
        Assert.False(health.ReportFailure(d[1], 0));

        Assert.Equal([d[1]], health.Candidates(0));
    }

    [Fact]
    public void SetCheckHealthy_AllDown_FailsClosedWithEmptyCandidates()
    {
        var d = Destinations(2);
        var health = Health(d);

        health.SetCheckHealthy(d[0], false);
        Assert.Equal([d[1]], health.Candidates(0));
        health.SetCheckHealthy(d[1], false);

        Assert.Empty(health.Candidates(0));
        Assert.Null(new RoundRobinPolicy().Pick(health.Candidates(0)));
        Assert.True(health.AllDown(0));
    }

    [Fact]
    public void SetCheckHealthy_AllDownInPanicMode_SpreadsOverAll()
    {
        var d = Destinations(2);
        var health = Health(d, panic: true);

        health.SetCheckHealthy(d[0], false);
        health.SetCheckHealthy(d[1], false);

        Assert.Same(d, health.Candidates(0));
    }

    [Fact]
    public void SetCheckHealthy_BackUp_RestoresTheClusterArray()
    {
        var d = Destinations(3);
        var health = Health(d);

        Assert.True(health.SetCheckHealthy(d[1], false));
        Assert.False(health.SetCheckHealthy(d[1], false));
        Assert.Equal([d[0], d[2]], health.Candidates(0));
        Assert.True(health.SetCheckHealthy(d[1], true));

        Assert.Same(d, health.Candidates(0));
    }

    [Fact]
    public void Another_SamePickWithOthersAvailable_ReturnsTheNextOne()
    {
        var d = Destinations(3);

        Assert.Same(d[2], ClusterHealth.Another(d, d[1], d[1]));
        Assert.Same(d[0], ClusterHealth.Another(d, d[2], d[2]));
        Assert.Same(d[0], ClusterHealth.Another(d, d[0], d[1]));
        Assert.Same(d[0], ClusterHealth.Another([d[0]], d[0], d[0]));
    }

    [Fact]
    public void Observe_ThresholdsCrossed_FlipsVerdictOnlyOnce()
    {
        var d = Destinations(1)[0];
        var model = new HealthCheckModel { HealthyThreshold = 2, UnhealthyThreshold = 3 };

        Assert.Null(ActiveHealthChecker.Observe(d, false, model));
        Assert.Null(ActiveHealthChecker.Observe(d, false, model));
        Assert.False(ActiveHealthChecker.Observe(d, false, model));
        d.CheckHealthy = false;
        Assert.Null(ActiveHealthChecker.Observe(d, false, model));
        Assert.Null(ActiveHealthChecker.Observe(d, true, model));
        Assert.True(ActiveHealthChecker.Observe(d, true, model));
    }

    [Fact]
    public void Observe_PassInterruptsFailureStreak_StaysHealthy()
    {
        var d = Destinations(1)[0];
        var model = new HealthCheckModel { HealthyThreshold = 1, UnhealthyThreshold = 2 };

        Assert.Null(ActiveHealthChecker.Observe(d, false, model));
        Assert.Null(ActiveHealthChecker.Observe(d, true, model));
        Assert.Null(ActiveHealthChecker.Observe(d, false, model));
        Assert.True(d.CheckHealthy);
    }

    [Theory]
    [InlineData("HTTP/1.1 200 OK\r\n\r\n", 200)]
    [InlineData("HTTP/1.0 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", 503)]
    [InlineData("HTTP/1.1 204\r\n\r\n", 204)]
    [InlineData("HTTP/1.1 2x0 OK\r\n\r\n", -1)]
    [InlineData("SSH-2.0-OpenSSH\r\n", -1)]
    [InlineData("HTTP/1.1", -1)]
    public void ParseStatus_StatusLine_ReadsTheCode(string head, int expected)
    {
        Assert.Equal(expected, ActiveHealthChecker.ParseStatus(System.Text.Encoding.ASCII.GetBytes(head)));
    }

    /// <summary>
    /// RFC 9112 section 4: status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ], ended by CRLF, and the head by an
    /// empty line. The probe used to read the first three digits of whatever followed "HTTP/1.x ".
    /// </summary>
    [Theory]
    [InlineData("HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n")]
    [InlineData("HTTP/1.1 200OK\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK")]
    [InlineData("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nno colon\r\n\r\n")]
    [InlineData("HTTP/1.1 103 Early Hints\r\n\r\n")]
    public void ParseStatus_NotAWholeHttpHead_Invalid(string reply)
    {
        Assert.Equal(-1, ActiveHealthChecker.ParseStatus(System.Text.Encoding.ASCII.GetBytes(reply)));
    }

    /// <summary>
    /// Interim 1xx heads before the final one are skipped (RFC 9110 section 15.2), as the HTTP/2 probe skips them; every
    /// prefix of the reply (the peer closed there) is invalid, the whole one gives the final status.
    /// </summary>
    [Theory]
    [InlineData("HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 200)]
    [InlineData("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n", 503)]
    public void ParseStatus_InterimHeadsBeforeTheFinal_SkippedAtEveryPrefix(string reply, int expected)
    {
        byte[] bytes = System.Text.Encoding.ASCII.GetBytes(reply);
        for (int length = 0; length < bytes.Length; length++)
        {
            Assert.True(ActiveHealthChecker.ParseStatus(bytes.AsSpan(0, length)) == -1, $"Prefix of {length} bytes");
        }
        Assert.Equal(expected, ActiveHealthChecker.ParseStatus(bytes));
    }

    [Fact]
    public void Breaker_PastMaxRequests_RefusesAndCountsTheOverflow()
    {
        var breaker = new ClusterBreaker(new CircuitBreakerModel { MaxRequests = 2, MaxPending = 1, MaxConnections = 1 });

        Assert.True(breaker.TryEnterRequest());
        Assert.True(breaker.TryEnterRequest());
        Assert.False(breaker.TryEnterRequest());
        Assert.Equal(2, breaker.Requests);
        breaker.ExitRequest();
        Assert.True(breaker.TryEnterRequest());

        Assert.True(breaker.TryEnterPending());
        Assert.False(breaker.TryEnterPending());
        Assert.True(breaker.TryOpenConnection(destinationHasNone: false));
        Assert.False(breaker.TryOpenConnection(destinationHasNone: false));
        breaker.ConnectionClosed();
        Assert.True(breaker.TryOpenConnection(destinationHasNone: false));
        Assert.Equal(3, breaker.Overflows);
        // A destination without any connection may always open one, past the limit (Envoy's exception).
        Assert.True(breaker.TryOpenConnection(destinationHasNone: true));
        Assert.Equal(2, breaker.Connections);
        Assert.Equal(3, breaker.Overflows);
    }

    [Theory]
    [InlineData(0, 20, 1)]
    [InlineData(4, 20, 1)]
    [InlineData(10, 20, 2)]
    [InlineData(100, 20, 20)]
    [InlineData(100, 0, 1)]
    public void Allowed_RequestsInFlight_PercentWithMinimumOne(int requests, int percent, int expected)
    {
        Assert.Equal(expected, RetryBudget.Allowed(requests, percent));
    }

    [Fact]
    public void TryStartRetry_BudgetSpent_RefusesUntilARetryEnds()
    {
        var budget = new RetryBudget(new RetryModel { BudgetPercent = 20 });
        for (int i = 0; i < 10; i++)
        {
            budget.RequestStarted();
        }

        Assert.True(budget.TryStartRetry());
        Assert.True(budget.TryStartRetry());
        Assert.False(budget.TryStartRetry());
        budget.RetryEnded();
        Assert.True(budget.TryStartRetry());
        Assert.Equal(1, budget.Denied);
        Assert.Equal(3, budget.Retried);
    }

    [Theory]
    [InlineData(1, 1.0, 25)]
    [InlineData(2, 1.0, 50)]
    [InlineData(3, 1.0, 100)]
    [InlineData(5, 1.0, 250)]
    [InlineData(10, 1.0, 250)]
    [InlineData(3, 0.5, 50)]
    [InlineData(3, 0.0, 0)]
    public void Backoff_NthRetry_ExponentialCappedAndJittered(int retry, double random, double expectedMs)
    {
        var backoff = RetryBudget.Backoff(retry, TimeSpan.FromMilliseconds(25), TimeSpan.FromMilliseconds(250), random);

        Assert.Equal(expectedMs, backoff.TotalMilliseconds, 3);
    }

    [Fact]
    public void RetriesStatus_OnlyConfiguredCodes()
    {
        var model = new RetryModel { On = RetryOn.Status503 | RetryOn.ConnectFailure };

        Assert.True(model.RetriesStatus(503));
        Assert.False(model.RetriesStatus(502));
        Assert.False(model.RetriesStatus(500));
    }
}
