namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// Samples this process's managed heap and working set while a transfer runs and keeps the peaks, so a proxy that
/// buffers a whole body is caught even if it frees the buffer before the transfer ends. The proxy runs in this
/// process, so its memory is what is measured (the test's own client and upstream stream with fixed buffers).
/// </summary>
internal sealed class MemoryWatch : IDisposable
{
    private readonly Timer _timer;
    private long _peakManaged;
    private long _peakWorkingSet;

    private MemoryWatch()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        BaselineManaged = GC.GetTotalMemory(false);
        BaselineWorkingSet = Environment.WorkingSet;
        _peakManaged = BaselineManaged;
        _peakWorkingSet = BaselineWorkingSet;
        _timer = new Timer(_ => Sample(), null, 0, 25);
    }

    public long BaselineManaged { get; }
    public long BaselineWorkingSet { get; }

    public long ManagedGrowth => Interlocked.Read(ref _peakManaged) - BaselineManaged;
    public long WorkingSetGrowth => Interlocked.Read(ref _peakWorkingSet) - BaselineWorkingSet;

    public static MemoryWatch Start() => new();

    public void Sample()
    {
        Max(ref _peakManaged, GC.GetTotalMemory(false));
        Max(ref _peakWorkingSet, Environment.WorkingSet);
    }

    public override string ToString() =>
        $"managed +{ManagedGrowth / (1024 * 1024)} MiB (baseline {BaselineManaged / (1024 * 1024)} MiB), working set +{WorkingSetGrowth / (1024 * 1024)} MiB (baseline {BaselineWorkingSet / (1024 * 1024)} MiB)";

    public void Dispose()
    {
        _timer.Dispose();
        Sample();
    }

    private static void Max(ref long location, long value)
    {
        var current = Interlocked.Read(ref location);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref location, value, current);
            if (seen == current)
            {
                return;
            }
            current = seen;
        }
    }
}
