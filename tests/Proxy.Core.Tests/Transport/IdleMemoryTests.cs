using Proxy.Transport;

namespace Proxy.Core.Tests.Transport;

public sealed class IdleMemoryTests
{
    private const long MiB = 1 << 20;
    private const long Threshold = 32 * MiB;
    private const long LongAgo = IdleMemory.MinimumIntervalMilliseconds;

    [Theory]
    [InlineData(0, 600, 100, LongAgo, true)]      // a burst is over and left 100 MiB behind
    [InlineData(150, 600, 100, LongAgo, true)]    // fallen to a quarter of the peak
    [InlineData(151, 600, 100, LongAgo, false)]   // not quite
    [InlineData(64, 64, 100, LongAgo, false)]     // a steady load: never under it
    [InlineData(0, 0, 100, LongAgo, true)]        // nothing open all period, memory grew
    [InlineData(0, 600, 31, LongAgo, false)]      // too little to be worth a pause
    [InlineData(0, 600, 100, LongAgo - 1, false)] // released too recently
    public void ShouldRelease_DecidesOnLoadGrowthAndInterval(int open, int peak, long growthMiB, long sinceLast, bool expected)
    {
        Assert.Equal(expected, IdleMemory.ShouldRelease(open, peak, growthMiB * MiB, Threshold, sinceLast));
    }

    [Fact]
    public void ResidentBytes_ReadsThisProcessesResidentSet()
    {
        long resident = IdleMemory.ResidentBytes();
        long status = long.Parse(File.ReadAllLines("/proc/self/status").Single(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;

        Assert.InRange(resident, status / 2, status * 2);
        Assert.True(resident > 10 * MiB, $"resident {resident}");
    }
}
