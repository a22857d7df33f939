using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Proxy.Transport.Epoll;

namespace Proxy.Core.Tests.Transport;

/// <summary>
/// The epoll accept path over real loopback sockets: bursts accepted on the engine threads, a stop while connections
/// arrive, the cap's pause and resume, and TCP_NODELAY inherited from the listening socket.
/// </summary>
public class EpollAcceptorTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    /// <summary>Records what the acceptor hands over; <see cref="Cap"/> plays the connection cap.</summary>
    private sealed class RecordingHandler : IEpollAcceptHandler
    {
        public readonly ConcurrentQueue<Socket> Accepted = new();
        public readonly ConcurrentQueue<int> Pauses = new();
        public volatile int Cap = int.MaxValue;
        public volatile bool OffEngineThread;
        public volatile bool Stopped;
        public volatile bool AcceptedAfterStop;

        public bool CanAccept() => Accepted.Count < Cap;

        public void OnAccepted(in AcceptedSocket accepted)
        {
            // The TLS listeners' path: the fd wrapped in a runtime Socket (the plain path is EpollSocketTransportTests').
            Socket socket = accepted.ToSocket()!;
            if (EpollEngine.Current is null)
            {
                OffEngineThread = true;
            }
            if (Stopped)
            {
                AcceptedAfterStop = true;
            }
            Accepted.Enqueue(socket);
        }

        public void OnPaused(int errno) => Pauses.Enqueue(errno);

        public async Task WaitForAsync(int count)
        {
            using var cts = new CancellationTokenSource(s_timeout);
            while (Accepted.Count < count)
            {
                await Task.Delay(5, cts.Token);
            }
        }
    }

    private static Socket Listen(bool noDelay = true)
    {
        var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
        listener.NoDelay = noDelay;
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(512);
        return listener;
    }

    private static Socket Connect(Socket listener)
    {
        var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        return client;
    }

    private static void DisposeAll(IEnumerable<Socket> sockets)
    {
        foreach (Socket socket in sockets)
        {
            socket.Dispose();
        }
    }

    [Fact]
    public async Task Accept_BurstOfConnections_AllAcceptedOnEngineThreadsWithPeerAddress()
    {
        using Socket listener = Listen();
        var handler = new RecordingHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        var clients = new List<Socket>();
        try
        {
            for (int i = 0; i < 300; i++)
            {
                clients.Add(Connect(listener));
            }

            await handler.WaitForAsync(clients.Count);

            Assert.Equal(clients.Count, handler.Accepted.Count);
            Assert.False(handler.OffEngineThread);
            var expected = clients.Select(c => c.LocalEndPoint!.ToString()).Order().ToArray();
            var actual = handler.Accepted.Select(s => s.RemoteEndPoint!.ToString()).Order().ToArray();
            Assert.Equal(expected, actual);
        }
        finally
        {
            acceptor.Stop();
            DisposeAll(clients);
            DisposeAll(handler.Accepted);
        }
    }

    [Fact]
    public async Task Accept_AcceptedSocket_ExchangesData()
    {
        using Socket listener = Listen();
        var handler = new RecordingHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        using Socket client = Connect(listener);
        await handler.WaitForAsync(1);
        handler.Accepted.TryPeek(out Socket? server);
        using var stream = new EpollSocketStream(server!);

        client.Send("ping"u8);
        var buffer = new byte[16];
        int n = await stream.ReadAsync(buffer).AsTask().WaitAsync(s_timeout);
        await stream.WriteAsync("pong"u8.ToArray());
        int m = client.Receive(buffer.AsSpan(8));

        Assert.Equal("ping", System.Text.Encoding.ASCII.GetString(buffer, 0, n));
        Assert.Equal("pong", System.Text.Encoding.ASCII.GetString(buffer, 8, m));
        acceptor.Stop();
        Proxy.Transport.SocketPipes.Close(server!, stream);
    }

    /// <summary>
    /// Connects to <paramref name="address"/> from a dedicated thread until <see cref="Finish"/>, at most
    /// <see cref="MaxClients"/> times, and calls <paramref name="atTwentieth"/> once the handler has 20 connections.
    ///
    /// Why so careful: a connector that only stops when the test thread tells it to is unbounded. The acceptor needs
    /// no thread-pool thread, so it keeps pace (~30,000 connections a second here), and a test host whose pool is
    /// starved (3 threads, 2 work items pending, 300 ms and more) runs the test's continuation too late: the process
    /// reached RLIMIT_NOFILE (20,000 fds: ~10,000 clients and their accepted ends) and the runtime, failing to create
    /// the pool's next thread without a free fd, ended the test host with "Out of memory." (this test's crash in
    /// session 4). A dedicated thread, the stop issued from it, and a cap keep the test independent of the pool.
    /// </summary>
    private sealed class Connector
    {
        /// <summary>4,000 fds with their accepted ends: far below a 20,000 RLIMIT_NOFILE, more than the 513 backlog.</summary>
        public const int MaxClients = 2000;

        private readonly Thread _thread;
        private volatile bool _finish;

        public Connector(EndPoint address, RecordingHandler handler, Action atTwentieth)
        {
            _thread = new Thread(() =>
            {
                bool signalled = false;
                while (!_finish && Clients.Count < MaxClients)
                {
                    if (!signalled && handler.Accepted.Count >= 20)
                    {
                        signalled = true;
                        atTwentieth();
                    }
                    var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                    Clients.Enqueue(client);
                    try
                    {
                        client.Connect(address);
                    }
                    catch (SocketException)
                    {
                        return; // refused once the listener is closed
                    }
                }
            }) { IsBackground = true, Name = "epoll-acceptor-test-connector" };
            _thread.Start();
        }

        public ConcurrentQueue<Socket> Clients { get; } = new();

        public bool Finish(TimeSpan timeout)
        {
            _finish = true;
            return _thread.Join(timeout); // a connect that waits for a dropped SYN's retransmission ends with the close
        }
    }

    [Fact]
    public async Task Stop_WhileConnectionsArrive_AcceptsNothingAfterwardAndListenerCloses()
    {
        Socket listener = Listen();
        var handler = new RecordingHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        // The stop runs on the connecting thread between two connects: connections are arriving, whatever the pool does.
        var connector = new Connector(listener.LocalEndPoint!, handler, acceptor.Stop);
        await handler.WaitForAsync(20);

        // An accept4 already under way when Stop ran may still hand its socket over; give it time, then look.
        await Task.Delay(100);
        handler.Stopped = true;
        int accepted = handler.Accepted.Count;
        await Task.Delay(200);
        Task close = Task.Run(listener.Dispose);
        await close.WaitAsync(s_timeout); // no engine holds the listening socket any more
        bool finished = connector.Finish(s_timeout);

        Assert.True(finished);
        Assert.Equal(accepted, handler.Accepted.Count);
        Assert.False(handler.AcceptedAfterStop);
        DisposeAll(connector.Clients);
        DisposeAll(handler.Accepted);
    }

    [Fact]
    public async Task Stop_AfterTestThreadStalls_ConnectionsStayBoundedAndListenerCloses()
    {
        // The session-4 crash made deterministic: the test thread is late (as behind a starved thread pool) while
        // clients keep connecting and the engines keep accepting. An unbounded connector reaches RLIMIT_NOFILE in
        // ~300 ms here and the runtime ends the process ("Out of memory."); this one stops at MaxClients.
        Socket listener = Listen();
        var handler = new RecordingHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        var connector = new Connector(listener.LocalEndPoint!, handler, static () => { });
        await handler.WaitForAsync(20);
        Thread.Sleep(500); // blocks this thread on purpose: the stall

        acceptor.Stop();
        await Task.Delay(100);
        handler.Stopped = true;
        int accepted = handler.Accepted.Count;
        await Task.Delay(100);
        Task close = Task.Run(listener.Dispose);
        await close.WaitAsync(s_timeout);
        bool finished = connector.Finish(s_timeout);

        Assert.True(finished);
        Assert.Equal(accepted, handler.Accepted.Count);
        Assert.False(handler.AcceptedAfterStop);
        Assert.InRange(connector.Clients.Count, 20, Connector.MaxClients);
        DisposeAll(connector.Clients);
        DisposeAll(handler.Accepted);
    }

    [Fact]
    public async Task Accept_AtCap_PausesOnceAndResumeAcceptsTheBacklog()
    {
        using Socket listener = Listen();
        var handler = new RecordingHandler { Cap = 2 };
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        var clients = new List<Socket>();
        try
        {
            for (int i = 0; i < 5; i++)
            {
                clients.Add(Connect(listener)); // the kernel completes the handshake: the rest wait in the backlog
            }
            await handler.WaitForAsync(2);
            await Task.Delay(100);
            int atCap = handler.Accepted.Count;

            // The cap is checked before each accept4 on each engine, and EPOLLEXCLUSIVE may wake more than one engine
            // for a burst: two engines that both read 1 below the cap accept one each (a repeated run saw 3 of 2).
            Assert.InRange(atCap, 2, 1 + EpollEngine.All.Length);
            Assert.Equal([0], handler.Pauses.ToArray());

            // While paused, new arrivals wake nobody (the socket is out of every epoll set).
            clients.Add(Connect(listener));
            await Task.Delay(100);
            Assert.Equal(atCap, handler.Accepted.Count);

            handler.Cap = int.MaxValue;
            acceptor.Resume();
            await handler.WaitForAsync(6);

            Assert.Equal(6, handler.Accepted.Count);
            Assert.Single(handler.Pauses);
        }
        finally
        {
            acceptor.Stop();
            DisposeAll(clients);
            DisposeAll(handler.Accepted);
        }
    }

    [Fact]
    public async Task Start_ListenerRegisteredLevelTriggeredAndExclusiveOnEveryEngine()
    {
        // Level-triggered because each report accepts one connection: an accept4 that finds the backlog empty costs
        // as much as one that accepts, so the acceptor never asks for the EAGAIN that edge-triggered events need. The
        // burst tests above show the rest of the backlog is reported again; this one pins the mode that makes it so.
        using Socket listener = Listen();
        var handler = new RecordingHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        string inode = EpollRegistrations.SocketInode((int)listener.SafeHandle.DangerousGetHandle());
        acceptor.Start();
        try
        {
            foreach (EpollEngine engine in EpollEngine.All)
            {
                Assert.True(EpollRegistrations.Of(engine).TryGetValue(inode, out uint events), "the listener is not in an engine's epoll set");
                // The kernel adds EPOLLERR and EPOLLHUP to every registration.
                Assert.Equal(EpollNative.EPOLLIN | EpollNative.EPOLLEXCLUSIVE, events & (EpollNative.EPOLLIN | EpollNative.EPOLLEXCLUSIVE));
                Assert.Equal(0u, events & EpollNative.EPOLLET);
            }

            using Socket client = Connect(listener);
            await handler.WaitForAsync(1);
        }
        finally
        {
            acceptor.Stop();
            DisposeAll(handler.Accepted);
        }
        Assert.All(EpollEngine.All, engine => Assert.False(EpollRegistrations.Of(engine).ContainsKey(inode)));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Accept_ListenerNoDelay_InheritedByAcceptedSocket(bool noDelay)
    {
        // SocketListener sets TCP_NODELAY once on the listening socket and not per connection: this is why.
        using Socket listener = Listen(noDelay);
        var handler = new RecordingHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        using Socket client = Connect(listener);
        try
        {
            await handler.WaitForAsync(1);
            handler.Accepted.TryPeek(out Socket? server);

            Assert.Equal(noDelay, server!.NoDelay); // getsockopt(TCP_NODELAY) on the accepted fd
        }
        finally
        {
            acceptor.Stop();
            DisposeAll(handler.Accepted);
        }
    }
}
