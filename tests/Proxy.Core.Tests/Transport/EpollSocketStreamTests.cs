using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Proxy.Transport;
using Proxy.Transport.Epoll;

namespace Proxy.Core.Tests.Transport;

/// <summary>
/// The edge-triggered stream over real loopback sockets: readiness bookkeeping (short reads, end of stream arriving
/// with the data), partial writes under backpressure, closes from either side while an operation waits.
/// </summary>
public class EpollSocketStreamTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    /// <summary>A connected loopback pair (the client side is never registered with any engine).</summary>
    private static (Socket Server, Socket Client) Pair() => LoopbackPair.Create();

    private static async Task<T> Within<T>(ValueTask<T> task) => await task.AsTask().WaitAsync(s_timeout);

    [Fact]
    public async Task ReadAsync_DataSentBeforeRegistration_ReturnsIt()
    {
        var (server, client) = Pair();
        using var _ = client;
        client.Send("hello"u8);
        await Task.Delay(50); // queued before EPOLL_CTL_ADD: the initial event must report it
        using var stream = new EpollSocketStream(server);
        var buffer = new byte[64];

        int n = await Within(stream.ReadAsync(buffer));

        Assert.Equal("hello", System.Text.Encoding.ASCII.GetString(buffer, 0, n));
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task ZeroByteRead_AfterShortRead_WaitsUntilDataArrives()
    {
        var (server, client) = Pair();
        using var _ = client;
        var stream = new EpollSocketStream(server);
        client.Send("a"u8);
        Assert.Equal(1, await Within(stream.ReadAsync(new byte[16]))); // short: drained

        ValueTask<int> wait = stream.ReadAsync(Memory<byte>.Empty);
        await Task.Delay(50);
        Assert.False(wait.IsCompleted);
        client.Send("x"u8);

        Assert.Equal(0, await Within(wait));
        var buffer = new byte[16];
        Assert.Equal(1, await Within(stream.ReadAsync(buffer)));
        // Drained by the short read: the next zero-byte read waits again instead of completing at once.
        ValueTask<int> next = stream.ReadAsync(Memory<byte>.Empty);
        await Task.Delay(50);
        Assert.False(next.IsCompleted);
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task ReadAsync_ManyMessages_EachArrivesOnce()
    {
        var (server, client) = Pair();
        using var _ = client;
        var stream = new EpollSocketStream(server);
        var buffer = new byte[8];
        for (int i = 0; i < 200; i++)
        {
            ValueTask<int> read = stream.ReadAsync(buffer);
            client.Send([(byte)i]);
            Assert.Equal(1, await Within(read));
            Assert.Equal((byte)i, buffer[0]);
        }
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task ReadAsync_DataAndFinTogether_ReturnsDataThenEndOfStream()
    {
        var (server, client) = Pair();
        var stream = new EpollSocketStream(server);
        client.Send("last words"u8);
        client.Shutdown(SocketShutdown.Send);
        await Task.Delay(50);
        var buffer = new byte[64];

        Assert.Equal(10, await Within(stream.ReadAsync(buffer)));
        // The short read must not count as drained: FIN raised its event already and will raise no other.
        Assert.Equal(0, await Within(stream.ReadAsync(buffer)));
        Assert.Equal(0, await Within(stream.ReadAsync(buffer)));
        client.Dispose();
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task ReadAsync_PeerShutsDownWhileWaiting_ReturnsZero()
    {
        var (server, client) = Pair();
        var stream = new EpollSocketStream(server);
        ValueTask<int> read = stream.ReadAsync(new byte[16]);
        await Task.Delay(50);
        Assert.False(read.IsCompleted);

        client.Shutdown(SocketShutdown.Send); // EPOLLRDHUP

        Assert.Equal(0, await Within(read));
        client.Dispose();
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task ReadAsync_PeerResets_Throws()
    {
        var (server, client) = Pair();
        var stream = new EpollSocketStream(server);
        ValueTask<int> read = stream.ReadAsync(new byte[16]);

        client.Close(0); // RST

        var e = await Assert.ThrowsAnyAsync<Exception>(() => read.AsTask().WaitAsync(s_timeout));
        Assert.True(e is IOException, e.ToString());
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task WriteAsync_SmallSendBufferSlowReader_AllBytesArriveInOrder()
    {
        var (server, client) = Pair();
        using var _ = client;
        // 16 KiB, not 4 KiB: with a receive buffer that small, loopback TCP stalls on its window (2 MiB took 39 s).
        server.SendBufferSize = 16384;
        client.ReceiveBufferSize = 16384;
        var stream = new EpollSocketStream(server);
        byte[] payload = LoopbackPair.Payload(2 * 1024 * 1024);

        ValueTask write = stream.WriteAsync(payload);
        Assert.False(write.IsCompleted); // the kernel cannot take 2 MiB at once: the rest waits for EPOLLOUT
        var received = new byte[payload.Length];
        int filled = 0;
        while (filled < received.Length)
        {
            if (filled < 64 * 1024)
            {
                await Task.Delay(1); // slow at first: several rounds of EAGAIN and EPOLLOUT
            }
            filled += client.Receive(received.AsSpan(filled, Math.Min(8192, received.Length - filled)));
        }
        await write.AsTask().WaitAsync(s_timeout);

        Assert.True(payload.AsSpan().SequenceEqual(received));
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task WriteAsync_WhileReadWaits_WatchesWritesToo()
    {
        var (server, client) = Pair();
        using var _ = client;
        // 16 KiB, not 4 KiB: with a receive buffer that small, loopback TCP stalls on its window (2 MiB took 39 s).
        server.SendBufferSize = 16384;
        client.ReceiveBufferSize = 16384;
        var stream = new EpollSocketStream(server);
        // The parked read registers the socket for reads only; the blocked write must add EPOLLOUT (EPOLL_CTL_MOD).
        ValueTask<int> read = stream.ReadAsync(new byte[16]);
        byte[] payload = LoopbackPair.Payload(512 * 1024);

        ValueTask write = stream.WriteAsync(payload);
        var received = new byte[payload.Length];
        int filled = 0;
        while (filled < received.Length)
        {
            filled += client.Receive(received.AsSpan(filled, Math.Min(4096, received.Length - filled)));
        }
        await write.AsTask().WaitAsync(s_timeout);
        client.Send("r"u8);

        Assert.True(payload.AsSpan().SequenceEqual(received));
        Assert.Equal(1, await Within(read));
        SocketPipes.Close(server, stream);
    }

    /// <summary>
    /// Dispose frees the engine slot without EPOLL_CTL_DEL and relies on the close to drop the registration: after
    /// SocketPipes.Close no epoll instance of the engines still lists the socket (by inode, since fd numbers are
    /// reused at once by other tests), and the slot serves the next socket.
    /// </summary>
    [Fact]
    public async Task Close_AfterRegistration_LeavesNoEpollRegistration()
    {
        var (server, client) = Pair();
        using var _ = client;
        var stream = new EpollSocketStream(server);
        ValueTask<int> read = stream.ReadAsync(new byte[16]); // nothing to read: parks, which registers the socket
        Assert.False(read.IsCompleted);
        string inode = EpollRegistrations.SocketInode((int)server.SafeHandle.DangerousGetHandle());
        Assert.Contains(EpollEngine.All, engine => EpollRegistrations.Of(engine).ContainsKey(inode));

        SocketPipes.Close(server, stream);

        await Assert.ThrowsAsync<IOException>(() => read.AsTask().WaitAsync(s_timeout));
        Assert.DoesNotContain(EpollEngine.All, engine => EpollRegistrations.Of(engine).ContainsKey(inode));
        // The next socket takes a slot and gets its events.
        var (server2, client2) = Pair();
        using var __ = client2;
        var stream2 = new EpollSocketStream(server2);
        ValueTask<int> read2 = stream2.ReadAsync(new byte[16]);
        client2.Send("x"u8);
        Assert.Equal(1, await Within(read2));
        SocketPipes.Close(server2, stream2);
    }

    [Fact]
    public async Task Abort_WhileReadWaits_ReadFailsAndSocketCloses()
    {
        var (server, client) = Pair();
        using var _ = client;
        var stream = new EpollSocketStream(server);
        ValueTask<int> read = stream.ReadAsync(new byte[16]);
        await Task.Delay(20);

        SocketPipes.Abort(server, stream);

        await Assert.ThrowsAsync<IOException>(() => read.AsTask().WaitAsync(s_timeout));
        // The client sees the reset.
        client.ReceiveTimeout = 5000;
        Assert.ThrowsAny<SocketException>(() => client.Receive(new byte[1]));
    }

    [Fact]
    public async Task SocketClose_FromAnotherThreadWhileReadWaits_ReleasesAndFailsRead()
    {
        var (server, client) = Pair();
        using var _ = client;
        var stream = new EpollSocketStream(server);
        ValueTask<int> read = stream.ReadAsync(new byte[16]);
        await Task.Delay(20);

        // Not through SocketPipes: Socket.Close spins on the stream's handle reference, disconnecting the socket,
        // and the engine must see that event and let go.
        Task close = Task.Run(() => server.Close(0));

        await close.WaitAsync(s_timeout);
        // Depending on who runs first, the read sees the disconnected socket (0) or the closed one (IOException).
        try
        {
            Assert.Equal(0, await Within(read));
        }
        catch (IOException)
        {
        }
        await Assert.ThrowsAsync<IOException>(() => stream.ReadAsync(new byte[1]).AsTask());
    }

    [Fact]
    public async Task ReadAsync_Canceled_ThrowsAndNextReadStillWorks()
    {
        var (server, client) = Pair();
        using var _ = client;
        var stream = new EpollSocketStream(server);
        using var cts = new CancellationTokenSource();
        ValueTask<int> read = stream.ReadAsync(new byte[16], cts.Token);

        cts.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read.AsTask().WaitAsync(s_timeout));
        client.Send("y"u8);
        Assert.Equal(1, await Within(stream.ReadAsync(new byte[16])));
        SocketPipes.Close(server, stream);
    }

    [Fact]
    public async Task Pipes_ManyConnectionsEcho_AllComplete()
    {
        const int Connections = 200;
        var pairs = new (Socket Server, Socket Client)[Connections];
        for (int i = 0; i < Connections; i++)
        {
            pairs[i] = Pair();
        }
        var echoes = new Task[Connections];
        var streams = new Stream[Connections];
        for (int i = 0; i < Connections; i++)
        {
            var stream = new EpollSocketStream(pairs[i].Server);
            var (input, output) = SocketPipes.Create(stream);
            streams[i] = stream;
            echoes[i] = EchoAsync(input, output);
        }

        await Parallel.ForEachAsync(Enumerable.Range(0, Connections), async (i, ct) =>
        {
            Socket client = pairs[i].Client;
            var buffer = new byte[64];
            for (int round = 0; round < 20; round++)
            {
                byte[] message = [(byte)i, (byte)round, 1, 2, 3];
                await client.SendAsync(message, ct);
                int got = 0;
                while (got < message.Length)
                {
                    got += await client.ReceiveAsync(buffer.AsMemory(got), ct);
                }
                Assert.True(message.AsSpan().SequenceEqual(buffer.AsSpan(0, got)));
            }
            client.Shutdown(SocketShutdown.Send);
        }).WaitAsync(TimeSpan.FromSeconds(30));

        await Task.WhenAll(echoes).WaitAsync(s_timeout);
        for (int i = 0; i < Connections; i++)
        {
            SocketPipes.Close(pairs[i].Server, streams[i]);
            pairs[i].Client.Dispose();
        }

        static async Task EchoAsync(PipeReader input, PipeWriter output)
        {
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                {
                    await output.WriteAsync(segment);
                }
                input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    break;
                }
            }
            await input.CompleteAsync();
            await output.CompleteAsync();
        }
    }

    [Fact]
    public async Task Dispose_RacingWithReadsAndPeerData_NeverHangsAndDeregisters()
    {
        for (int i = 0; i < 100; i++)
        {
            var (server, client) = Pair();
            var stream = new EpollSocketStream(server);
            ValueTask<int> read = stream.ReadAsync(new byte[16]);
            var send = Task.Run(() =>
            {
                try
                {
                    client.Send("z"u8);
                }
                catch (SocketException)
                {
                    // the abort's RST came first
                }
            });
            var abort = Task.Run(() => SocketPipes.Abort(server, stream));
            await Task.WhenAll(send, abort).WaitAsync(s_timeout);
            try
            {
                int n = await Within(read);
                Assert.Equal(1, n); // the data won
            }
            catch (IOException)
            {
                // the abort won
            }
            client.Dispose();
            Assert.Throws<ObjectDisposedException>(() => stream.Read(new byte[1]));
        }
    }

    [Fact]
    public async Task ConnectAsync_Listening_ConnectsAndTransfers()
    {
        using var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);

        var stream = await EpollSocketStream.ConnectAsync(socket, listener.LocalEndPoint!, CancellationToken.None).AsTask().WaitAsync(s_timeout);
        using Socket accepted = listener.Accept();
        await stream.WriteAsync("ping"u8.ToArray());
        var buffer = new byte[4];

        Assert.True(socket.Connected);
        Assert.Equal(listener.LocalEndPoint, socket.RemoteEndPoint);
        Assert.Equal(4, accepted.Receive(buffer));
        SocketPipes.Close(socket, stream);
    }

    [Fact]
    public async Task ConnectAsync_NothingListening_Throws()
    {
        // A port just released by a bound (not listening) socket: connect is refused.
        using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var endPoint = probe.LocalEndPoint!;
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);

        await Assert.ThrowsAsync<SocketException>(() => EpollSocketStream.ConnectAsync(socket, endPoint, CancellationToken.None).AsTask().WaitAsync(s_timeout));
        socket.Dispose();
    }
}
