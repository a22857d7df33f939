using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Proxy.Transport;
using Proxy.Transport.Epoll;

namespace Proxy.Core.Tests.Transport;

/// <summary>
/// Plain TCP connections accepted on the epoll engines and run on their fd, without a runtime Socket
/// (<see cref="EpollSocketTransport"/> over an <see cref="AcceptedSocketHandle"/>): the peer's address, data both
/// ways, and what each way of ending looks like to the client (FIN after the data, half-close, RST), with the fd gone.
/// </summary>
public class EpollSocketTransportTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    private sealed class TransportHandler : IEpollAcceptHandler
    {
        public readonly BlockingCollection<(EpollSocketTransport Transport, int Fd)> Accepted = new();

        public bool CanAccept() => true;

        public void OnAccepted(in AcceptedSocket accepted)
        {
            int fd = (int)accepted.Handle.DangerousGetHandle();
            Accepted.Add((new EpollSocketTransport(accepted.Handle, accepted.RemoteEndPoint), fd));
        }

        public void OnPaused(int errno)
        {
        }
    }

    /// <summary>A listener on the engines, a connected client, and the server side's transport and fd; Dispose stops the rest.</summary>
    private sealed class AcceptedPair : IDisposable
    {
        private readonly Socket _listener;
        private readonly EpollAcceptor _acceptor;

        public AcceptedPair()
        {
            _listener = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen();
            var handler = new TransportHandler();
            _acceptor = new EpollAcceptor(_listener, handler);
            _acceptor.Start();
            Client = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 5000 };
            Client.Connect(_listener.LocalEndPoint!);
            Assert.True(handler.Accepted.TryTake(out var accepted, s_timeout), "nothing accepted");
            (Server, Fd) = accepted;
        }

        public Socket Client { get; }
        public EpollSocketTransport Server { get; }
        public int Fd { get; }

        public void Dispose()
        {
            _acceptor.Stop();
            _listener.Dispose();
            Client.Dispose();
        }
    }

    private static bool FdOpen(int fd) => File.Exists($"/proc/self/fd/{fd}");

    private static async Task<byte[]> ReadAsync(PipeReader input, int length)
    {
        while (true)
        {
            ReadResult result = await input.ReadAsync().AsTask().WaitAsync(s_timeout);
            if (result.Buffer.Length >= length || result.IsCompleted)
            {
                byte[] bytes = result.Buffer.Slice(0, Math.Min(length, result.Buffer.Length)).ToArray();
                input.AdvanceTo(result.Buffer.GetPosition(bytes.Length));
                return bytes;
            }
            input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        }
    }

    [Fact]
    public async Task Accepted_EchoesBothWaysAndKnowsThePeer_DisposeClosesAfterTheData()
    {
        using var pair = new AcceptedPair();
        var (client, server, fd) = (pair.Client, pair.Server, pair.Fd);
        Assert.Equal(client.LocalEndPoint, server.RemoteEndPoint);
        Assert.Equal(IPAddress.Loopback, server.RemoteAddress);
        client.Send("ping"u8);
        Assert.Equal("ping"u8.ToArray(), await ReadAsync(server.Input, 4));
        await server.Output.WriteAsync("pong"u8.ToArray());

        server.Input.Complete();
        server.Output.Complete();
        server.Dispose();

        var received = new byte[8];
        Assert.Equal(4, client.Receive(received));
        Assert.Equal("pong"u8.ToArray(), received[..4]);
        Assert.Equal(0, client.Receive(received)); // FIN: a graceful close
        Assert.False(FdOpen(fd) && IsSocketOf(fd, client), "the fd is still open");
    }

    [Fact]
    public async Task ShutdownSend_ClientSeesEndOfStream_ServerStillReads()
    {
        using var pair = new AcceptedPair();
        var (client, server) = (pair.Client, pair.Server);
        server.ShutdownSend();

        Assert.Equal(0, client.Receive(new byte[8]));
        client.Send("late"u8);
        Assert.Equal("late"u8.ToArray(), await ReadAsync(server.Input, 4));
        server.Input.Complete();
        server.Output.Complete();
        server.Dispose();
    }

    [Fact]
    public async Task Abort_WhileReadWaits_ReadFailsAndClientSeesReset()
    {
        using var pair = new AcceptedPair();
        var (client, server) = (pair.Client, pair.Server);
        ValueTask<ReadResult> read = server.Input.ReadAsync();
        Assert.False(read.IsCompleted);

        server.Abort();

        await Assert.ThrowsAnyAsync<Exception>(() => read.AsTask().WaitAsync(s_timeout));
        var e = Assert.Throws<SocketException>(() => client.Receive(new byte[8]));
        Assert.Equal(SocketError.ConnectionReset, e.SocketErrorCode);
    }

    /// <summary>True when <paramref name="fd"/> in this process is the server end of <paramref name="client"/>'s connection.</summary>
    private static bool IsSocketOf(int fd, Socket client)
    {
        try
        {
            using var probe = new Socket(new SafeSocketHandle(fd, ownsHandle: false));
            return Equals(probe.RemoteEndPoint, client.LocalEndPoint);
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
