using System.Runtime.CompilerServices;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// Starts the test host's thread pool with 32 worker threads ready instead of one per core.
/// <para>Many tests block a pool thread on purpose: the allocation tests drive raw sockets synchronously (an async
/// client would allocate), parallel clients are joined (<see cref="ParallelThreads"/>), command-line tests wait for
/// processes. The pool starts with one thread per core (two here) and adds about one more every half second while work
/// waits, so in a full parallel run those blocks starved the proxies running in the same process, which then missed
/// their own deadlines (a 1 s response timeout firing on a request that was never late). A probe queuing one work item
/// every 50 ms through a whole run of this suite saw 13 waits over 500 ms (the longest 950 ms) with the runtime's
/// default, and none over 250 ms (the longest 222 ms) with 32 threads ready.</para>
/// <para>Test hosts only: the proxy's own code never blocks a pool thread, and the proxy binary keeps the runtime's
/// defaults.</para>
/// </summary>
internal static class TestHostThreadPool
{
    private const int MinWorkerThreads = 32;

    [ModuleInitializer]
    internal static void Configure()
    {
        ThreadPool.GetMinThreads(out int workers, out int completionPorts);
        if (workers < MinWorkerThreads)
        {
            ThreadPool.SetMinThreads(MinWorkerThreads, completionPorts);
        }
    }
}
