using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Text;
using Proxy.Benchmarks.EndToEnd;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Transport;

namespace Proxy.FunctionalTests.Tls;

/// <summary>
/// Allocation per request over a warm TLS connection, client included (a blocking SslStream in this process). The
/// cleartext path allocates nothing per request; over TLS the proxy measured 20 B per request (the blocking client
/// SslStream about 180, counted apart on its own thread).
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class TlsSteadyStateTests
{
    /// <summary>A proxy with one TLS listener (example.test) in front of <paramref name="upstream"/>.</summary>
    private static Task<TestProxy> StartProxyAsync(TestPki pki, FixedResponseUpstream upstream)
    {
        var ca = TestPki.CreateCa();
        var (cert, key) = pki.Write(TestPki.Issue(ca, "example.test", ["example.test"]), "server", ca);
        return TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0, tls: { certificates: [{ cert: "{{cert}}", key: "{{key}}" }] } }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend: { destinations: ["http://127.0.0.1:{{upstream.Port}}"] }
            """);
    }

    [Fact]
    public async Task ProxiedRequests_WarmTlsConnection_AllocateLittleEach()
    {
        using var pki = new TestPki();
        using var upstream = new FixedResponseUpstream(SteadyStateAllocationTests.FixedResponse);
        await using var proxy = await StartProxyAsync(pki, upstream);
        var (stream, _) = await TlsClients.HandshakeAsync(proxy.Public.Port, "example.test");
        using var ssl = stream;
        byte[] request = Encoding.ASCII.GetBytes("GET /api/items?page=2 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n");
        byte[] receive = new byte[16 * 1024];
        int length = RoundTrip(ssl, request, receive, 0);
        for (int i = 0; i < 3000; i++)
        {
            RoundTrip(ssl, request, receive, length);
        }

        // The best of five rounds: the runtime may allocate once while it re-tiers a hot loop (on this thread or the
        // proxy's), and a test in another collection may allocate during a round; either hits one round at most,
        // while a per-request allocation by the proxy shows in every round. On a quiet machine the proxy measures
        // ~20 B per request; on one saturated by other work, reads that find no data wait asynchronously far more often
        // and rent pooled boxes that miss their caches: 117-282 B were seen there. 200 B keeps that margin and still
        // fails a per-request buffer or object on the TLS path (a SslStream or record buffer is kilobytes).
        const int Requests = 4000;
        long proxied = long.MaxValue;
        long client = 0;
        for (int round = 0; round < 5; round++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            long clientBefore = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < Requests; i++)
            {
                RoundTrip(ssl, request, receive, length);
            }
            // The client runs synchronously on this thread; the proxy's work runs on socket and pool threads.
            long roundClient = (GC.GetAllocatedBytesForCurrentThread() - clientBefore) / Requests;
            long roundProxied = (GC.GetTotalAllocatedBytes(precise: true) - before) / Requests - roundClient;
            if (roundProxied < proxied)
            {
                (proxied, client) = (roundProxied, roundClient);
            }
        }

        Assert.True(proxied < 200, $"{proxied} bytes allocated per proxied TLS request by the proxy ({client} by the client) in steady state (best of five rounds)");
    }

    /// <summary>
    /// Sixteen busy TLS connections at once, as under load: a read that waits suspends every async method on its way,
    /// and with many connections per thread their pooled boxes keep missing the small per-thread caches. Over the
    /// framework's stream pipe reader (the runtime's engine) that cost 450-500 B per request at 64 connections; the
    /// epoll engine's reader waits on the socket before it asks the SslStream, which then completes at once.
    /// </summary>
    [Fact]
    public async Task ProxiedRequests_SixteenBusyTlsConnections_AllocateLittleEach()
    {
        using var pki = new TestPki();
        using var upstream = new FixedResponseUpstream(SteadyStateAllocationTests.FixedResponse);
        await using var proxy = await StartProxyAsync(pki, upstream);
        const int Connections = 16, PerConnection = 100;
        var clients = new SslStream[Connections];
        for (int c = 0; c < Connections; c++)
        {
            (clients[c], _) = await TlsClients.HandshakeAsync(proxy.Public.Port, "example.test");
        }
        byte[] request = Encoding.ASCII.GetBytes("GET /api/items?page=2 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n");
        var receives = new byte[Connections][];
        var lengths = new int[Connections];
        var clientBytes = new long[Connections];
        for (int c = 0; c < Connections; c++)
        {
            receives[c] = new byte[16 * 1024];
        }
        void Run(int perConnection) => ParallelThreads.RunEach(Connections, c =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < perConnection; i++)
            {
                lengths[c] = RoundTrip(clients[c], request, receives[c], lengths[c]);
            }
            clientBytes[c] = GC.GetAllocatedBytesForCurrentThread() - before;
        });
        try
        {
            Run(300); // warm: every connection's first requests, the tiering of both sides
            // The best of three rounds, as above: a one-off allocation elsewhere in the process hits one round.
            long proxied = long.MaxValue;
            for (int round = 0; round < 3; round++)
            {
                long before = GC.GetTotalAllocatedBytes(precise: true);
                Run(PerConnection);
                long total = GC.GetTotalAllocatedBytes(precise: true) - before;
                proxied = Math.Min(proxied, (total - clientBytes.Sum()) / (Connections * PerConnection));
            }
            // The stream pipe reader measured 200-500 B here; a per-request buffer would be kilobytes.
            int limit = SocketPipes.UseEpoll ? 100 : 2000;
            Assert.True(proxied < limit, $"{proxied} bytes allocated per proxied TLS request over {Connections} busy connections (limit {limit})");
        }
        finally
        {
            foreach (SslStream client in clients)
            {
                client.Dispose();
            }
        }
    }

    private static int RoundTrip(SslStream client, byte[] request, byte[] receive, int expected)
    {
        client.Write(request);
        int total = 0;
        while (true)
        {
            int n = client.Read(receive.AsSpan(total));
            Assert.True(n > 0, "the proxy closed the connection");
            total += n;
            if (expected > 0 ? total >= expected : receive.AsSpan(0, total).IndexOf("\r\n\r\n"u8) is int end && end >= 0 && total >= end + 4 + 100)
            {
                return total;
            }
        }
    }
}
