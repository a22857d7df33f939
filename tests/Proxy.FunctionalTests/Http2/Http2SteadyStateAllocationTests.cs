using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
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
    private const int FrameHeaderLength = 9;
    private const byte Data = 0x0, Headers = 0x1, Settings = 0x4, WindowUpdate = 0x8, GoAway = 0x7, RstStream = 0x3;
    private const byte EndStream = 0x1, EndHeaders = 0x4, Ack = 0x1;

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
        var h2 = new RawH2c(client);
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
        var clients = new RawH2c[Connections];
        try
        {
            for (int c = 0; c < Connections; c++)
            {
                sockets[c] = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 5000 };
                sockets[c].Connect(proxy.Public);
                clients[c] = new RawH2c(sockets[c]);
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
    private static void RunAll(RawH2c[] clients, int streams, int batches)
    {
        var threads = new Thread[clients.Length];
        Exception? failure = null;
        for (int c = 0; c < clients.Length; c++)
        {
            RawH2c client = clients[c];
            threads[c] = new Thread(() =>
            {
                try
                {
                    for (int i = 0; i < batches; i++)
                    {
                        client.RoundTrips(streams);
                    }
                }
                catch (Exception e)
                {
                    // An exception left on a thread would end the test host: the test thread rethrows it.
                    Interlocked.CompareExchange(ref failure, e, null);
                }
            });
            threads[c].Start();
        }
        foreach (Thread thread in threads)
        {
            thread.Join();
        }
        if (failure is not null)
        {
            throw new InvalidOperationException("a client failed", failure);
        }
    }

    /// <summary>A blocking h2c client: one batch of concurrent streams at a time, request frames encoded once, only frame headers parsed.</summary>
    private sealed class RawH2c(Socket socket)
    {
        private readonly byte[] _request = BuildRequest();
        private readonly byte[] _receive = new byte[64 * 1024];
        private readonly byte[] _settingsAck = [0, 0, 0, Settings, Ack, 0, 0, 0, 0];
        private int _filled;
        private int _nextStream = 1;

        public void SendPreface()
        {
            var preface = new List<byte>();
            preface.AddRange("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray());
            // SETTINGS: INITIAL_WINDOW_SIZE (0x4) = 2^30, so no stream ever waits for a WINDOW_UPDATE from us.
            preface.AddRange(new byte[] { 0, 0, 6, Settings, 0, 0, 0, 0, 0, 0, 0x4, 0x40, 0, 0, 0 });
            // The connection window (section 6.9.2 starts it at 65,535 whatever SETTINGS say) opened to 2^31-1.
            preface.AddRange(new byte[] { 0, 0, 4, WindowUpdate, 0, 0, 0, 0, 0, 0x7F, 0xFF, 0, 0 });
            socket.Send(preface.ToArray());
        }

        /// <summary>One GET; returns the response's DATA octets.</summary>
        public int RoundTrip() => RoundTrips(1);

        /// <summary><paramref name="streams"/> concurrent GETs (h2load's -m); returns the responses' DATA octets.</summary>
        public int RoundTrips(int streams)
        {
            int last = _nextStream + 2 * (streams - 1);
            for (int i = 0; i < streams; i++)
            {
                BinaryPrimitives.WriteInt32BigEndian(_request.AsSpan(5), _nextStream);
                _nextStream += 2;
                socket.Send(_request);
            }
            int left = streams;
            int body = 0;
            while (true)
            {
                while (_filled < FrameHeaderLength || _filled < FrameHeaderLength + Length())
                {
                    int n = socket.Receive(_receive.AsSpan(_filled));
                    Assert.True(n > 0, "the proxy closed the connection");
                    _filled += n;
                }
                int length = Length();
                byte type = _receive[3];
                byte flags = _receive[4];
                int id = BinaryPrimitives.ReadInt32BigEndian(_receive.AsSpan(5)) & 0x7FFF_FFFF;
                if (type is GoAway or RstStream)
                {
                    Assert.Fail($"frame type {type} from the proxy"); // formatted only when failing: no allocation per frame
                }
                if (type == Settings && (flags & Ack) == 0)
                {
                    socket.Send(_settingsAck);
                }
                bool done = false;
                if (id > last - 2 * streams && id <= last && type is Data or Headers)
                {
                    if (type == Data)
                    {
                        body += length;
                    }
                    done = (flags & EndStream) != 0 && --left == 0;
                }
                int frame = FrameHeaderLength + length;
                _receive.AsSpan(frame, _filled - frame).CopyTo(_receive);
                _filled -= frame;
                if (done)
                {
                    return body;
                }
            }
        }

        private int Length() => (_receive[0] << 16) | (_receive[1] << 8) | _receive[2];

        private static byte[] BuildRequest()
        {
            // HPACK (RFC 7541): :method GET (static 2), :scheme http (static 6), then :path and :authority as literals
            // without indexing with an indexed name (section 6.2.2), so the proxy's decoder table never changes.
            var block = new List<byte> { 0x82, 0x86 };
            AddLiteral(block, 4, "/api/items?page=2");
            AddLiteral(block, 1, "example.test");
            AddLiteral(block, 58, "test"); // user-agent
            var frame = new byte[FrameHeaderLength + block.Count];
            frame[0] = (byte)(block.Count >> 16);
            frame[1] = (byte)(block.Count >> 8);
            frame[2] = (byte)block.Count;
            frame[3] = Headers;
            frame[4] = EndStream | EndHeaders;
            block.CopyTo(frame, FrameHeaderLength);
            return frame;
        }

        private static void AddLiteral(List<byte> block, int nameIndex, string value)
        {
            // 0000xxxx: literal without indexing, the name index as a 4-bit prefix integer (section 5.1).
            if (nameIndex < 15)
            {
                block.Add((byte)nameIndex);
            }
            else
            {
                block.Add(0x0F);
                block.Add((byte)(nameIndex - 15));
            }
            block.Add((byte)value.Length);
            block.AddRange(Encoding.ASCII.GetBytes(value));
        }
    }
}
