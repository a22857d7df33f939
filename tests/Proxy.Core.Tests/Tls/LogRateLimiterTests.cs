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

    [Fact]
    public void Classify_Timeout_IsHandshakeTimeout()
    {
        Assert.Equal("handshake_timeout", TlsLog.Classify(new OperationCanceledException()).Reason);
        Assert.Equal("handshake_failed", TlsLog.Classify(new AuthenticationException("x", new IOException("inner"))).Reason);
        Assert.Equal("inner", TlsLog.Classify(new AuthenticationException("x", new IOException("inner"))).Detail);
    }
}
