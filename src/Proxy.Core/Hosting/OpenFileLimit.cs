using System.Runtime.InteropServices;
using Proxy.Diagnostics;

namespace Proxy.Hosting;

/// <summary>
/// The process's open-file limit (RLIMIT_NOFILE) against the connections it is configured to hold. Every client
/// connection is a descriptor, and a proxied one a second for its upstream; a .NET process left without a free
/// descriptor cannot start a thread, which the runtime reports as "Out of memory." as it ends the process. The JIT
/// runtime raises the soft limit to the hard one at start-up (so does Go's); a NativeAOT binary does not, and Debian
/// services start with a soft limit of 1,024: the <c>proxy</c> binary would die at about 500 proxied connections.
/// So the host raises the soft limit to the hard one, as those runtimes do (HAProxy raises it from its maxconn too),
/// and says so in a warning when even the hard limit is below what <c>server.max_connections</c> needs.
/// </summary>
internal static partial class OpenFileLimit
{
    /// <summary>Descriptors besides connections: listeners, the epoll instances, log and config files, the runtime's own.</summary>
    public const int Reserve = 256;

    private const int RLIMIT_NOFILE = 7; // Linux, x86-64 and arm64

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    /// <summary>Descriptors <paramref name="maxConnections"/> proxied connections need (client and upstream each), plus <see cref="Reserve"/>.</summary>
    public static ulong Needed(int maxConnections) => 2UL * (ulong)maxConnections + Reserve;

    /// <summary>The soft and hard limits, or false where there is no RLIMIT_NOFILE to read (not Linux, not glibc).</summary>
    public static bool TryGet(out ulong soft, out ulong hard)
    {
        soft = hard = 0;
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        try
        {
            if (GetRLimit(RLIMIT_NOFILE, out RLimit limit) != 0)
            {
                return false;
            }
            (soft, hard) = (limit.Current, limit.Maximum);
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    /// <summary>Sets the soft limit (lowering it needs no privilege; raising it up to the hard limit neither).</summary>
    internal static bool TrySetSoft(ulong soft)
    {
        if (!TryGet(out _, out ulong hard))
        {
            return false;
        }
        var limit = new RLimit { Current = Math.Min(soft, hard), Maximum = hard };
        return SetRLimit(RLIMIT_NOFILE, in limit) == 0;
    }

    /// <summary>
    /// Raises the soft limit to the hard one and logs what it did; warns when the result is below what
    /// <paramref name="maxConnections"/> needs. Returns the soft limit now in force (0 where unknown).
    /// </summary>
    public static ulong RaiseFor(int maxConnections)
    {
        if (!TryGet(out ulong soft, out ulong hard))
        {
            return 0;
        }
        if (soft < hard && TrySetSoft(hard) && TryGet(out ulong raised, out _))
        {
            ProxyLog.Info("open_file_limit_raised", ("from", (long)soft), ("to", (long)raised));
            soft = raised;
        }
        if (Warning(soft, maxConnections) is { } warning)
        {
            ProxyLog.Warn("open_file_limit_low", ("limit", (long)soft), ("max_connections", maxConnections),
                ("needed", (long)Needed(maxConnections)), ("detail", warning));
        }
        return soft;
    }

    /// <summary>The warning for a limit below what <paramref name="maxConnections"/> needs, or null.</summary>
    public static string? Warning(ulong limit, int maxConnections)
        => limit >= Needed(maxConnections)
            ? null
            : $"the open-file limit ({limit}) is below what server.max_connections {maxConnections} needs ({Needed(maxConnections)}: "
              + "two descriptors per proxied connection plus a reserve); raise it (ulimit -n, systemd LimitNOFILE=) or lower "
              + "server.max_connections: a process that runs out of descriptors is ended by the runtime";

    [LibraryImport("libc.so.6", EntryPoint = "getrlimit")]
    private static partial int GetRLimit(int resource, out RLimit limit);

    [LibraryImport("libc.so.6", EntryPoint = "setrlimit")]
    private static partial int SetRLimit(int resource, in RLimit limit);
}
