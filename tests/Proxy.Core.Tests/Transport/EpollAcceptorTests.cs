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

        public void OnAccepted(Socket socket)
        {
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

    [Fact]
    public async Task Stop_WhileConnectionsArrive_AcceptsNothingAfterwardAndListenerCloses()
    {
        Socket listener = Listen();
        var handler = new RecordingHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        EndPoint address = listener.LocalEndPoint!;
        var clients = new ConcurrentQueue<Socket>();
        using var stopConnecting = new CancellationTokenSource();
        Task connecting = Task.Run(() =>
        {
            while (!stopConnecting.IsCancellationRequested)
            {
                var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
                clients.Enqueue(client);
                try
                {
                    client.Connect(address);
                }
                catch (SocketException)
                {
                    return; // refused once the listener is closed
                }
            }
        });
        await handler.WaitForAsync(20);

        acceptor.Stop();
        // An accept4 already under way when Stop ran may still hand its socket over; give it time, then look.
        await Task.Delay(100);
        handler.Stopped = true;
        int accepted = handler.Accepted.Count;
        await Task.Delay(200);
        Task close = Task.Run(listener.Dispose);
        await close.WaitAsync(s_timeout); // no engine holds the listening socket any more
        stopConnecting.Cancel();
        await connecting.WaitAsync(s_timeout);

        Assert.Equal(accepted, handler.Accepted.Count);
        Assert.False(handler.AcceptedAfterStop);
        DisposeAll(clients);
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

            Assert.Equal(2, handler.Accepted.Count);
            Assert.Equal([0], handler.Pauses.ToArray());

            // While paused, new arrivals wake nobody (the socket is out of every epoll set).
            clients.Add(Connect(listener));
            await Task.Delay(100);
            Assert.Equal(2, handler.Accepted.Count);

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
