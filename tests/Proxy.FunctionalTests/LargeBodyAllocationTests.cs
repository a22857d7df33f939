using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.Benchmarks.EndToEnd;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Transport;
using Xunit.Abstractions;

namespace Proxy.FunctionalTests;

/// <summary>
/// Responses that do not arrive in one read (200 KB bodies): the relay's waits (the forwarder's <c>BodyPump</c>, the
/// HTTP/2 stream's pump) run in loops that live as long as their pooled objects, so no wait rents an async box.
/// Before, each wait suspended an async method per body, and each suspension rented a box from the pooling builder,
/// whose caches (one per thread and per core) nearly always miss with sixteen connections interleaved. The clients
/// and the upstream are blocking sockets that allocate nothing per request, so the process-wide delta is the proxy's.
/// Runs alone.
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class LargeBodyAllocationTests(ITestOutputHelper output)
{
    private const int BodyLength = 200 * 1024;

    private static readonly byte[] LargeResponse = Encoding.ASCII.GetBytes(
        $"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {BodyLength}\r\n\r\n" + new string('y', BodyLength));

    /// <summary>
    /// Bytes per request, best of five rounds, alone. HTTP/2: 558 B before the loops on either engine (the boxes of
    /// BodyPump.CopyAsync, RelayResponseBodyAsync and the stream's PumpResponseAsync), 8 B after on our epoll engine and
    /// 138 B on the runtime's, whose StreamPipeReader rents a box per socket read that waits (client and upstream
    /// connections, outside the relay; see Http2SteadyStateAllocationTests). HTTP/1.1: 5-12 B before and after on
    /// either engine (the per-connection relay's boxes mostly came back through the caches): kept as a guard that a
    /// large body allocates nothing per read. The bounds keep a margin for a loaded machine (the counter is process-wide).
    /// </summary>
    private static int Bound => SocketPipes.UseEpoll ? 100 : 300;

    /// <summary>
    /// HTTP/1.1 clients that read through a small socket receive buffer, so the relay's flushes to them wait and its
    /// reads of the upstream often find nothing, interleaved over sixteen connections.
    /// </summary>
    [Fact]
    public async Task ProxiedLargeResponses_SixteenSlowReadingConnections_AllocateNoBoxPerWait()
    {
        using var upstream = new FixedResponseUpstream(LargeResponse);
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });

        long best = Measure(proxy.Public, endpoint => new Http1Client(endpoint), batches: 60, "HTTP/1.1");

        Assert.True(best < Bound, $"{best} bytes allocated per proxied 200 KB response over 16 HTTP/1.1 connections (best of five rounds)");
    }

    /// <summary>
    /// HTTP/2 (h2c) clients, four streams each, bridged to the HTTP/1.1 upstream: the bridge's response pipe is bounded,
    /// so the forwarder's relay and the stream's pump take turns waiting for each other many times per body.
    /// </summary>
    [Fact]
    public async Task ProxiedLargeHttp2Responses_SixteenConnections_AllocateNoBoxPerWait()
    {
        using var upstream = new FixedResponseUpstream(LargeResponse);
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });

        long best = Measure(proxy.Public, endpoint => new LargeH2c(endpoint, streams: 4), batches: 25, "HTTP/2") / 4;

        Assert.True(best < Bound, $"{best} bytes allocated per proxied 200 KB HTTP/2 response over 16 connections (best of five rounds)");
    }

    private interface IClient
    {
        /// <summary>Connects and sends one request (or batch); throws when the answer is not whole.</summary>
        void Start();

        /// <summary><paramref name="batches"/> requests (or batches of concurrent streams), one after the other.</summary>
        void Run(int batches);
    }

    /// <summary>
    /// Sixteen clients, each on its own thread: warm, then the process-wide allocated bytes per batch over
    /// <paramref name="batches"/> batches each, best of five rounds.
    /// </summary>
    private long Measure(IPEndPoint proxy, Func<Socket, IClient> create, int batches, string protocol)
    {
        const int Connections = 16;
        var sockets = new Socket[Connections];
        var clients = new IClient[Connections];
        try
        {
            for (int c = 0; c < Connections; c++)
            {
                sockets[c] = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                {
                    NoDelay = true,
                    ReceiveTimeout = 10_000,
                    // Small: the proxy's sends to the client wait (set before connecting, so the window starts small).
                    ReceiveBufferSize = 16 * 1024,
                };
                sockets[c].Connect(proxy);
                clients[c] = create(sockets[c]);
                clients[c].Start();
            }
            RunAll(clients, batches); // warm: pools, every connection's pumps and loops
            long best = long.MaxValue;
            for (int round = 0; round < 5; round++)
            {
                long before = GC.GetTotalAllocatedBytes(precise: true);
                RunAll(clients, batches);
                long perBatch = (GC.GetTotalAllocatedBytes(precise: true) - before) / (Connections * batches);
                output.WriteLine($"round {round}: {perBatch} bytes per {protocol} batch");
                best = Math.Min(best, perBatch);
            }
            return best;
        }
        finally
        {
            foreach (Socket? socket in sockets)
            {
                socket?.Dispose();
            }
        }
    }

    private static void RunAll(IClient[] clients, int batches)
    {
        var threads = new Thread[clients.Length];
        Exception? failure = null;
        for (int c = 0; c < clients.Length; c++)
        {
            IClient client = clients[c];
            threads[c] = new Thread(() =>
            {
                try
                {
                    client.Run(batches);
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

    /// <summary>A blocking HTTP/1.1 keep-alive client: one GET at a time, the body counted into a small reused buffer.</summary>
    private sealed class Http1Client(Socket socket) : IClient
    {
        private static readonly byte[] Request = Encoding.ASCII.GetBytes(
            "GET /static/200k.bin HTTP/1.1\r\nHost: example.test\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n");
        private readonly byte[] _receive = new byte[16 * 1024];
        private long _length;

        public void Start()
        {
            // The first response: its head's length (the body's is known), read to its end.
            socket.Send(Request);
            int filled = 0;
            while (true)
            {
                filled += Receive(filled);
                int headEnd = _receive.AsSpan(0, filled).IndexOf("\r\n\r\n"u8);
                if (headEnd >= 0)
                {
                    _length = headEnd + 4 + BodyLength;
                    ReadRest(filled);
                    return;
                }
            }
        }

        public void Run(int batches)
        {
            for (int i = 0; i < batches; i++)
            {
                socket.Send(Request);
                ReadRest(0);
            }
        }

        private void ReadRest(long total)
        {
            while (total < _length)
            {
                total += Receive(0);
            }
            if (total != _length)
            {
                throw new InvalidOperationException("more bytes than the response");
            }
        }

        private int Receive(int offset)
        {
            int n = socket.Receive(_receive.AsSpan(offset));
            // Not Assert: xunit's helpers may allocate, and the counter is process-wide.
            return n > 0 ? n : throw new InvalidOperationException("the proxy closed the connection");
        }
    }

    /// <summary>
    /// A blocking h2c client (prior knowledge) that sends pre-encoded GETs and parses only frame headers, so it allocates
    /// nothing per request. Its windows are opened wide: the proxy never waits for a WINDOW_UPDATE.
    /// </summary>
    private sealed class LargeH2c(Socket socket, int streams) : IClient
    {
        private const int FrameHeaderLength = 9;
        private const byte Data = 0x0, Headers = 0x1, Settings = 0x4, WindowUpdate = 0x8, GoAway = 0x7, RstStream = 0x3;
        private const byte EndStream = 0x1, EndHeaders = 0x4, Ack = 0x1;
        private readonly byte[] _request = BuildRequest();
        private readonly byte[] _receive = new byte[64 * 1024];
        private readonly byte[] _settingsAck = [0, 0, 0, Settings, Ack, 0, 0, 0, 0];
        private int _filled;
        private int _nextStream = 1;

        private void SendPreface()
        {
            var preface = new List<byte>();
            preface.AddRange("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray());
            // SETTINGS: INITIAL_WINDOW_SIZE (0x4) = 2^30 (RFC 9113 section 6.5.2).
            preface.AddRange(new byte[] { 0, 0, 6, Settings, 0, 0, 0, 0, 0, 0, 0x4, 0x40, 0, 0, 0 });
            // The connection window (section 6.9.2: 65,535 whatever SETTINGS say) opened to 2^31-1.
            preface.AddRange(new byte[] { 0, 0, 4, WindowUpdate, 0, 0, 0, 0, 0, 0x7F, 0xFF, 0, 0 });
            socket.Send(preface.ToArray());
        }

        public void Start()
        {
            SendPreface();
            if (RoundTrips() != streams * BodyLength)
            {
                throw new InvalidOperationException("a response body was cut");
            }
        }

        public void Run(int batches)
        {
            for (int i = 0; i < batches; i++)
            {
                if (RoundTrips() != streams * BodyLength)
                {
                    throw new InvalidOperationException("a response body was cut");
                }
            }
        }

        /// <summary>streams concurrent GETs (h2load's -m); returns the responses' DATA octets.</summary>
        private int RoundTrips()
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
                    if (n <= 0)
                    {
                        throw new InvalidOperationException("the proxy closed the connection");
                    }
                    _filled += n;
                }
                int length = Length();
                byte type = _receive[3];
                byte flags = _receive[4];
                int id = BinaryPrimitives.ReadInt32BigEndian(_receive.AsSpan(5)) & 0x7FFF_FFFF;
                if (type is GoAway or RstStream)
                {
                    throw new InvalidOperationException($"frame type {type} from the proxy");
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
            AddLiteral(block, 4, "/static/200k.bin");
            AddLiteral(block, 1, "example.test");
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
            block.Add((byte)nameIndex);
            block.Add((byte)value.Length);
            block.AddRange(Encoding.ASCII.GetBytes(value));
        }
    }
}
