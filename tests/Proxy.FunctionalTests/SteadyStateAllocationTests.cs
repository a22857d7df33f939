using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.Benchmarks.EndToEnd;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Hosting;
using Proxy.Transport;

namespace Proxy.FunctionalTests;

/// <summary>
/// The data plane allocates nothing per request once warm. The client and the upstream here are blocking sockets
/// with pre-encoded messages (they allocate nothing per request), so the process-wide allocation delta over many
/// requests is the proxy's. Runs alone, so no other test's allocations are counted.
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class SteadyStateAllocationTests
{
    /// <summary>The fixed upstream's answer in the steady-state allocation tests of every area: a 100-byte body.</summary>
    internal static byte[] FixedResponse { get; } = Encoding.ASCII.GetBytes(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + new string('x', 99) + "\n");

    [Fact]
    public async Task ProxiedRequests_WarmKeepAliveConnection_AllocateUnder100BytesEach()
    {
        using var upstream = new FixedResponseUpstream(FixedResponse);

        var config = new ProxyConfig { BackendPort = upstream.Port };
        await using var proxy = await TestProxy.StartAsync(config);

        // Warm up (JIT tiers, pools, the upstream connection), then measure.
        long perRequest = MeasureWarmConnection(proxy.Public, warmUp: 3000, requests: 5000);

        // Debug builds compile async state machines as classes (one allocation per call): measure in Release,
        // as the README's test command does.
        Assert.True(perRequest < 100, $"{perRequest} bytes allocated per proxied request in steady state" +
            (IsOptimized() ? "" : " (Proxy.Core is a Debug build: run the tests with -c Release)"));
    }

    /// <summary>
    /// Sixteen connections at once, each driven by its own blocking client thread: reads then often find their data
    /// already waiting and complete synchronously, and the upstream pool serves several connections: paths a single
    /// sequential connection never takes.
    /// </summary>
    [Fact]
    public async Task ProxiedRequests_SixteenBusyConnections_AllocateUnder100BytesEach()
    {
        using var upstream = new FixedResponseUpstream(FixedResponse);
        var config = new ProxyConfig { BackendPort = upstream.Port };
        await using var proxy = await TestProxy.StartAsync(config);
        byte[] request = Encoding.ASCII.GetBytes(
            "GET /api/items?page=2 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n");

        const int Connections = 16, Warmup = 1500, Requests = 3000;
        using var warm = new Barrier(Connections + 1);
        using var measured = new Barrier(Connections + 1);
        var clients = new Thread[Connections];
        Exception? failure = null;
        for (int c = 0; c < Connections; c++)
        {
            clients[c] = new Thread(() =>
            {
                try
                {
                    using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                    client.ReceiveTimeout = 10_000;
                    client.Connect(proxy.Public);
                    byte[] receive = new byte[16 * 1024];
                    int length = RoundTrip(client, request, receive, expected: 0);
                    for (int i = 0; i < Warmup; i++)
                    {
                        RoundTrip(client, request, receive, length);
                    }
                    warm.SignalAndWait();
                    for (int i = 0; i < Requests; i++)
                    {
                        RoundTrip(client, request, receive, length);
                    }
                    measured.SignalAndWait();
                }
                catch (Exception e)
                {
                    failure = e;
                    warm.RemoveParticipant();
                    measured.RemoveParticipant();
                }
            }) { IsBackground = true };
            clients[c].Start();
        }
        warm.SignalAndWait();
        long before = GC.GetTotalAllocatedBytes(precise: true);
        measured.SignalAndWait();
        long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / (Connections * Requests);
        Assert.Null(failure);
        Assert.True(perRequest < 100, $"{perRequest} bytes allocated per proxied request over {Connections} busy connections");
    }

    /// <summary>
    /// A new connection per request (S5 of the load benchmark): what a connection costs, accept to close. The clients
    /// are libc sockets (<see cref="LibcClient"/>), which allocate nothing, so the delta is the proxy's.
    /// </summary>
    [Fact]
    public async Task NewConnectionPerRequest_AllocatesUnderLimitEach()
    {
        using var upstream = new FixedResponseUpstream(FixedResponse);
        var config = new ProxyConfig { BackendPort = upstream.Port };
        await using var proxy = await TestProxy.StartAsync(config);
        byte[] request = Encoding.ASCII.GetBytes(
            "GET /api/items?page=2 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: test\r\nConnection: close\r\n\r\n");
        const int Clients = 4, Warmup = 500, Connections = 2000;
        var buffers = new byte[Clients][];
        for (int c = 0; c < Clients; c++)
        {
            buffers[c] = new byte[4096];
        }
        int failures = 0;
        void Run(int perClient) => ParallelThreads.RunEach(Clients, c =>
        {
            for (int i = 0; i < perClient; i++)
            {
                int received = LibcClient.Exchange(proxy.Public, request, buffers[c]);
                if (received < 100 || !buffers[c].AsSpan(0, received).StartsWith("HTTP/1.1 200 "u8))
                {
                    Interlocked.Increment(ref failures);
                }
            }
        });
        Run(Warmup);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        Run(Connections);
        long perConnection = (GC.GetTotalAllocatedBytes(precise: true) - before) / (Clients * Connections);
        Assert.Equal(0, failures);
        Assert.True(perConnection < PerConnectionLimit, $"{perConnection} bytes allocated per connection (one request each)");
    }

    /// <summary>
    /// Bytes allocated per accepted connection that serves one proxied request. Measured (Release): 895 on the epoll
    /// engine, whose transports (stream, operations, pipes) are reused from one connection to the next (1,546 before,
    /// 1,660 while each connection still had a runtime Socket), 2,670 on the runtime's (its accepted Socket carries
    /// more); 2,750 and 3,840 before forwarders were pooled and the registry and the epoll pipes' callbacks stopped
    /// allocating per connection. What is left on epoll: the fd's handle and the peer's address, the connection object
    /// and its loop.
    /// </summary>
    private static int PerConnectionLimit => SocketPipes.UseEpoll ? 1100 : 3100;

    /// <summary>
    /// One warm HTTP/1.1 client connection through a multiplexed h2c upstream connection. Before the fix it allocated
    /// 28-32 bytes per request: the try's pooled async box (rented on the client's thread, returned on the upstream
    /// read loop's) and the upstream read loop's pending StreamPipeReader read (a second box of the client reader's
    /// type) missed the pooling builder's per-thread caches.
    /// </summary>
    [Fact]
    public async Task ProxiedRequests_WarmH2cUpstream_AllocateUnder20BytesEach()
    {
        using var upstream = new FixedH2cResponseUpstream();
        string yaml = $$"""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: origin }
            clusters:
              origin:
                protocol: h2c
                destinations: [{ address: "http://127.0.0.1:{{upstream.Port}}" }]
            """;
        await using var proxy = await TestProxy.StartAsync(yaml);

        // More requests than the HTTP/1.1 tests, in more windows: a cache miss costs about 120 bytes, and misses come in
        // bursts while the other test process holds the cores (alone: 0-3 B per request in every window; in one CI run
        // with both functional suites at once, 21 B in both of two 10,000-request windows). The bug this guards against
        // (28-32 B) showed in every window.
        long perRequest = MeasureWarmConnection(proxy.Public, warmUp: 5000, requests: 20_000, windows: 8);
        Assert.True(perRequest < 20, $"{perRequest} bytes allocated per request proxied to an h2c upstream in steady state");
    }

    /// <summary>
    /// One warm keep-alive HTTP/1.1 client connection through the proxy: <paramref name="warmUp"/> requests, then the
    /// process-wide allocated bytes per request over <paramref name="requests"/> more, the lowest of
    /// <paramref name="windows"/> equal windows.
    /// </summary>
    private static long MeasureWarmConnection(IPEndPoint proxy, int warmUp, int requests, int windows = 2)
    {
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.ReceiveTimeout = 5000;
        client.Connect(proxy);
        byte[] request = Encoding.ASCII.GetBytes(
            "GET /api/items?page=2 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n");
        byte[] receive = new byte[16 * 1024];
        int responseLength = RoundTrip(client, request, receive, expected: 0);
        for (int i = 0; i < warmUp; i++)
        {
            RoundTrip(client, request, receive, responseLength);
        }
        return LowestPerRequest(() => RoundTrip(client, request, receive, responseLength), windows, requestsPerWindow: requests / windows);
    }

    /// <summary>
    /// Process-wide allocated bytes per call of <paramref name="roundTrip"/>, the lowest of <paramref name="windows"/>
    /// windows: a per-request allocation shows in every window, while a burst from something else in the process (a
    /// timer or a pool left behind by an earlier test, or async boxes missing their caches while another test process
    /// holds the cores) lands in some. What the process allocates with no request running, over as long as the window
    /// took and measured right after it, is taken off: in the full suite, servers and clients earlier tests left winding
    /// down allocated about 40 KiB/s in the background (session 23), 15-150 B over a request's share of a window. The
    /// proxy's own per-request allocation happens only while requests run, so it still counts in full.
    /// </summary>
    internal static long LowestPerRequest(Action roundTrip, int windows, int requestsPerWindow)
    {
        long lowest = long.MaxValue;
        for (int window = 0; window < windows; window++)
        {
            long started = Environment.TickCount64;
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < requestsPerWindow; i++)
            {
                roundTrip();
            }
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            long took = Math.Max(1, Environment.TickCount64 - started);
            long idleBefore = GC.GetTotalAllocatedBytes(precise: true);
            Thread.Sleep((int)Math.Min(took, 2000));
            long background = GC.GetTotalAllocatedBytes(precise: true) - idleBefore;
            lowest = Math.Min(lowest, Math.Max(0, allocated - background) / requestsPerWindow);
        }
        return lowest;
    }

    private static bool IsOptimized()
    {
        var debuggable = typeof(ProxyServer).Assembly.GetCustomAttributes(typeof(System.Diagnostics.DebuggableAttribute), false);
        return debuggable.Length == 0 || !((System.Diagnostics.DebuggableAttribute)debuggable[0]).IsJITOptimizerDisabled;
    }

    /// <summary>
    /// Sends one request and reads one response; learns the response length on the first call (a response with a
    /// 100-byte body). Shared by the steady-state allocation tests of other areas.
    /// </summary>
    internal static int RoundTrip(Socket client, byte[] request, byte[] receive, int expected)
    {
        client.Send(request);
        int total = 0;
        while (true)
        {
            int n = client.Receive(receive.AsSpan(total));
            Assert.True(n > 0, "the proxy closed the connection");
            total += n;
            if (expected > 0)
            {
                if (total >= expected)
                {
                    return total;
                }
                continue;
            }
            int headEnd = receive.AsSpan(0, total).IndexOf("\r\n\r\n"u8);
            if (headEnd >= 0 && total >= headEnd + 4 + 100)
            {
                return total;
            }
        }
    }
}
