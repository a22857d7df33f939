using System.Buffers;
using System.Buffers.Binary;
using Proxy.Http2;
using static Proxy.Core.Tests.Http1.Http1TestBuffers;

namespace Proxy.Core.Tests.Http2;

public class Http2FrameReaderTests
{
    private const uint MaxFrameSize = 16_384;

    /// <summary>A raw frame: header fields as given (no validation), then the payload.</summary>
    internal static byte[] Frame(Http2FrameType type, Http2Flags flags, int streamId, params byte[] payload)
        => Frame(payload.Length, type, flags, (uint)streamId, payload);

    internal static byte[] Frame(int length, Http2FrameType type, Http2Flags flags, uint streamId, byte[] payload)
    {
        byte[] frame = new byte[9 + payload.Length];
        frame[0] = (byte)(length >> 16);
        frame[1] = (byte)(length >> 8);
        frame[2] = (byte)length;
        frame[3] = (byte)type;
        frame[4] = (byte)flags;
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(5), streamId);
        payload.CopyTo(frame, 9);
        return frame;
    }

    private static (Http2FrameHeader Header, ReadOnlySequence<byte> Payload) Read(byte[] frame)
    {
        Http2ReadStatus status = Http2FrameReader.TryReadFrame(new ReadOnlySequence<byte>(frame), MaxFrameSize,
            out Http2FrameHeader header, out ReadOnlySequence<byte> payload, out _, out Http2FrameError error);
        Assert.Equal(Http2ReadStatus.Done, status);
        Assert.False(error.IsError);
        return (header, payload);
    }

    private static byte[] U32(uint value)
    {
        byte[] bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] Setting(Http2SettingsParameter parameter, uint value)
    {
        byte[] bytes = new byte[6];
        BinaryPrimitives.WriteUInt16BigEndian(bytes, (ushort)parameter);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(2), value);
        return bytes;
    }

    private static void AssertConnectionError(Http2FrameError error, Http2ErrorCode code)
    {
        Assert.Equal(code, error.Code);
        Assert.True(error.IsConnectionError);
    }

    private static void AssertStreamError(Http2FrameError error, Http2ErrorCode code)
    {
        Assert.Equal(code, error.Code);
        Assert.True(error.IsStreamError);
    }

    // ---- frame header -------------------------------------------------------------------------------------

    [Fact]
    public void TryReadFrameHeader_EveryPrefix_NeedsMoreData()
    {
        byte[] frame = Frame(Http2FrameType.PING, Http2Flags.None, 0, new byte[8]);
        for (int length = 0; length < 9; length++)
        {
            Assert.Equal(Http2ReadStatus.NeedMoreData, Http2FrameReader.TryReadFrameHeader(
                new ReadOnlySequence<byte>(frame, 0, length), MaxFrameSize, out _, out _));
        }
    }

    [Fact]
    public void TryReadFrameHeader_OneOctetPerSegment_ReadsFields()
    {
        byte[] frame = Frame(0x123, Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, 0x8000_0005, []);
        Assert.Equal(Http2ReadStatus.Done, Http2FrameReader.TryReadFrameHeader(BytePerSegment(frame), MaxFrameSize,
            out Http2FrameHeader header, out _));
        // The reserved bit is ignored (section 4.1).
        Assert.Equal(new Http2FrameHeader(0x123, Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, 5), header);
    }

    [Fact]
    public void TryReadFrameHeader_LengthAboveMaxFrameSize_FrameSizeError()
    {
        byte[] frame = Frame((int)MaxFrameSize + 1, Http2FrameType.DATA, Http2Flags.None, 1, []);
        Assert.Equal(Http2ReadStatus.Error, Http2FrameReader.TryReadFrameHeader(new ReadOnlySequence<byte>(frame),
            MaxFrameSize, out _, out Http2FrameError error));
        AssertConnectionError(error, Http2ErrorCode.FRAME_SIZE_ERROR);
        byte[] atLimit = Frame((int)MaxFrameSize, Http2FrameType.DATA, Http2Flags.None, 1, []);
        Assert.Equal(Http2ReadStatus.Done, Http2FrameReader.TryReadFrameHeader(new ReadOnlySequence<byte>(atLimit),
            MaxFrameSize, out _, out _));
    }

    [Fact]
    public void TryReadFrame_PayloadIncomplete_NeedsMoreAndConsumesNothing()
    {
        byte[] frame = Frame(Http2FrameType.DATA, Http2Flags.None, 1, 1, 2, 3, 4);
        ReadOnlySequence<byte> partial = new(frame, 0, frame.Length - 1);
        Assert.Equal(Http2ReadStatus.NeedMoreData, Http2FrameReader.TryReadFrame(partial, MaxFrameSize, out _, out _,
            out SequencePosition consumed, out _));
        Assert.Equal(0, Offset(partial, consumed));
    }

    [Fact]
    public void TryReadFrame_TwoFrames_ConsumesFirstOnly()
    {
        byte[] both = [.. Frame(Http2FrameType.DATA, Http2Flags.None, 1, 7, 8), .. Frame(Http2FrameType.PING, Http2Flags.None, 0, new byte[8])];
        ReadOnlySequence<byte> buffer = Split(both, 5, 12);
        Assert.Equal(Http2ReadStatus.Done, Http2FrameReader.TryReadFrame(buffer, MaxFrameSize, out Http2FrameHeader header,
            out ReadOnlySequence<byte> payload, out SequencePosition consumed, out _));
        Assert.Equal(Http2FrameType.DATA, header.Type);
        Assert.Equal([7, 8], payload.ToArray());
        Assert.Equal(11, Offset(buffer, consumed));
    }

    // ---- DATA ---------------------------------------------------------------------------------------------

    [Fact]
    public void ReadData_Padded_StripsPadding()
    {
        var (header, payload) = Read(Frame(Http2FrameType.DATA, Http2Flags.PADDED, 1, 2, 0xA, 0xB, 0, 0));
        Assert.False(Http2FrameReader.ReadData(header, payload, out ReadOnlySequence<byte> data).IsError);
        Assert.Equal([0xA, 0xB], data.ToArray());
    }

    [Fact]
    public void ReadData_PaddingFillsPayload_EmptyData()
    {
        var (header, payload) = Read(Frame(Http2FrameType.DATA, Http2Flags.PADDED, 1, 3, 0, 0, 0));
        Assert.False(Http2FrameReader.ReadData(header, payload, out ReadOnlySequence<byte> data).IsError);
        Assert.True(data.IsEmpty);
    }

    [Fact]
    public void ReadData_PaddingAsLongAsPayload_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.DATA, Http2Flags.PADDED, 1, 3, 0, 0));
        AssertConnectionError(Http2FrameReader.ReadData(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Fact]
    public void ReadData_PaddedWithoutPadLength_FrameSizeError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.DATA, Http2Flags.PADDED, 1));
        AssertConnectionError(Http2FrameReader.ReadData(header, payload, out _), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadData_StreamZero_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.DATA, Http2Flags.None, 0, 1));
        AssertConnectionError(Http2FrameReader.ReadData(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    // ---- HEADERS ------------------------------------------------------------------------------------------

    [Fact]
    public void ReadHeaders_PaddedWithPriority_ReturnsFragmentOnly()
    {
        byte[] body = [1, .. U32(0x8000_0003), 16, 0x82, 0x84, 0];
        var (header, payload) = Read(Frame(Http2FrameType.HEADERS, Http2Flags.PADDED | Http2Flags.PRIORITY | Http2Flags.END_HEADERS, 5, body));
        Assert.False(Http2FrameReader.ReadHeaders(header, payload, out ReadOnlySequence<byte> fragment).IsError);
        Assert.Equal([0x82, 0x84], fragment.ToArray());
    }

    [Fact]
    public void ReadHeaders_PriorityFieldsMissing_FrameSizeError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.HEADERS, Http2Flags.PRIORITY, 5, 0, 0, 0, 1));
        AssertConnectionError(Http2FrameReader.ReadHeaders(header, payload, out _), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadHeaders_PaddingBeyondFragment_ProtocolError()
    {
        byte[] body = [3, .. U32(0), 16, 0x82, 0];
        var (header, payload) = Read(Frame(Http2FrameType.HEADERS, Http2Flags.PADDED | Http2Flags.PRIORITY, 5, body));
        AssertConnectionError(Http2FrameReader.ReadHeaders(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Fact]
    public void ReadHeaders_DependsOnItself_StreamErrorWithFragment()
    {
        byte[] body = [.. U32(5), 16, 0x82];
        var (header, payload) = Read(Frame(Http2FrameType.HEADERS, Http2Flags.PRIORITY, 5, body));
        AssertStreamError(Http2FrameReader.ReadHeaders(header, payload, out ReadOnlySequence<byte> fragment), Http2ErrorCode.PROTOCOL_ERROR);
        Assert.Equal([0x82], fragment.ToArray());
    }

    [Fact]
    public void ReadHeaders_StreamZero_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, 0, 0x82));
        AssertConnectionError(Http2FrameReader.ReadHeaders(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    // ---- PRIORITY -----------------------------------------------------------------------------------------

    [Fact]
    public void ReadPriority_Valid_Ignored()
    {
        var (header, payload) = Read(Frame(Http2FrameType.PRIORITY, Http2Flags.None, 3, [.. U32(1), 200]));
        Assert.False(Http2FrameReader.ReadPriority(header, payload).IsError);
    }

    [Theory]
    [InlineData(4)]
    [InlineData(6)]
    public void ReadPriority_LengthNotFive_StreamFrameSizeError(int length)
    {
        var (header, payload) = Read(Frame(Http2FrameType.PRIORITY, Http2Flags.None, 3, new byte[length]));
        AssertStreamError(Http2FrameReader.ReadPriority(header, payload), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadPriority_StreamZero_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.PRIORITY, Http2Flags.None, 0, new byte[5]));
        AssertConnectionError(Http2FrameReader.ReadPriority(header, payload), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Fact]
    public void ReadPriority_DependsOnItself_StreamProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.PRIORITY, Http2Flags.None, 3, [.. U32(3), 1]));
        AssertStreamError(Http2FrameReader.ReadPriority(header, payload), Http2ErrorCode.PROTOCOL_ERROR);
    }

    // ---- RST_STREAM ---------------------------------------------------------------------------------------

    [Fact]
    public void ReadRstStream_UnknownCode_KeptAsIs()
    {
        var (header, payload) = Read(Frame(Http2FrameType.RST_STREAM, Http2Flags.None, 1, U32(0xFF)));
        Assert.False(Http2FrameReader.ReadRstStream(header, payload, out Http2ErrorCode code).IsError);
        Assert.Equal((Http2ErrorCode)0xFF, code);
    }

    [Theory]
    [InlineData(3)]
    [InlineData(5)]
    public void ReadRstStream_LengthNotFour_FrameSizeError(int length)
    {
        var (header, payload) = Read(Frame(Http2FrameType.RST_STREAM, Http2Flags.None, 1, new byte[length]));
        AssertConnectionError(Http2FrameReader.ReadRstStream(header, payload, out _), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadRstStream_StreamZero_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.RST_STREAM, Http2Flags.None, 0, U32(8)));
        AssertConnectionError(Http2FrameReader.ReadRstStream(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    // ---- SETTINGS -----------------------------------------------------------------------------------------

    [Fact]
    public void ReadSettings_KnownAndUnknown_AppliesKnownIgnoresUnknown()
    {
        byte[] body =
        [
            .. Setting(Http2SettingsParameter.SETTINGS_HEADER_TABLE_SIZE, 0),
            .. Setting(Http2SettingsParameter.SETTINGS_ENABLE_PUSH, 0),
            .. Setting(Http2SettingsParameter.SETTINGS_MAX_CONCURRENT_STREAMS, 100),
            .. Setting(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, int.MaxValue),
            .. Setting(Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE, 16_777_215),
            .. Setting(Http2SettingsParameter.SETTINGS_MAX_HEADER_LIST_SIZE, 8192),
            .. Setting((Http2SettingsParameter)0x4242, 7),
        ];
        var (header, payload) = Read(Frame(Http2FrameType.SETTINGS, Http2Flags.None, 0, body));
        Http2Settings settings = Http2Settings.Default;
        Assert.False(Http2FrameReader.ReadSettings(header, payload, ref settings).IsError);
        Assert.Equal(0u, settings.HeaderTableSize);
        Assert.False(settings.EnablePush);
        Assert.Equal(100u, settings.MaxConcurrentStreams);
        Assert.Equal((uint)int.MaxValue, settings.InitialWindowSize);
        Assert.Equal(16_777_215u, settings.MaxFrameSize);
        Assert.Equal(8192u, settings.MaxHeaderListSize);
    }

    [Theory]
    [InlineData((ushort)Http2SettingsParameter.SETTINGS_ENABLE_PUSH, 2u, (uint)Http2ErrorCode.PROTOCOL_ERROR)]
    [InlineData((ushort)Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, 0x8000_0000u, (uint)Http2ErrorCode.FLOW_CONTROL_ERROR)]
    [InlineData((ushort)Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE, 16_383u, (uint)Http2ErrorCode.PROTOCOL_ERROR)]
    [InlineData((ushort)Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE, 16_777_216u, (uint)Http2ErrorCode.PROTOCOL_ERROR)]
    [InlineData((ushort)Http2SettingsParameter.SETTINGS_ENABLE_CONNECT_PROTOCOL, 2u, (uint)Http2ErrorCode.PROTOCOL_ERROR)]
    public void ReadSettings_InvalidValue_ErrorAndNothingApplied(ushort parameter, uint value, uint code)
    {
        byte[] body = [.. Setting(Http2SettingsParameter.SETTINGS_MAX_CONCURRENT_STREAMS, 1), .. Setting((Http2SettingsParameter)parameter, value)];
        var (header, payload) = Read(Frame(Http2FrameType.SETTINGS, Http2Flags.None, 0, body));
        Http2Settings settings = Http2Settings.Default;
        AssertConnectionError(Http2FrameReader.ReadSettings(header, payload, ref settings), (Http2ErrorCode)code);
        Assert.Equal(uint.MaxValue, settings.MaxConcurrentStreams);
    }

    [Fact]
    public void ReadSettings_LengthNotMultipleOfSix_FrameSizeError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.SETTINGS, Http2Flags.None, 0, new byte[7]));
        Http2Settings settings = Http2Settings.Default;
        AssertConnectionError(Http2FrameReader.ReadSettings(header, payload, ref settings), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadSettings_AckWithPayload_FrameSizeError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.SETTINGS, Http2Flags.ACK, 0, Setting(Http2SettingsParameter.SETTINGS_ENABLE_PUSH, 0)));
        Http2Settings settings = Http2Settings.Default;
        AssertConnectionError(Http2FrameReader.ReadSettings(header, payload, ref settings), Http2ErrorCode.FRAME_SIZE_ERROR);
        Assert.True(settings.EnablePush);
    }

    [Fact]
    public void ReadSettings_EmptyAck_Accepted()
    {
        var (header, payload) = Read(Frame(Http2FrameType.SETTINGS, Http2Flags.ACK, 0));
        Http2Settings settings = Http2Settings.Default;
        Assert.False(Http2FrameReader.ReadSettings(header, payload, ref settings).IsError);
    }

    [Fact]
    public void ReadSettings_NonZeroStream_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.SETTINGS, Http2Flags.None, 1));
        Http2Settings settings = Http2Settings.Default;
        AssertConnectionError(Http2FrameReader.ReadSettings(header, payload, ref settings), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Fact]
    public void ReadSettings_SplitAcrossSegments_Applied()
    {
        byte[] frame = Frame(Http2FrameType.SETTINGS, Http2Flags.None, 0,
            [.. Setting(Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE, 20_000), .. Setting(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, 1)]);
        Assert.Equal(Http2ReadStatus.Done, Http2FrameReader.TryReadFrame(BytePerSegment(frame), MaxFrameSize,
            out Http2FrameHeader header, out ReadOnlySequence<byte> payload, out _, out _));
        Http2Settings settings = Http2Settings.Default;
        Assert.False(Http2FrameReader.ReadSettings(header, payload, ref settings).IsError);
        Assert.Equal(20_000u, settings.MaxFrameSize);
        Assert.Equal(1u, settings.InitialWindowSize);
    }

    // ---- PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION ------------------------------------------

    [Fact]
    public void ReadPushPromise_Padded_ReturnsPromisedIdAndFragment()
    {
        byte[] body = [1, .. U32(0x8000_0004), 0x82, 0];
        var (header, payload) = Read(Frame(Http2FrameType.PUSH_PROMISE, Http2Flags.PADDED | Http2Flags.END_HEADERS, 1, body));
        Assert.False(Http2FrameReader.ReadPushPromise(header, payload, out int promised, out ReadOnlySequence<byte> fragment).IsError);
        Assert.Equal(4, promised);
        Assert.Equal([0x82], fragment.ToArray());
    }

    [Fact]
    public void ReadPushPromise_TooShort_FrameSizeError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.PUSH_PROMISE, Http2Flags.None, 1, 0, 0, 2));
        AssertConnectionError(Http2FrameReader.ReadPushPromise(header, payload, out _, out _), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadPing_Valid_ReturnsOpaqueData()
    {
        var (header, payload) = Read(Frame(Http2FrameType.PING, Http2Flags.ACK, 0, 1, 2, 3, 4, 5, 6, 7, 8));
        Assert.False(Http2FrameReader.ReadPing(header, payload, out ulong data).IsError);
        Assert.Equal(0x0102030405060708ul, data);
    }

    [Theory]
    [InlineData(7)]
    [InlineData(9)]
    public void ReadPing_LengthNotEight_FrameSizeError(int length)
    {
        var (header, payload) = Read(Frame(Http2FrameType.PING, Http2Flags.None, 0, new byte[length]));
        AssertConnectionError(Http2FrameReader.ReadPing(header, payload, out _), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadPing_NonZeroStream_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.PING, Http2Flags.None, 1, new byte[8]));
        AssertConnectionError(Http2FrameReader.ReadPing(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Fact]
    public void ReadGoAway_WithDebugData_ReturnsFields()
    {
        var (header, payload) = Read(Frame(Http2FrameType.GOAWAY, Http2Flags.None, 0, [.. U32(0x8000_0007), .. U32(11), (byte)'h', (byte)'i']));
        Assert.False(Http2FrameReader.ReadGoAway(header, payload, out int last, out Http2ErrorCode code, out ReadOnlySequence<byte> debug).IsError);
        Assert.Equal(7, last);
        Assert.Equal(Http2ErrorCode.ENHANCE_YOUR_CALM, code);
        Assert.Equal("hi"u8.ToArray(), debug.ToArray());
    }

    [Fact]
    public void ReadGoAway_TooShort_FrameSizeError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.GOAWAY, Http2Flags.None, 0, new byte[7]));
        AssertConnectionError(Http2FrameReader.ReadGoAway(header, payload, out _, out _, out _), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadGoAway_NonZeroStream_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.GOAWAY, Http2Flags.None, 3, new byte[8]));
        AssertConnectionError(Http2FrameReader.ReadGoAway(header, payload, out _, out _, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Fact]
    public void ReadWindowUpdate_ReservedBitSet_Ignored()
    {
        var (header, payload) = Read(Frame(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, 0, U32(0x8000_0001)));
        Assert.False(Http2FrameReader.ReadWindowUpdate(header, payload, out int increment).IsError);
        Assert.Equal(1, increment);
    }

    [Fact]
    public void ReadWindowUpdate_ZeroOnConnection_ConnectionProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, 0, U32(0)));
        AssertConnectionError(Http2FrameReader.ReadWindowUpdate(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Fact]
    public void ReadWindowUpdate_ZeroOnStream_StreamProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, 3, U32(0)));
        AssertStreamError(Http2FrameReader.ReadWindowUpdate(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }

    [Theory]
    [InlineData(3)]
    [InlineData(5)]
    public void ReadWindowUpdate_LengthNotFour_FrameSizeError(int length)
    {
        var (header, payload) = Read(Frame(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, 1, [.. new byte[length - 1], 1]));
        AssertConnectionError(Http2FrameReader.ReadWindowUpdate(header, payload, out _), Http2ErrorCode.FRAME_SIZE_ERROR);
    }

    [Fact]
    public void ReadContinuation_StreamZero_ProtocolError()
    {
        var (header, payload) = Read(Frame(Http2FrameType.CONTINUATION, Http2Flags.END_HEADERS, 0, 0x82));
        AssertConnectionError(Http2FrameReader.ReadContinuation(header, payload, out _), Http2ErrorCode.PROTOCOL_ERROR);
    }
}
