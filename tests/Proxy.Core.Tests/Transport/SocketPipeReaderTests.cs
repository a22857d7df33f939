using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.Transport;
using Xunit;

namespace Proxy.Core.Tests.Transport;

/// <summary>The adaptive client socket reader over real loopback sockets.</summary>
public sealed class SocketPipeReaderTests : IDisposable
{
    private readonly Socket _client;
    private readonly Socket _server;
    private readonly SocketPipeReader _reader;

    public SocketPipeReaderTests()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        _client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _client.Connect(listener.LocalEndPoint!);
        _server = listener.Accept();
        _reader = new SocketPipeReader(_server, BlockMemoryPool.Small);
    }

    public void Dispose()
    {
        _reader.Complete();
        _client.Dispose();
        _server.Dispose();
    }

    private void Send(string text) => _client.Send(Encoding.ASCII.GetBytes(text));

    private static async Task<ReadResult> WithTimeout(ValueTask<ReadResult> read)
    {
        Task<ReadResult> task = read.AsTask();
        Task winner = await Task.WhenAny(task, Task.Delay(TimeSpan.FromSeconds(10)));
        Assert.True(winner == task, "read did not complete within 10 s");
        return await task;
    }

    [Fact]
    public async Task Read_DataSent_ReturnsIt()
    {
        Send("hello");
        ReadResult result = await WithTimeout(_reader.ReadAsync());
        Assert.Equal("hello", Encoding.ASCII.GetString(result.Buffer.ToArray()));
        Assert.False(result.IsCanceled);
        Assert.False(result.IsCompleted);
        _reader.AdvanceTo(result.Buffer.End);
    }

    [Fact]
    public async Task Read_PartlyConsumed_KeepsTheRestAndAppendsNewData()
    {
        Send("abcdef");
        ReadResult first = await WithTimeout(_reader.ReadAsync());
        _reader.AdvanceTo(first.Buffer.GetPosition(2), first.Buffer.End);
        Send("gh");
        ReadResult second = await WithTimeout(_reader.ReadAsync());
        string text = Encoding.ASCII.GetString(second.Buffer.ToArray());
        // The second receive may or may not have landed in the same block; the bytes must be contiguous either way.
        while (text.Length < 6)
        {
            _reader.AdvanceTo(second.Buffer.Start, second.Buffer.End);
            second = await WithTimeout(_reader.ReadAsync());
            text = Encoding.ASCII.GetString(second.Buffer.ToArray());
        }
        Assert.Equal("cdefgh", text);
    }

    [Fact]
    public async Task Read_NothingConsumedPastABlock_SpansSeveralSegments()
    {
        byte[] payload = new byte[3 * BlockMemoryPool.Small.BlockSize + 123];
        for (int i = 0; i < payload.Length; i++)
        {
            payload[i] = (byte)(i * 7);
        }
        _client.Send(payload);
        ReadResult result = await WithTimeout(_reader.ReadAsync());
        while (result.Buffer.Length < payload.Length)
        {
            _reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            result = await WithTimeout(_reader.ReadAsync());
        }
        Assert.False(result.Buffer.IsSingleSegment);
        Assert.Equal(payload, result.Buffer.ToArray());
        _reader.AdvanceTo(result.Buffer.End);
    }

    [Fact]
    public async Task Read_UnexaminedDataBuffered_ReturnsWithoutReceiving()
    {
        Send("12345");
        ReadResult first = await WithTimeout(_reader.ReadAsync());
        _reader.AdvanceTo(first.Buffer.Start, first.Buffer.GetPosition(2));
        ValueTask<ReadResult> again = _reader.ReadAsync();
        Assert.True(again.IsCompleted);
        ReadResult result = await again;
        Assert.Equal(5, result.Buffer.Length);
        _reader.AdvanceTo(result.Buffer.End);
    }

    [Fact]
    public async Task CancelPendingRead_WhileWaiting_ReturnsCanceledThenReadsOn()
    {
        ValueTask<ReadResult> pending = _reader.ReadAsync();
        Assert.False(pending.IsCompleted);
        _reader.CancelPendingRead();
        ReadResult cancelled = await WithTimeout(pending);
        Assert.True(cancelled.IsCanceled);
        Assert.True(cancelled.Buffer.IsEmpty);
        _reader.AdvanceTo(cancelled.Buffer.Start, cancelled.Buffer.End);

        Send("after");
        ReadResult result = await WithTimeout(_reader.ReadAsync());
        Assert.False(result.IsCanceled);
        Assert.Equal("after", Encoding.ASCII.GetString(result.Buffer.ToArray()));
        _reader.AdvanceTo(result.Buffer.End);
    }

    [Fact]
    public async Task CancelPendingRead_WithUnexaminedData_DeliversDataFirstThenTheCancellation()
    {
        Send("data");
        ReadResult first = await WithTimeout(_reader.ReadAsync());
        _reader.AdvanceTo(first.Buffer.Start, first.Buffer.Start); // nothing examined
        _reader.CancelPendingRead();
        ReadResult second = await WithTimeout(_reader.ReadAsync());
        Assert.False(second.IsCanceled);
        Assert.Equal(4, second.Buffer.Length);
        _reader.AdvanceTo(second.Buffer.Start, second.Buffer.End);
        ReadResult third = await WithTimeout(_reader.ReadAsync());
        Assert.True(third.IsCanceled);
        Assert.Equal(4, third.Buffer.Length);
        _reader.AdvanceTo(third.Buffer.End);
    }

    [Fact]
    public async Task ParkIfIdle_AfterASecondOfWaiting_ReleasesTheBlockAndTheReadStillCompletes()
    {
        ValueTask<ReadResult> pending = _reader.ReadAsync();
        Assert.False(pending.IsCompleted);
        Assert.True(_reader.HoldsBlockWhileWaiting);

        _reader.ParkIfIdle(Environment.TickCount64); // too early: nothing happens
        Assert.True(_reader.HoldsBlockWhileWaiting);

        _reader.ParkIfIdle(Environment.TickCount64 + SocketPipeReader.ParkAfterMilliseconds + 10);
        DateTime until = DateTime.UtcNow.AddSeconds(5);
        while (_reader.HoldsBlockWhileWaiting && DateTime.UtcNow < until)
        {
            await Task.Delay(10);
        }
        Assert.False(_reader.HoldsBlockWhileWaiting);
        Assert.False(pending.IsCompleted); // parking is invisible to the caller

        Send("wake");
        ReadResult result = await WithTimeout(pending);
        Assert.False(result.IsCanceled);
        Assert.Equal("wake", Encoding.ASCII.GetString(result.Buffer.ToArray()));
        _reader.AdvanceTo(result.Buffer.End);

    }

    [Fact]
    public async Task Read_AfterTheFirstRequest_WaitsWithoutABlockUntilWaitsAreShort()
    {
        Send("first");
        ReadResult first = await WithTimeout(_reader.ReadAsync());
        _reader.AdvanceTo(first.Buffer.End);

        // Cold: a connection that made one request and went quiet holds no block.
        ValueTask<ReadResult> quiet = _reader.ReadAsync();
        Assert.False(quiet.IsCompleted);
        Assert.False(_reader.HoldsBlockWhileWaiting);
        Send("q");
        _reader.AdvanceTo((await WithTimeout(quiet)).Buffer.End);

        // Waits answered within milliseconds make it hot: it then receives straight into a block. Answered at
        // once here, so at most a loaded machine's scheduling delay stands between the wait and its answer.
        bool hot = false;
        for (int i = 0; i < 50 && !hot; i++)
        {
            ValueTask<ReadResult> wait = _reader.ReadAsync();
            hot = _reader.HoldsBlockWhileWaiting;
            Send("x");
            _reader.AdvanceTo((await WithTimeout(wait)).Buffer.End);
        }
        Assert.True(hot);
    }

    [Fact]
    public async Task CancelPendingRead_WhileParked_ReturnsCanceled()
    {
        ValueTask<ReadResult> pending = _reader.ReadAsync();
        _reader.ParkIfIdle(Environment.TickCount64 + SocketPipeReader.ParkAfterMilliseconds + 10);
        DateTime until = DateTime.UtcNow.AddSeconds(5);
        while (_reader.HoldsBlockWhileWaiting && DateTime.UtcNow < until)
        {
            await Task.Delay(10);
        }
        _reader.CancelPendingRead();
        ReadResult result = await WithTimeout(pending);
        Assert.True(result.IsCanceled);
        _reader.AdvanceTo(result.Buffer.End);
    }

    [Fact]
    public async Task Read_PeerCloses_ReturnsCompleted()
    {
        Send("last");
        _client.Shutdown(SocketShutdown.Send);
        ReadResult result = await WithTimeout(_reader.ReadAsync());
        while (!result.IsCompleted)
        {
            _reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            result = await WithTimeout(_reader.ReadAsync());
        }
        Assert.Equal("last", Encoding.ASCII.GetString(result.Buffer.ToArray()));
        _reader.AdvanceTo(result.Buffer.End);
    }

    [Fact]
    public async Task Read_PeerResets_Throws()
    {
        ValueTask<ReadResult> pending = _reader.ReadAsync();
        _client.LingerState = new LingerOption(true, 0);
        _client.Close();
        await Assert.ThrowsAnyAsync<SocketException>(async () => await WithTimeout(pending));
    }

    [Fact]
    public void ReadAsync_CancellableToken_IsRefused()
    {
        using var cts = new CancellationTokenSource();
        Assert.Throws<NotSupportedException>(() => { _ = _reader.ReadAsync(cts.Token); });
    }
}
