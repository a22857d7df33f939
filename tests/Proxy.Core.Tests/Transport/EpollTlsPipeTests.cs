using System.Buffers;
using System.IO.Pipelines;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Proxy.Core.Tests.Tls;
using Proxy.Transport;
using Proxy.Transport.Epoll;

namespace Proxy.Core.Tests.Transport;

/// <summary>
/// <see cref="EpollPipeReader"/> and <see cref="EpollPipeWriter"/> over TLS (<see cref="SocketPipes.CreateTls"/>).
/// The reader waits on the socket and only then asks the SslStream, and takes a parked wait or SslStream read back
/// with a token rather than the socket interrupt. These tests park it in both places (idle; half a record inside the
/// SslStream) and check that cancel, complete and the caller's token end the read, and that the SslStream still
/// decrypts what follows. The writer hands each block to the SslStream: a client's SslStream must decrypt exactly
/// what was written, whether the flush completes at once or waits for the socket.
/// </summary>
public class EpollTlsPipeTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);
    private static readonly X509Certificate2 s_certificate = TestPki.SelfSigned("localhost", ["localhost"]);

    private sealed class TlsPair : IDisposable
    {
        public required Socket Server { get; init; }
        public required Socket Client { get; init; }
        public required EpollSocketStream Network { get; init; }
        public required SslStream ServerSsl { get; init; }
        public required SslStream ClientSsl { get; init; }
        public required HoldingStream ClientWire { get; init; }
        public required EpollPipeReader Input { get; init; }
        public required EpollPipeWriter Output { get; init; }

        /// <summary>Encrypts <paramref name="text"/> as one record without sending it: the bytes the client would send.</summary>
        public byte[] Record(string text)
        {
            ClientWire.Hold = true;
            ClientSsl.Write(Encoding.ASCII.GetBytes(text));
            ClientWire.Hold = false;
            return ClientWire.TakeHeld();
        }

        public void Dispose()
        {
            Input.Complete();
            Output.Complete(new IOException("test over"));
            ClientSsl.Dispose();
            ServerSsl.Dispose();
            Network.Dispose();
            Server.Dispose();
            Client.Dispose();
        }
    }

    private static async Task<TlsPair> HandshakeAsync(int serverSendBuffer = 0)
    {
        var (server, client) = LoopbackPair.Create();
        if (serverSendBuffer > 0)
        {
            // Small, but not so small that loopback TCP falls into zero-window probes (seconds each).
            server.SendBufferSize = serverSendBuffer;
            client.ReceiveBufferSize = 64 * 1024;
        }
        var network = new EpollSocketStream(server);
        var serverSsl = new SslStream(network, leaveInnerStreamOpen: true);
        var wire = new HoldingStream(new NetworkStream(client, ownsSocket: false));
        var clientSsl = new SslStream(wire);
        Task serverSide = serverSsl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = s_certificate });
        await clientSsl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            RemoteCertificateValidationCallback = static (_, _, _, _) => true,
        }).WaitAsync(s_timeout);
        await serverSide.WaitAsync(s_timeout);
        var (input, output) = SocketPipes.CreateTls(serverSsl, network);
        return new TlsPair
        {
            Server = server, Client = client, Network = network, ServerSsl = serverSsl, ClientSsl = clientSsl, ClientWire = wire,
            Input = Assert.IsType<EpollPipeReader>(input), Output = Assert.IsType<EpollPipeWriter>(output),
        };
    }

    private static async Task<T> Within<T>(ValueTask<T> task) => await task.AsTask().WaitAsync(s_timeout);

    /// <summary>Reads until <paramref name="text"/> is all there, consumes it, and returns it.</summary>
    private static async Task<string> ReadTextAsync(PipeReader input, int length)
    {
        while (true)
        {
            ReadResult result = await Within(input.ReadAsync());
            if (result.Buffer.Length >= length || result.IsCompleted)
            {
                string text = Encoding.ASCII.GetString(result.Buffer.Slice(0, Math.Min(length, result.Buffer.Length)).ToArray());
                input.AdvanceTo(result.Buffer.GetPosition(Math.Min(length, result.Buffer.Length)));
                return text;
            }
            input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        }
    }

    [Fact]
    public async Task ReadAsync_RecordsAndIdleWaits_DecryptEachRequestAndHoldNoBlockWhileIdle()
    {
        using TlsPair pair = await HandshakeAsync();
        for (int i = 0; i < 3; i++)
        {
            ValueTask<ReadResult> pending = pair.Input.ReadAsync();
            await Task.Delay(20);
            Assert.False(pending.IsCompleted);
            Assert.Equal(0, pair.Input.HeldBlocks); // waiting on the socket, not inside the SslStream with a block
            string request = $"GET /{i} HTTP/1.1\r\n\r\n";
            pair.ClientSsl.Write(Encoding.ASCII.GetBytes(request));
            ReadResult result = await Within(pending);
            Assert.Equal(request, Encoding.ASCII.GetString(result.Buffer.ToArray()));
            pair.Input.AdvanceTo(result.Buffer.End);
        }
    }

    [Fact]
    public async Task CancelPendingRead_WhileIdle_ReturnsCanceledAndNextReadWorks()
    {
        using TlsPair pair = await HandshakeAsync();
        pair.ClientSsl.Write("first"u8);
        Assert.Equal("first", await ReadTextAsync(pair.Input, 5));

        ValueTask<ReadResult> pending = pair.Input.ReadAsync();
        await Task.Delay(20);
        pair.Input.CancelPendingRead();
        ReadResult canceled = await Within(pending);
        Assert.True(canceled.IsCanceled);
        pair.Input.AdvanceTo(canceled.Buffer.End);

        pair.ClientSsl.Write("second"u8);
        Assert.Equal("second", await ReadTextAsync(pair.Input, 6));
    }

    [Fact]
    public async Task CancelPendingRead_HalfARecordInside_ReturnsCanceledAndTheRecordStillDecrypts()
    {
        using TlsPair pair = await HandshakeAsync();
        pair.ClientSsl.Write("first"u8);
        Assert.Equal("first", await ReadTextAsync(pair.Input, 5));

        byte[] record = pair.Record("the whole record");
        ValueTask<ReadResult> pending = pair.Input.ReadAsync();
        pair.Client.Send(record.AsSpan(0, record.Length / 2));
        await Task.Delay(50); // the SslStream has read half a record and waits for the rest
        Assert.False(pending.IsCompleted);
        pair.Input.CancelPendingRead();
        ReadResult canceled = await Within(pending);
        Assert.True(canceled.IsCanceled);
        pair.Input.AdvanceTo(canceled.Buffer.End);

        pair.Client.Send(record.AsSpan(record.Length / 2));
        Assert.Equal("the whole record", await ReadTextAsync(pair.Input, 16));
    }

    [Fact]
    public async Task Complete_HalfARecordInside_ReadEndsAndBlocksGoBack()
    {
        using TlsPair pair = await HandshakeAsync(); // Dispose completes the reader again: a no-op
        byte[] record = pair.Record("never finished");
        ValueTask<ReadResult> pending = pair.Input.ReadAsync();
        pair.Client.Send(record.AsSpan(0, record.Length / 2));
        await Task.Delay(50);
        Assert.False(pending.IsCompleted);
        pair.Input.Complete();
        ReadResult result = await Within(pending);
        Assert.True(result.IsCompleted);
        Assert.Equal(0, pair.Input.HeldBlocks);
    }

    [Fact]
    public async Task ReadAsync_CallerTokenCanceledWhileWaiting_ThrowsAndNextReadWorks()
    {
        using TlsPair pair = await HandshakeAsync();
        pair.ClientSsl.Write("first"u8);
        Assert.Equal("first", await ReadTextAsync(pair.Input, 5));

        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(50));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await Within(pair.Input.ReadAsync(cts.Token)));

        pair.ClientSsl.Write("second"u8);
        Assert.Equal("second", await ReadTextAsync(pair.Input, 6));
    }

    /// <summary>Decrypts exactly <paramref name="length"/> bytes on the client side.</summary>
    private static async Task<byte[]> ClientReceiveAsync(SslStream client, int length)
    {
        var received = new byte[length];
        int filled = 0;
        while (filled < length)
        {
            int n = await client.ReadAsync(received.AsMemory(filled)).AsTask().WaitAsync(s_timeout);
            Assert.True(n > 0, "the connection ended early");
            filled += n;
        }
        return received;
    }

    [Fact]
    public async Task FlushAsync_SmallResponse_CompletesAtOnceEncryptedAndKeepsNoBlock()
    {
        using TlsPair pair = await HandshakeAsync();
        for (int i = 0; i < 3; i++)
        {
            byte[] response = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{i}");
            response.CopyTo(pair.Output.GetSpan(response.Length));
            pair.Output.Advance(response.Length);

            ValueTask<FlushResult> flush = pair.Output.FlushAsync();

            Assert.True(flush.IsCompletedSuccessfully); // the SslStream encrypted it and the kernel took it: no wait
            Assert.False((await flush).IsCanceled);
            Assert.Equal(0, pair.Output.HeldBlocks);
            Assert.Equal(response, await ClientReceiveAsync(pair.ClientSsl, response.Length));
        }
    }

    [Fact]
    public async Task FlushAsync_ManyBlocksSmallSendBuffer_WaitsAndDeliversAllInOrder()
    {
        using TlsPair pair = await HandshakeAsync(serverSendBuffer: 16 * 1024);
        byte[] payload = LoopbackPair.Payload(2 * 1024 * 1024 + 77);
        // Odd-sized writes leave blocks partly filled: records of different lengths.
        for (int offset = 0; offset < payload.Length;)
        {
            int chunk = Math.Min(payload.Length - offset, 5000 + (offset % 7000));
            payload.AsSpan(offset, chunk).CopyTo(pair.Output.GetSpan(chunk));
            pair.Output.Advance(chunk);
            offset += chunk;
        }
        Assert.True(pair.Output.HeldBlocks > 1);

        ValueTask<FlushResult> flush = pair.Output.FlushAsync();
        Assert.False(flush.IsCompleted); // far more than the socket buffer: the SslStream's write waits for room
        Task<byte[]> received = ClientReceiveAsync(pair.ClientSsl, payload.Length);
        FlushResult result = await Within(flush);

        byte[] decrypted = await received;
        Assert.False(result.IsCanceled);
        Assert.True(payload.AsSpan().SequenceEqual(decrypted));
        Assert.Equal(0, pair.Output.HeldBlocks);
    }

    [Fact]
    public async Task Complete_WithUnflushedBytes_EncryptsAndSendsThem()
    {
        using TlsPair pair = await HandshakeAsync();
        "tail"u8.CopyTo(pair.Output.GetSpan(4));
        pair.Output.Advance(4);

        pair.Output.Complete();

        Assert.Equal("tail"u8.ToArray(), await ClientReceiveAsync(pair.ClientSsl, 4));
        Assert.Equal(0, pair.Output.HeldBlocks);
    }

    [Fact]
    public async Task FlushAsync_PeerResetsWhileWaiting_ThrowsIOExceptionAndReturnsTheBlocks()
    {
        using TlsPair pair = await HandshakeAsync(serverSendBuffer: 16 * 1024);
        byte[] payload = LoopbackPair.Payload(1024 * 1024);
        payload.CopyTo(pair.Output.GetSpan(payload.Length));
        pair.Output.Advance(payload.Length);
        ValueTask<FlushResult> flush = pair.Output.FlushAsync();
        Assert.False(flush.IsCompleted);

        pair.Client.Close(0); // RST while the flush waits for room

        await Assert.ThrowsAsync<IOException>(() => flush.AsTask().WaitAsync(s_timeout));
        Assert.Equal(0, pair.Output.HeldBlocks);
    }
}
