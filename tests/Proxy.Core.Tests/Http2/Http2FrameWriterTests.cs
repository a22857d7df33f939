using System.Buffers;
using System.IO.Pipelines;
using Proxy.Http2;

namespace Proxy.Core.Tests.Http2;

/// <summary>Every writer, read back with the reader.</summary>
public class Http2FrameWriterTests
{
    private static List<(Http2FrameHeader Header, byte[] Payload)> ReadAll(ReadOnlySequence<byte> buffer, uint maxFrameSize = 16_384)
    {
        List<(Http2FrameHeader, byte[])> frames = [];
        while (!buffer.IsEmpty)
        {
            Assert.Equal(Http2ReadStatus.Done, Http2FrameReader.TryReadFrame(buffer, maxFrameSize, out Http2FrameHeader header,
                out ReadOnlySequence<byte> payload, out SequencePosition consumed, out _));
            frames.Add((header, payload.ToArray()));
            buffer = buffer.Slice(consumed);
        }
        return frames;
    }

    private static (Http2FrameHeader Header, ReadOnlySequence<byte> Payload) Single(ArrayBufferWriter<byte> output)
    {
        var frames = ReadAll(new ReadOnlySequence<byte>(output.WrittenMemory));
        Assert.Single(frames);
        return (frames[0].Header, new ReadOnlySequence<byte>(frames[0].Payload));
    }

    [Fact]
    public void WriteData_Padded_ReadsBackData()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteData(output, 3, "hello"u8, endStream: true, padLength: 4);
        var (header, payload) = Single(output);
        Assert.Equal(new Http2FrameHeader(10, Http2FrameType.DATA, Http2Flags.END_STREAM | Http2Flags.PADDED, 3), header);
        Assert.False(Http2FrameReader.ReadData(header, payload, out ReadOnlySequence<byte> data).IsError);
        Assert.Equal("hello"u8.ToArray(), data.ToArray());
    }

    [Fact]
    public void WriteData_FromSequence_OneFrame()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteData(output, 1, Http1.Http1TestBuffers.Split("abcdef"u8.ToArray(), 2, 4), endStream: false);
        var (header, payload) = Single(output);
        Assert.Equal(6, header.Length);
        Assert.Equal("abcdef"u8.ToArray(), payload.ToArray());
    }

    [Fact]
    public void WriteHeaders_BlockLargerThanMaxFrameSize_SplitsIntoContinuations()
    {
        byte[] block = new byte[40_000];
        Random.Shared.NextBytes(block);
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteHeaders(output, 1, block, endStream: true, maxFrameSize: 16_384);
        var frames = ReadAll(new ReadOnlySequence<byte>(output.WrittenMemory));
        Assert.Equal(
            [
                new Http2FrameHeader(16_384, Http2FrameType.HEADERS, Http2Flags.END_STREAM, 1),
                new Http2FrameHeader(16_384, Http2FrameType.CONTINUATION, Http2Flags.None, 1),
                new Http2FrameHeader(7_232, Http2FrameType.CONTINUATION, Http2Flags.END_HEADERS, 1),
            ],
            frames.ConvertAll(f => f.Header));
        Assert.Equal(block, frames.SelectMany(f => f.Payload).ToArray());
    }

    [Fact]
    public void WriteHeaders_SmallBlock_OneFrameWithEndHeaders()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteHeaders(output, 7, [0x82, 0x84], endStream: false, maxFrameSize: 16_384);
        var (header, payload) = Single(output);
        Assert.Equal(new Http2FrameHeader(2, Http2FrameType.HEADERS, Http2Flags.END_HEADERS, 7), header);
        Assert.False(Http2FrameReader.ReadHeaders(header, payload, out ReadOnlySequence<byte> fragment).IsError);
        Assert.Equal([0x82, 0x84], fragment.ToArray());
    }

    [Fact]
    public void WritePushPromise_ReadsBackPromisedStream()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WritePushPromise(output, 1, 2, [0x82], maxFrameSize: 16_384);
        var (header, payload) = Single(output);
        Assert.True(header.HasFlag(Http2Flags.END_HEADERS));
        Assert.False(Http2FrameReader.ReadPushPromise(header, payload, out int promised, out ReadOnlySequence<byte> fragment).IsError);
        Assert.Equal(2, promised);
        Assert.Equal([0x82], fragment.ToArray());
    }

    [Fact]
    public void WriteContinuation_ReadsBackFragment()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteContinuation(output, 5, [1, 2, 3], endHeaders: true);
        var (header, payload) = Single(output);
        Assert.Equal(new Http2FrameHeader(3, Http2FrameType.CONTINUATION, Http2Flags.END_HEADERS, 5), header);
        Assert.False(Http2FrameReader.ReadContinuation(header, payload, out _).IsError);
    }

    [Fact]
    public void WritePriority_ReadsBackValid()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WritePriority(output, 5, 3, exclusive: true, 15);
        var (header, payload) = Single(output);
        Assert.Equal(Http2FrameType.PRIORITY, header.Type);
        Assert.False(Http2FrameReader.ReadPriority(header, payload).IsError);
    }

    [Fact]
    public void WriteRstStream_ReadsBackCode()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteRstStream(output, 9, Http2ErrorCode.CANCEL);
        var (header, payload) = Single(output);
        Assert.False(Http2FrameReader.ReadRstStream(header, payload, out Http2ErrorCode code).IsError);
        Assert.Equal(Http2ErrorCode.CANCEL, code);
        Assert.Equal(9, header.StreamId);
    }

    [Fact]
    public void WriteSettings_ReadsBackValues()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteSettings(output,
        [
            new(Http2SettingsParameter.SETTINGS_MAX_CONCURRENT_STREAMS, 100),
            new(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20),
            new(Http2SettingsParameter.SETTINGS_ENABLE_PUSH, 0),
        ]);
        var (header, payload) = Single(output);
        Assert.Equal(18, header.Length);
        Http2Settings settings = Http2Settings.Default;
        Assert.False(Http2FrameReader.ReadSettings(header, payload, ref settings).IsError);
        Assert.Equal(100u, settings.MaxConcurrentStreams);
        Assert.Equal(1u << 20, settings.InitialWindowSize);
        Assert.False(settings.EnablePush);
    }

    [Fact]
    public void WriteSettingsAck_EmptyAck()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteSettingsAck(output);
        var (header, _) = Single(output);
        Assert.Equal(new Http2FrameHeader(0, Http2FrameType.SETTINGS, Http2Flags.ACK, 0), header);
    }

    [Fact]
    public void WritePing_ReadsBackData()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WritePing(output, 0xDEADBEEF_01020304, ack: true);
        var (header, payload) = Single(output);
        Assert.True(header.HasFlag(Http2Flags.ACK));
        Assert.False(Http2FrameReader.ReadPing(header, payload, out ulong data).IsError);
        Assert.Equal(0xDEADBEEF_01020304ul, data);
    }

    [Fact]
    public void WriteGoAway_ReadsBackFields()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteGoAway(output, 41, Http2ErrorCode.PROTOCOL_ERROR, "bad frame"u8);
        var (header, payload) = Single(output);
        Assert.False(Http2FrameReader.ReadGoAway(header, payload, out int last, out Http2ErrorCode code, out ReadOnlySequence<byte> debug).IsError);
        Assert.Equal(41, last);
        Assert.Equal(Http2ErrorCode.PROTOCOL_ERROR, code);
        Assert.Equal("bad frame"u8.ToArray(), debug.ToArray());
    }

    [Fact]
    public void WriteWindowUpdate_ReadsBackIncrement()
    {
        ArrayBufferWriter<byte> output = new();
        Http2FrameWriter.WriteWindowUpdate(output, 0, int.MaxValue);
        var (header, payload) = Single(output);
        Assert.False(Http2FrameReader.ReadWindowUpdate(header, payload, out int increment).IsError);
        Assert.Equal(int.MaxValue, increment);
    }

    [Fact]
    public void WriteWindowUpdate_ZeroIncrement_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Http2FrameWriter.WriteWindowUpdate(new byte[13], 1, 0));
    }

    [Fact]
    public async Task Write_ToPipeWriter_FramesArriveInOrder()
    {
        Pipe pipe = new();
        Http2FrameWriter.WriteSettings(pipe.Writer, [new(Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE, 32_768)]);
        Http2FrameWriter.WritePing(pipe.Writer, 1, ack: false);
        Http2FrameWriter.WriteGoAway(pipe.Writer, 0, Http2ErrorCode.NO_ERROR, default);
        await pipe.Writer.FlushAsync();
        ReadResult result = await pipe.Reader.ReadAsync();
        var frames = ReadAll(result.Buffer);
        Assert.Equal([Http2FrameType.SETTINGS, Http2FrameType.PING, Http2FrameType.GOAWAY], frames.ConvertAll(f => f.Header.Type));
        pipe.Reader.AdvanceTo(result.Buffer.End);
    }
}
