using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;

namespace Proxy.Http2;

/// <summary>
/// Writes frames (RFC 9113 section 6) into a span or an <see cref="IBufferWriter{T}"/> (a PipeWriter). Span
/// overloads return the octets written and need a destination at least that large. Arguments are the
/// connection's own values, so a bad one is a bug and throws; nothing a peer sends reaches an exception here.
/// </summary>
internal static class Http2FrameWriter
{
    public const int MaxPayloadLength = 16_777_215; // 2^24-1, the Length field
    public const int PingFrameLength = Http2FrameHeader.Size + 8;
    public const int RstStreamFrameLength = Http2FrameHeader.Size + 4;
    public const int WindowUpdateFrameLength = Http2FrameHeader.Size + 4;
    public const int PriorityFrameLength = Http2FrameHeader.Size + 5;

    /// <summary>The 9-octet header (section 4.1); the reserved bit is sent as 0.</summary>
    public static void WriteFrameHeader(Span<byte> destination, int length, Http2FrameType type, Http2Flags flags, int streamId)
    {
        if ((uint)length > MaxPayloadLength)
        {
            ThrowArgument(nameof(length));
        }
        if (streamId < 0)
        {
            ThrowArgument(nameof(streamId));
        }
        destination[0] = (byte)(length >> 16);
        destination[1] = (byte)(length >> 8);
        destination[2] = (byte)length;
        destination[3] = (byte)type;
        destination[4] = (byte)flags;
        BinaryPrimitives.WriteUInt32BigEndian(destination[5..], (uint)streamId);
    }

    /// <summary>DATA (section 6.1); with <paramref name="padLength"/> &gt; 0 the frame is PADDED with zeros.</summary>
    public static int WriteData(Span<byte> destination, int streamId, ReadOnlySpan<byte> data, bool endStream, int padLength = 0)
    {
        RequireStream(streamId);
        if ((uint)padLength > byte.MaxValue)
        {
            ThrowArgument(nameof(padLength));
        }
        Http2Flags flags = endStream ? Http2Flags.END_STREAM : Http2Flags.None;
        int offset = Http2FrameHeader.Size;
        int length = data.Length;
        if (padLength > 0)
        {
            flags |= Http2Flags.PADDED;
            length += 1 + padLength;
            destination[offset++] = (byte)padLength;
        }
        WriteFrameHeader(destination, length, Http2FrameType.DATA, flags, streamId);
        data.CopyTo(destination[offset..]);
        offset += data.Length;
        destination.Slice(offset, padLength).Clear();
        return offset + padLength;
    }

    public static void WriteData(IBufferWriter<byte> output, int streamId, ReadOnlySpan<byte> data, bool endStream, int padLength = 0)
    {
        Span<byte> span = output.GetSpan(Http2FrameHeader.Size + 1 + data.Length + padLength);
        output.Advance(WriteData(span, streamId, data, endStream, padLength));
    }

    /// <summary>DATA from a body buffer: one frame, copied segment by segment (no padding).</summary>
    public static void WriteData(IBufferWriter<byte> output, int streamId, in ReadOnlySequence<byte> data, bool endStream)
    {
        RequireStream(streamId);
        Span<byte> header = output.GetSpan(Http2FrameHeader.Size);
        WriteFrameHeader(header, checked((int)data.Length), Http2FrameType.DATA,
            endStream ? Http2Flags.END_STREAM : Http2Flags.None, streamId);
        output.Advance(Http2FrameHeader.Size);
        foreach (ReadOnlyMemory<byte> segment in data)
        {
            output.Write(segment.Span);
        }
    }

    /// <summary>
    /// HEADERS (section 6.2) followed by as many CONTINUATION frames (section 6.10) as the block needs with
    /// frames of at most <paramref name="maxFrameSize"/> (the peer's SETTINGS_MAX_FRAME_SIZE). END_HEADERS goes
    /// on the last frame; END_STREAM on the HEADERS frame.
    /// </summary>
    public static void WriteHeaders(IBufferWriter<byte> output, int streamId, ReadOnlySpan<byte> headerBlock,
        bool endStream, int maxFrameSize)
    {
        RequireStream(streamId);
        int first = Math.Min(headerBlock.Length, maxFrameSize);
        Http2Flags flags = (endStream ? Http2Flags.END_STREAM : Http2Flags.None)
            | (first == headerBlock.Length ? Http2Flags.END_HEADERS : Http2Flags.None);
        WriteFrame(output, Http2FrameType.HEADERS, flags, streamId, headerBlock[..first]);
        WriteContinuations(output, streamId, headerBlock[first..], maxFrameSize);
    }

    /// <summary>PUSH_PROMISE (section 6.6) with its CONTINUATION frames.</summary>
    public static void WritePushPromise(IBufferWriter<byte> output, int streamId, int promisedStreamId,
        ReadOnlySpan<byte> headerBlock, int maxFrameSize)
    {
        RequireStream(streamId);
        RequireStream(promisedStreamId);
        int first = Math.Min(headerBlock.Length, maxFrameSize - 4);
        Span<byte> span = output.GetSpan(Http2FrameHeader.Size + 4 + first);
        WriteFrameHeader(span, 4 + first, Http2FrameType.PUSH_PROMISE,
            first == headerBlock.Length ? Http2Flags.END_HEADERS : Http2Flags.None, streamId);
        BinaryPrimitives.WriteUInt32BigEndian(span[Http2FrameHeader.Size..], (uint)promisedStreamId);
        headerBlock[..first].CopyTo(span[(Http2FrameHeader.Size + 4)..]);
        output.Advance(Http2FrameHeader.Size + 4 + first);
        WriteContinuations(output, streamId, headerBlock[first..], maxFrameSize);
    }

    /// <summary>One CONTINUATION frame (section 6.10).</summary>
    public static void WriteContinuation(IBufferWriter<byte> output, int streamId, ReadOnlySpan<byte> fragment, bool endHeaders)
    {
        RequireStream(streamId);
        WriteFrame(output, Http2FrameType.CONTINUATION, endHeaders ? Http2Flags.END_HEADERS : Http2Flags.None,
            streamId, fragment);
    }

    /// <summary>PRIORITY (section 6.3); kept for completeness, the proxy does not send it.</summary>
    public static int WritePriority(Span<byte> destination, int streamId, int dependency, bool exclusive, byte weight)
    {
        RequireStream(streamId);
        WriteFrameHeader(destination, 5, Http2FrameType.PRIORITY, Http2Flags.None, streamId);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Http2FrameHeader.Size..],
            (uint)dependency | (exclusive ? 0x8000_0000u : 0));
        destination[Http2FrameHeader.Size + 4] = weight;
        return PriorityFrameLength;
    }

    public static void WritePriority(IBufferWriter<byte> output, int streamId, int dependency, bool exclusive, byte weight)
        => output.Advance(WritePriority(output.GetSpan(PriorityFrameLength), streamId, dependency, exclusive, weight));

    /// <summary>RST_STREAM (section 6.4).</summary>
    public static int WriteRstStream(Span<byte> destination, int streamId, Http2ErrorCode errorCode)
    {
        RequireStream(streamId);
        WriteFrameHeader(destination, 4, Http2FrameType.RST_STREAM, Http2Flags.None, streamId);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Http2FrameHeader.Size..], (uint)errorCode);
        return RstStreamFrameLength;
    }

    public static void WriteRstStream(IBufferWriter<byte> output, int streamId, Http2ErrorCode errorCode)
        => output.Advance(WriteRstStream(output.GetSpan(RstStreamFrameLength), streamId, errorCode));

    /// <summary>SETTINGS (section 6.5) with the given parameters, in order.</summary>
    public static int WriteSettings(Span<byte> destination, ReadOnlySpan<Http2Setting> settings)
    {
        int length = settings.Length * 6;
        WriteFrameHeader(destination, length, Http2FrameType.SETTINGS, Http2Flags.None, 0);
        Span<byte> body = destination[Http2FrameHeader.Size..];
        for (int i = 0; i < settings.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(body[(i * 6)..], (ushort)settings[i].Parameter);
            BinaryPrimitives.WriteUInt32BigEndian(body[(i * 6 + 2)..], settings[i].Value);
        }
        return Http2FrameHeader.Size + length;
    }

    public static void WriteSettings(IBufferWriter<byte> output, ReadOnlySpan<Http2Setting> settings)
        => output.Advance(WriteSettings(output.GetSpan(Http2FrameHeader.Size + settings.Length * 6), settings));

    /// <summary>SETTINGS with ACK and an empty payload (section 6.5).</summary>
    public static int WriteSettingsAck(Span<byte> destination)
    {
        WriteFrameHeader(destination, 0, Http2FrameType.SETTINGS, Http2Flags.ACK, 0);
        return Http2FrameHeader.Size;
    }

    public static void WriteSettingsAck(IBufferWriter<byte> output)
        => output.Advance(WriteSettingsAck(output.GetSpan(Http2FrameHeader.Size)));

    /// <summary>PING (section 6.7); a reply carries ACK and the same opaque data.</summary>
    public static int WritePing(Span<byte> destination, ulong opaqueData, bool ack)
    {
        WriteFrameHeader(destination, 8, Http2FrameType.PING, ack ? Http2Flags.ACK : Http2Flags.None, 0);
        BinaryPrimitives.WriteUInt64BigEndian(destination[Http2FrameHeader.Size..], opaqueData);
        return PingFrameLength;
    }

    public static void WritePing(IBufferWriter<byte> output, ulong opaqueData, bool ack)
        => output.Advance(WritePing(output.GetSpan(PingFrameLength), opaqueData, ack));

    /// <summary>GOAWAY (section 6.8).</summary>
    public static int WriteGoAway(Span<byte> destination, int lastStreamId, Http2ErrorCode errorCode, ReadOnlySpan<byte> debugData)
    {
        if (lastStreamId < 0)
        {
            ThrowArgument(nameof(lastStreamId));
        }
        WriteFrameHeader(destination, 8 + debugData.Length, Http2FrameType.GOAWAY, Http2Flags.None, 0);
        Span<byte> body = destination[Http2FrameHeader.Size..];
        BinaryPrimitives.WriteUInt32BigEndian(body, (uint)lastStreamId);
        BinaryPrimitives.WriteUInt32BigEndian(body[4..], (uint)errorCode);
        debugData.CopyTo(body[8..]);
        return Http2FrameHeader.Size + 8 + debugData.Length;
    }

    public static void WriteGoAway(IBufferWriter<byte> output, int lastStreamId, Http2ErrorCode errorCode, ReadOnlySpan<byte> debugData)
        => output.Advance(WriteGoAway(output.GetSpan(Http2FrameHeader.Size + 8 + debugData.Length), lastStreamId, errorCode, debugData));

    /// <summary>WINDOW_UPDATE (section 6.9); <paramref name="streamId"/> 0 is the connection window.</summary>
    public static int WriteWindowUpdate(Span<byte> destination, int streamId, int increment)
    {
        if (increment <= 0)
        {
            ThrowArgument(nameof(increment)); // 1..2^31-1: a zero increment is a PROTOCOL_ERROR at the peer
        }
        WriteFrameHeader(destination, 4, Http2FrameType.WINDOW_UPDATE, Http2Flags.None, streamId);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Http2FrameHeader.Size..], (uint)increment);
        return WindowUpdateFrameLength;
    }

    public static void WriteWindowUpdate(IBufferWriter<byte> output, int streamId, int increment)
        => output.Advance(WriteWindowUpdate(output.GetSpan(WindowUpdateFrameLength), streamId, increment));

    private static void WriteContinuations(IBufferWriter<byte> output, int streamId, ReadOnlySpan<byte> rest, int maxFrameSize)
    {
        while (!rest.IsEmpty)
        {
            int take = Math.Min(rest.Length, maxFrameSize);
            WriteFrame(output, Http2FrameType.CONTINUATION,
                take == rest.Length ? Http2Flags.END_HEADERS : Http2Flags.None, streamId, rest[..take]);
            rest = rest[take..];
        }
    }

    private static void WriteFrame(IBufferWriter<byte> output, Http2FrameType type, Http2Flags flags, int streamId,
        ReadOnlySpan<byte> payload)
    {
        Span<byte> span = output.GetSpan(Http2FrameHeader.Size + payload.Length);
        WriteFrameHeader(span, payload.Length, type, flags, streamId);
        payload.CopyTo(span[Http2FrameHeader.Size..]);
        output.Advance(Http2FrameHeader.Size + payload.Length);
    }

    private static void RequireStream(int streamId)
    {
        if (streamId <= 0)
        {
            ThrowArgument(nameof(streamId));
        }
    }

    [DoesNotReturn]
    private static void ThrowArgument(string name) => throw new ArgumentOutOfRangeException(name);
}
