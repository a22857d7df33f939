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

    /// <summary>A listener on the engines, a connected client, and the server side's transport and fd.</summary>
    private static (Socket Listener, EpollAcceptor Acceptor, Socket Client, EpollSocketTransport Server, int Fd) Connect()
    {
        var listener = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var handler = new TransportHandler();
        var acceptor = new EpollAcceptor(listener, handler);
        acceptor.Start();
        var client = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 5000 };
        client.Connect(listener.LocalEndPoint!);
        Assert.True(handler.Accepted.TryTake(out var accepted, s_timeout), "nothing accepted");
        return (listener, acceptor, client, accepted.Transport, accepted.Fd);
    }

    private static void Stop(Socket listener, EpollAcceptor acceptor)
    {
        acceptor.Stop();
        listener.Dispose();
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
        var (listener, acceptor, client, server, fd) = Connect();
        using var _ = client;
        try
        {
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
        finally
        {
            Stop(listener, acceptor);
        }
    }

    [Fact]
    public async Task ShutdownSend_ClientSeesEndOfStream_ServerStillReads()
    {
        var (listener, acceptor, client, server, _) = Connect();
        using var _ = client;
        try
        {
            server.ShutdownSend();

            Assert.Equal(0, client.Receive(new byte[8]));
            client.Send("late"u8);
            Assert.Equal("late"u8.ToArray(), await ReadAsync(server.Input, 4));
            server.Input.Complete();
            server.Output.Complete();
            server.Dispose();
        }
        finally
        {
            Stop(listener, acceptor);
        }
    }

    [Fact]
    public async Task Abort_WhileReadWaits_ReadFailsAndClientSeesReset()
    {
        var (listener, acceptor, client, server, _) = Connect();
        using var _ = client;
        try
        {
            ValueTask<ReadResult> read = server.Input.ReadAsync();
            Assert.False(read.IsCompleted);

            server.Abort();

            await Assert.ThrowsAnyAsync<Exception>(() => read.AsTask().WaitAsync(s_timeout));
            var e = Assert.Throws<SocketException>(() => client.Receive(new byte[8]));
            Assert.Equal(SocketError.ConnectionReset, e.SocketErrorCode);
        }
        finally
        {
            Stop(listener, acceptor);
        }
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
