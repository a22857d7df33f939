using Proxy.Hosting;
using Xunit;

namespace Proxy.Core.Tests.Hosting;

public class OpenFileLimitTests
{
    [Fact]
    public void RaiseFor_SoftBelowHard_RaisesSoftToHard()
    {
        Assert.True(OpenFileLimit.TryGet(out ulong soft, out ulong hard));
        // One below the hard limit: enough to see the raise, too little to starve the tests running beside this one.
        Assert.True(OpenFileLimit.TrySetSoft(hard - 1));
        try
        {
            Assert.True(OpenFileLimit.TryGet(out ulong lowered, out _));
            Assert.Equal(hard - 1, lowered);

            ulong now = OpenFileLimit.RaiseFor(maxConnections: 10);

            Assert.Equal(hard, now);
            Assert.True(OpenFileLimit.TryGet(out ulong after, out ulong hardAfter));
            Assert.Equal(hard, after);
            Assert.Equal(hard, hardAfter);
        }
        finally
        {
            OpenFileLimit.TrySetSoft(Math.Max(soft, hard));
        }
    }

    [Theory]
    [InlineData(1024UL, 10_000, true)] // a Debian service's soft limit against the default cap
    [InlineData(20_255UL, 10_000, true)] // one short of 2 x 10,000 + the reserve
    [InlineData(20_256UL, 10_000, false)]
    [InlineData(1_048_576UL, 10_000, false)]
    [InlineData(1024UL, 384, false)]
    public void Warning_LimitAgainstMaxConnections_WarnsOnlyWhenTooLow(ulong limit, int maxConnections, bool warns)
    {
        string? warning = OpenFileLimit.Warning(limit, maxConnections);

        Assert.Equal(warns, warning is not null);
        if (warns)
        {
            Assert.Contains($"({limit})", warning);
            Assert.Contains("server.max_connections", warning);
        }
    }
}
