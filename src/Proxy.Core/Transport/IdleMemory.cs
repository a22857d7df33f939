using System.Runtime;
using System.Runtime.InteropServices;
using Proxy.Diagnostics;

namespace Proxy.Transport;

/// <summary>
/// Gives memory back after a burst, on the heartbeat. A burst of connections leaves three kinds of memory behind
/// once it is over: blocks in the pools' free lists, regions the collector keeps committed after it has freed them
/// (it returns them to the system only during collections, and an idle proxy collects nothing), and what OpenSSL
/// freed into glibc's per-thread arenas. Measured with 600 connections of mixed load (HTTP/1.1 and HTTP/2, half of
/// them TLS) killed at once: 125-145 MiB resident afterwards, nginx 26 MiB (docs/performance.md).
/// <list type="bullet">
/// <item>Always: each pool lets go of the blocks it did not need for a whole period (<see cref="BlockMemoryPool.TrimIdle"/>).</item>
/// <item>When <c>PROXY_RELEASE_IDLE_MEMORY=1</c> (the <c>proxy</c> binary sets it unless the environment says
/// otherwise; an embedding process owns its collector and opts in): once the open connections have fallen to a
/// quarter of the period's peak and the resident set has grown by <see cref="GrowthBytes"/> since the last release,
/// one aggressive full collection (which decommits every free region) and glibc's <c>malloc_trim</c>. Never under
/// a steady load (the connections have not fallen), at most once per <see cref="MinimumIntervalMilliseconds"/>, one log line each.</item>
/// </list>
/// </summary>
internal static class IdleMemory
{
    public const long PeriodMilliseconds = 10_000;
    public const long MinimumIntervalMilliseconds = 30_000;
    /// <summary>
    /// Growth of the resident set since the last release that makes one worth a pause: 32 MiB, or
    /// <c>PROXY_RELEASE_IDLE_MEMORY_MIB</c> (read once).
    /// </summary>
    public static long GrowthBytes { get; } =
        long.TryParse(Environment.GetEnvironmentVariable("PROXY_RELEASE_IDLE_MEMORY_MIB"), out long mib) && mib > 0 ? mib << 20 : 32L << 20;

    private static readonly Lock s_lock = new();
    private static long s_periodStart;
    private static long s_lastRelease = long.MinValue / 2;
    private static int s_peakConnections;
    /// <summary>
    /// The resident set growth is measured from: at the first heartbeat, then after each release, and lowered to any
    /// smaller figure a period ends with.
    /// </summary>
    private static long s_baseline = -1;

    /// <summary>Whether this process releases memory to the system when idle (read once).</summary>
    public static bool ReleaseEnabled { get; } = Environment.GetEnvironmentVariable("PROXY_RELEASE_IDLE_MEMORY") == "1";

    /// <summary>Heartbeat entry (about once a second): <paramref name="openConnections"/> is the server's open connection count.</summary>
    public static void OnTick(long now, int openConnections)
    {
        BlockMemoryPool.Small.TrimIdle(now, PeriodMilliseconds);
        BlockMemoryPool.Large.TrimIdle(now, PeriodMilliseconds);
        BlockMemoryPool.UpstreamRead.TrimIdle(now, PeriodMilliseconds);
        if (!ReleaseEnabled)
        {
            return;
        }
        lock (s_lock)
        {
            if (s_baseline < 0)
            {
                s_baseline = ResidentBytes(); // the first heartbeat, a second after the start
                s_periodStart = now;
            }
            s_peakConnections = Math.Max(s_peakConnections, openConnections);
            if (now - s_periodStart < PeriodMilliseconds)
            {
                return;
            }
            int peak = s_peakConnections;
            s_periodStart = now;
            s_peakConnections = openConnections;
            long resident = ResidentBytes();
            if (!ShouldRelease(openConnections, peak, resident - s_baseline, GrowthBytes, now - s_lastRelease))
            {
                s_baseline = Math.Min(s_baseline, resident);
                return;
            }
            s_lastRelease = now;
            long started = Environment.TickCount64;
            Release();
            long after = ResidentBytes();
            s_baseline = after;
            ProxyLog.Info("memory_released",
                ("resident_before_mib", resident >> 20), ("resident_after_mib", after >> 20),
                ("open_connections", openConnections), ("pause_ms", Environment.TickCount64 - started));
        }
    }

    /// <summary>
    /// The decision, apart from the clock and the process: the load has fallen (open connections at most a quarter
    /// of the period's peak), the resident set has grown by <paramref name="thresholdBytes"/> or more, and the last
    /// release was <see cref="MinimumIntervalMilliseconds"/> ago or longer.
    /// </summary>
    internal static bool ShouldRelease(int openConnections, int peakConnections, long growthBytes, long thresholdBytes, long sinceLastRelease)
        => (long)openConnections * 4 <= peakConnections && growthBytes >= thresholdBytes && sinceLastRelease >= MinimumIntervalMilliseconds;

    private static void Release()
    {
        // Aggressive: compacts, and decommits the regions it freed instead of keeping them for the next allocations.
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        MallocTrim();
    }

    /// <summary>
    /// The resident set from /proc/self/statm (its second field, in pages). Environment.WorkingSet reaches
    /// System.Diagnostics.Process through reflection on Linux, which a NativeAOT binary does not keep: it says 0 there.
    /// </summary>
    internal static long ResidentBytes()
    {
        try
        {
            string[] fields = File.ReadAllText("/proc/self/statm").Split(' ');
            return long.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture) * Environment.SystemPageSize;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return Environment.WorkingSet;
        }
    }

    /// <summary>glibc's malloc_trim(0): returns the free memory of every malloc arena (OpenSSL's, mostly) to the system.</summary>
    private static unsafe void MallocTrim()
    {
        if (s_mallocTrim is null)
        {
            return;
        }
        ((delegate* unmanaged<nuint, int>)s_mallocTrim.Value)(0);
    }

    /// <summary>Looked up, not linked: musl and other C libraries have no malloc_trim.</summary>
    private static readonly nint? s_mallocTrim = LookUpMallocTrim();

    private static nint? LookUpMallocTrim()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }
        try
        {
            if (NativeLibrary.TryLoad("libc.so.6", out nint libc) && NativeLibrary.TryGetExport(libc, "malloc_trim", out nint address))
            {
                return address;
            }
        }
        catch (Exception)
        {
        }
        return null;
    }
}
