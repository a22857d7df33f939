using System.Net;
using System.Net.Sockets;
using Proxy.Benchmarks.EndToEnd;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Transport;
using Xunit.Abstractions;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// An HTTP/2 client's requests (h2c, prior knowledge) bridged to an HTTP/1.1 upstream allocate (almost) nothing once
/// warm: the pooled stream keeps its bridge, forwarder and loops. The client is a blocking socket that sends
/// pre-encoded frames and never decodes HPACK, and the upstream is the blocking <see cref="FixedResponseUpstream"/>, so the process-wide allocation delta is the proxy's.
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class Http2SteadyStateAllocationTests(ITestOutputHelper output)
{
    private const string Path = "/api/items?page=2", UserAgent = "test";

    /// <summary>
    /// Bytes per request, best of five rounds. On our epoll engine (the binary's default) the proxy allocates 0-8 B per
    /// request in these tests. On the runtime's socket engine every socket read that waits rents a box for
    /// StreamPipeReader's async read (client and upstream connections, outside the bridge), which misses the pooling
    /// builder's caches as the bridge's boxes did: 14-56 B with one connection, 95-110 B with sixteen, alone, and up to
    /// 161 B in a full parallel run (the counter is process-wide). 300 B there keeps a margin for a loaded CI machine and
    /// still fails a bridge built per stream (~1.7 KB) or the per-stream boxes back on top of the reads (~360-450 B).
    /// </summary>
    private static int Bound => SocketPipes.UseEpoll ? 100 : 300;

    [Fact]
    public async Task ProxiedHttp2Requests_WarmConnection_AllocateUnderBound()
    {
        using var upstream = new FixedResponseUpstream(SteadyStateAllocationTests.FixedResponse);
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.ReceiveTimeout = 5000;
        client.Connect(proxy.Public);
        var h2 = new RawH2cClient(client, Path, UserAgent);
        h2.SendPreface();

        Assert.Equal(100, h2.RoundTrip());
        for (int i = 0; i < 3000; i++)
        {
            h2.RoundTrip();
        }
        // The counter is process-wide: work left over from earlier tests (connections closing, hosts stopping) lands in
        // it too, so the best of five rounds is taken (see Bound). A bridge built per stream (~1.7 KB per request) fails
        // it; per-stream async boxes show only with many connections (next test).
        const int Requests = 3000;
        long best = long.MaxValue;
        for (int round = 0; round < 5; round++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < Requests; i++)
            {
                h2.RoundTrip();
            }
            long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / Requests;
            output.WriteLine($"round {round}: {perRequest} bytes per proxied HTTP/2 request");
            best = Math.Min(best, perRequest);
        }

        Assert.True(best < Bound, $"{best} bytes allocated per proxied HTTP/2 request in steady state (best of five rounds)");
    }

    /// <summary>
    /// Sixteen connections with four streams each, interleaved on the proxy's threads: every per-stream wait runs in a
    /// long-lived loop (the stream's run loop, the bridge's stream loop, the forwarder's loop). An async method per
    /// stream that suspends rents a box from the pooling builder, whose caches (one per thread and per core) nearly
    /// always miss with many connections: the bridge's per-stream methods cost 231-325 B per request here before its
    /// stream loop (one connection hits the cache every time and does not show it).
    /// </summary>
    [Fact]
    public async Task ProxiedHttp2Requests_SixteenConnections_AllocateNoBoxPerStream()
    {
        using var upstream = new FixedResponseUpstream(SteadyStateAllocationTests.FixedResponse);
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        const int Connections = 16, Streams = 4, Batches = 250;
        var sockets = new Socket[Connections];
        var clients = new RawH2cClient[Connections];
        try
        {
            for (int c = 0; c < Connections; c++)
            {
                sockets[c] = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 5000 };
                sockets[c].Connect(proxy.Public);
                clients[c] = new RawH2cClient(sockets[c], Path, UserAgent);
                clients[c].SendPreface();
                Assert.Equal(Streams * 100, clients[c].RoundTrips(Streams));
            }
            RunAll(clients, Streams, Batches); // warm: every stream object of every connection, and their bridges

            long best = long.MaxValue;
            for (int round = 0; round < 5; round++)
            {
                long before = GC.GetTotalAllocatedBytes(precise: true);
                RunAll(clients, Streams, Batches);
                long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / (Connections * Streams * Batches);
                output.WriteLine($"round {round}: {perRequest} bytes per proxied HTTP/2 request (16 connections, 4 streams each)");
                best = Math.Min(best, perRequest);
            }

            // Alone, best of five: 1 B on the epoll engine, 95-110 B on the runtime's (231 and 235 B before the bridge's
            // stream loop; see Bound).
            Assert.True(best < Bound, $"{best} bytes allocated per proxied HTTP/2 request with 16 connections (best of five rounds)");
        }
        finally
        {
            foreach (Socket? socket in sockets)
            {
                socket?.Dispose();
            }
        }
    }

    /// <summary>Each client on its own thread, <paramref name="batches"/> times <paramref name="streams"/> concurrent GETs.</summary>
    private static void RunAll(RawH2cClient[] clients, int streams, int batches) => ParallelThreads.RunEach(clients.Length, c =>
    {
        for (int i = 0; i < batches; i++)
        {
            clients[c].RoundTrips(streams);
        }
    });
}
