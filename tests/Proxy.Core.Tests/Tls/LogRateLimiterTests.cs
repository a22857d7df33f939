using System.Security.Authentication;
using Proxy.Transport.Tls;

namespace Proxy.Core.Tests.Tls;

public sealed class LogRateLimiterTests
{
    [Fact]
    public void TryTake_FloodWithinOneSecond_AllowsLimitThenReportsSuppressedCount()
    {
        var limiter = new LogRateLimiter(3);
        int allowed = 0;
        for (int i = 0; i < 100; i++)
        {
            allowed += limiter.TryTake(5_000, out _) ? 1 : 0;
        }

        Assert.Equal(3, allowed);
        Assert.True(limiter.TryTake(6_000, out long suppressed));
        Assert.Equal(97, suppressed);
        Assert.True(limiter.TryTake(6_001, out suppressed));
        Assert.Equal(0, suppressed);
    }

    /// <summary>A window fixed to wall-clock seconds let 2x the rate through across a boundary (3 at 5.9 s, 3 more at 6.05 s).</summary>
    [Fact]
    public void TryTake_BurstAcrossSecondBoundary_AllowsLimitPerSlidingSecond()
    {
        var limiter = new LogRateLimiter(3);
        int allowed = 0;
        for (int i = 0; i < 10; i++)
        {
            allowed += limiter.TryTake(5_900, out _) ? 1 : 0;
        }
        for (int i = 0; i < 10; i++)
        {
            allowed += limiter.TryTake(6_050, out _) ? 1 : 0;
        }

        Assert.Equal(3, allowed);
        Assert.True(limiter.TryTake(6_900, out long suppressed));
        Assert.Equal(17, suppressed);
    }

    [Fact]
    public void Classify_Timeout_IsHandshakeTimeout()
    {
        Assert.Equal("handshake_timeout", TlsLog.Classify(new OperationCanceledException()).Reason);
        Assert.Equal("handshake_failed", TlsLog.Classify(new AuthenticationException("x", new IOException("inner"))).Reason);
        Assert.Equal("inner", TlsLog.Classify(new AuthenticationException("x", new IOException("inner"))).Detail);
    }
}
