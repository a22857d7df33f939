using System.Buffers;
using System.Buffers.Binary;

namespace Proxy.Http2;

/// <summary>
/// Reads frames (RFC 9113 section 4) and validates each type's payload (section 6) with the rules that need
/// nothing but the frame: lengths, padding, stream 0 or not, SETTINGS values, a zero WINDOW_UPDATE. Rules that
/// need connection state (stream states, CONTINUATION sequencing, odd client stream ids, push allowed) belong
/// to the connection. Errors are values carrying the code and whether they are stream or connection errors.
/// <para>Payload readers take the frame's complete payload (<c>payload.Length == header.Length</c>).</para>
/// </summary>
internal static class Http2FrameReader
{
    /// <summary>
    /// Reads the 9-octet frame header. A length above <paramref name="maxFrameSize"/> (our SETTINGS_MAX_FRAME_SIZE)
    /// is a FRAME_SIZE_ERROR (section 4.2), treated as a connection error: we will not buffer that frame. The
    /// reserved bit of the stream identifier is ignored (section 4.1).
    /// </summary>
    public static Http2ReadStatus TryReadFrameHeader(in ReadOnlySequence<byte> buffer, uint maxFrameSize,
        out Http2FrameHeader header, out Http2FrameError error)
    {
        error = Http2FrameError.None;
        if (buffer.Length < Http2FrameHeader.Size)
        {
            header = default;
            return Http2ReadStatus.NeedMoreData;
        }
        ReadOnlySpan<byte> first = buffer.FirstSpan;
        Span<byte> copy = stackalloc byte[Http2FrameHeader.Size];
        ReadOnlySpan<byte> bytes = first.Length >= Http2FrameHeader.Size ? first : Copy(buffer, copy);
        int length = (bytes[0] << 16) | (bytes[1] << 8) | bytes[2];
        int streamId = (int)(BinaryPrimitives.ReadUInt32BigEndian(bytes[5..]) & 0x7FFF_FFFF);
        header = new Http2FrameHeader(length, (Http2FrameType)bytes[3], (Http2Flags)bytes[4], streamId);
        if ((uint)length > maxFrameSize)
        {
            error = Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
            return Http2ReadStatus.Error;
        }
        return Http2ReadStatus.Done;
    }

    /// <summary>
    /// Reads a whole frame: header and payload. <paramref name="consumed"/> is just past the frame when
    /// <see cref="Http2ReadStatus.Done"/>; otherwise nothing is consumed.
    /// </summary>
    public static Http2ReadStatus TryReadFrame(in ReadOnlySequence<byte> buffer, uint maxFrameSize,
        out Http2FrameHeader header, out ReadOnlySequence<byte> payload, out SequencePosition consumed,
        out Http2FrameError error)
    {
        payload = default;
        consumed = buffer.Start;
        Http2ReadStatus status = TryReadFrameHeader(buffer, maxFrameSize, out header, out error);
        if (status != Http2ReadStatus.Done)
        {
            return status;
        }
        if (buffer.Length - Http2FrameHeader.Size < header.Length)
        {
            return Http2ReadStatus.NeedMoreData;
        }
        payload = buffer.Slice(Http2FrameHeader.Size, header.Length);
        consumed = payload.End;
        return Http2ReadStatus.Done;
    }

    /// <summary>
    /// DATA (section 6.1).
    /// <code>
    /// +---------------+
    /// |Pad Length? (8)|
    /// +---------------+-----------------------------------------------+
    /// |                            Data (*)                         ...
    /// +---------------------------------------------------------------+
    /// |                           Padding (*)                       ...
    /// +---------------------------------------------------------------+
    /// </code>
    /// The whole frame length counts against flow control, padding included.
    /// </summary>
    public static Http2FrameError ReadData(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out ReadOnlySequence<byte> data)
    {
        data = default;
        if (header.StreamId == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        return SkipPadding(header, payload, fixedLength: 0, out data);
    }

    /// <summary>
    /// HEADERS (section 6.2). The priority fields are parsed for validation and ignored (RFC 9113 deprecates
    /// them, section 5.3.2).
    /// <code>
    /// +---------------+
    /// |Pad Length? (8)|
    /// +-+-------------+-----------------------------------------------+
    /// |E|                 Stream Dependency? (31)                     |
    /// +-+-------------+-----------------------------------------------+
    /// |  Weight? (8)  |
    /// +-+-------------+-----------------------------------------------+
    /// |                   Field Block Fragment (*)                  ...
    /// +---------------------------------------------------------------+
    /// |                           Padding (*)                       ...
    /// +---------------------------------------------------------------+
    /// </code>
    /// On a stream error (a stream depending on itself) <paramref name="fragment"/> is still set: it must be
    /// decoded to keep the HPACK state before the stream is reset.
    /// </summary>
    public static Http2FrameError ReadHeaders(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out ReadOnlySequence<byte> fragment)
    {
        fragment = default;
        if (header.StreamId == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        bool priority = header.HasFlag(Http2Flags.PRIORITY);
        Http2FrameError error = SkipPadding(header, payload, priority ? 5 : 0, out fragment);
        if (error.IsError || !priority)
        {
            return error;
        }
        int offset = header.HasFlag(Http2Flags.PADDED) ? 1 : 0;
        uint dependency = ReadUInt32(payload.Slice(offset)) & 0x7FFF_FFFF;
        return dependency == (uint)header.StreamId
            ? Http2FrameError.Stream(Http2ErrorCode.PROTOCOL_ERROR) // RFC 7540 section 5.3.1
            : Http2FrameError.None;
    }

    /// <summary>
    /// PRIORITY (section 6.3): validated, then ignored.
    /// <code>
    /// +-+-------------------------------------------------------------+
    /// |E|                  Stream Dependency (31)                     |
    /// +-+-------------+-----------------------------------------------+
    /// |   Weight (8)  |
    /// +---------------+
    /// </code>
    /// </summary>
    public static Http2FrameError ReadPriority(in Http2FrameHeader header, in ReadOnlySequence<byte> payload)
    {
        if (header.StreamId == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        if (header.Length != 5)
        {
            return Http2FrameError.Stream(Http2ErrorCode.FRAME_SIZE_ERROR);
        }
        uint dependency = ReadUInt32(payload) & 0x7FFF_FFFF;
        return dependency == (uint)header.StreamId
            ? Http2FrameError.Stream(Http2ErrorCode.PROTOCOL_ERROR)
            : Http2FrameError.None;
    }

    /// <summary>RST_STREAM (section 6.4): a 32-bit error code; unknown codes are kept as they are.</summary>
    public static Http2FrameError ReadRstStream(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out Http2ErrorCode errorCode)
    {
        errorCode = Http2ErrorCode.NO_ERROR;
        if (header.StreamId == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        if (header.Length != 4)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
        }
        errorCode = (Http2ErrorCode)ReadUInt32(payload);
        return Http2FrameError.None;
    }

    /// <summary>
    /// SETTINGS (section 6.5): a list of (16-bit identifier, 32-bit value). All values are validated first and
    /// only then applied to <paramref name="settings"/>, so an invalid frame changes nothing. An ACK has an empty
    /// payload and leaves <paramref name="settings"/> alone. Unknown identifiers are ignored.
    /// </summary>
    public static Http2FrameError ReadSettings(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        ref Http2Settings settings)
    {
        if (header.StreamId != 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        if (header.HasFlag(Http2Flags.ACK))
        {
            return header.Length == 0
                ? Http2FrameError.None
                : Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
        }
        if (header.Length % 6 != 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
        }

        SequenceReader<byte> reader = new(payload);
        while (reader.TryReadBigEndian(out short id) && reader.TryReadBigEndian(out int value))
        {
            Http2ErrorCode code = Validate((Http2SettingsParameter)(ushort)id, (uint)value);
            if (code != Http2ErrorCode.NO_ERROR)
            {
                return Http2FrameError.Connection(code);
            }
        }
        reader = new SequenceReader<byte>(payload);
        while (reader.TryReadBigEndian(out short id) && reader.TryReadBigEndian(out int value))
        {
            Apply(ref settings, (Http2SettingsParameter)(ushort)id, (uint)value);
        }
        return Http2FrameError.None;
    }

    /// <summary>
    /// PUSH_PROMISE (section 6.6): pad length, promised stream id, fragment, padding. Whether push is allowed at
    /// all is the connection's call (a server never accepts one; a client that sent ENABLE_PUSH 0 neither).
    /// </summary>
    public static Http2FrameError ReadPushPromise(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out int promisedStreamId, out ReadOnlySequence<byte> fragment)
    {
        promisedStreamId = 0;
        fragment = default;
        if (header.StreamId == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        Http2FrameError error = SkipPadding(header, payload, fixedLength: 4, out fragment);
        if (error.IsError)
        {
            return error;
        }
        int offset = header.HasFlag(Http2Flags.PADDED) ? 1 : 0;
        promisedStreamId = (int)(ReadUInt32(payload.Slice(offset)) & 0x7FFF_FFFF);
        return Http2FrameError.None;
    }

    /// <summary>PING (section 6.7): 8 opaque octets on stream 0.</summary>
    public static Http2FrameError ReadPing(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out ulong opaqueData)
    {
        opaqueData = 0;
        if (header.StreamId != 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        if (header.Length != 8)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
        }
        Span<byte> bytes = stackalloc byte[8];
        payload.Slice(0, 8).CopyTo(bytes);
        opaqueData = BinaryPrimitives.ReadUInt64BigEndian(bytes);
        return Http2FrameError.None;
    }

    /// <summary>
    /// GOAWAY (section 6.8).
    /// <code>
    /// +-+-------------------------------------------------------------+
    /// |R|                  Last-Stream-ID (31)                        |
    /// +-+-------------------------------------------------------------+
    /// |                      Error Code (32)                          |
    /// +---------------------------------------------------------------+
    /// |                  Additional Debug Data (*)                    |
    /// +---------------------------------------------------------------+
    /// </code>
    /// </summary>
    public static Http2FrameError ReadGoAway(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out int lastStreamId, out Http2ErrorCode errorCode, out ReadOnlySequence<byte> debugData)
    {
        lastStreamId = 0;
        errorCode = Http2ErrorCode.NO_ERROR;
        debugData = default;
        if (header.StreamId != 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        if (header.Length < 8)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
        }
        lastStreamId = (int)(ReadUInt32(payload) & 0x7FFF_FFFF);
        errorCode = (Http2ErrorCode)ReadUInt32(payload.Slice(4));
        debugData = payload.Slice(8);
        return Http2FrameError.None;
    }

    /// <summary>
    /// WINDOW_UPDATE (section 6.9): a 31-bit increment. Length other than 4 is a connection FRAME_SIZE_ERROR;
    /// an increment of 0 is a PROTOCOL_ERROR of the stream, or of the connection on stream 0.
    /// </summary>
    public static Http2FrameError ReadWindowUpdate(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out int increment)
    {
        increment = 0;
        if (header.Length != 4)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
        }
        increment = (int)(ReadUInt32(payload) & 0x7FFF_FFFF);
        if (increment == 0)
        {
            return header.StreamId == 0
                ? Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR)
                : Http2FrameError.Stream(Http2ErrorCode.PROTOCOL_ERROR);
        }
        return Http2FrameError.None;
    }

    /// <summary>CONTINUATION (section 6.10): the payload is a field block fragment.</summary>
    public static Http2FrameError ReadContinuation(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        out ReadOnlySequence<byte> fragment)
    {
        fragment = default;
        if (header.StreamId == 0)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        fragment = payload;
        return Http2FrameError.None;
    }

    /// <summary>
    /// Strips the optional Pad Length octet, <paramref name="fixedLength"/> octets of fixed fields and the
    /// padding. Too short for the mandatory fields is FRAME_SIZE_ERROR (section 4.2); padding longer than what
    /// remains is PROTOCOL_ERROR (sections 6.1, 6.2, 6.6). Both are connection errors: these frames carry
    /// state (flow control or HPACK) that the connection can no longer account for.
    /// </summary>
    private static Http2FrameError SkipPadding(in Http2FrameHeader header, in ReadOnlySequence<byte> payload,
        int fixedLength, out ReadOnlySequence<byte> content)
    {
        content = default;
        int length = header.Length;
        int offset = 0;
        int padLength = 0;
        if (header.HasFlag(Http2Flags.PADDED))
        {
            if (length < 1)
            {
                return Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
            }
            padLength = payload.FirstSpan.Length > 0 ? payload.FirstSpan[0] : FirstByte(payload);
            offset = 1;
        }
        if (length < offset + fixedLength)
        {
            return Http2FrameError.Connection(Http2ErrorCode.FRAME_SIZE_ERROR);
        }
        if (padLength > length - offset - fixedLength)
        {
            return Http2FrameError.Connection(Http2ErrorCode.PROTOCOL_ERROR);
        }
        content = payload.Slice(offset + fixedLength, length - offset - fixedLength - padLength);
        return Http2FrameError.None;
    }

    private static Http2ErrorCode Validate(Http2SettingsParameter parameter, uint value) => parameter switch
    {
        Http2SettingsParameter.SETTINGS_ENABLE_PUSH when value > 1 => Http2ErrorCode.PROTOCOL_ERROR,
        Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE when value > Http2Settings.MaxWindowSize
            => Http2ErrorCode.FLOW_CONTROL_ERROR,
        Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE
            when value < Http2Settings.MinMaxFrameSize || value > Http2Settings.MaxMaxFrameSize
            => Http2ErrorCode.PROTOCOL_ERROR,
        Http2SettingsParameter.SETTINGS_ENABLE_CONNECT_PROTOCOL when value > 1 => Http2ErrorCode.PROTOCOL_ERROR,
        Http2SettingsParameter.SETTINGS_NO_RFC7540_PRIORITIES when value > 1 => Http2ErrorCode.PROTOCOL_ERROR,
        _ => Http2ErrorCode.NO_ERROR,
    };

    private static void Apply(ref Http2Settings settings, Http2SettingsParameter parameter, uint value)
    {
        switch (parameter)
        {
            case Http2SettingsParameter.SETTINGS_HEADER_TABLE_SIZE:
                settings.HeaderTableSize = value;
                break;
            case Http2SettingsParameter.SETTINGS_ENABLE_PUSH:
                settings.EnablePush = value == 1;
                break;
            case Http2SettingsParameter.SETTINGS_MAX_CONCURRENT_STREAMS:
                settings.MaxConcurrentStreams = value;
                break;
            case Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE:
                settings.InitialWindowSize = value;
                break;
            case Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE:
                settings.MaxFrameSize = value;
                break;
            case Http2SettingsParameter.SETTINGS_MAX_HEADER_LIST_SIZE:
                settings.MaxHeaderListSize = value;
                break;
            case Http2SettingsParameter.SETTINGS_ENABLE_CONNECT_PROTOCOL:
                settings.EnableConnectProtocol = value == 1;
                break;
        }
    }

    private static uint ReadUInt32(in ReadOnlySequence<byte> payload)
    {
        ReadOnlySpan<byte> first = payload.FirstSpan;
        if (first.Length >= 4)
        {
            return BinaryPrimitives.ReadUInt32BigEndian(first);
        }
        Span<byte> bytes = stackalloc byte[4];
        payload.Slice(0, 4).CopyTo(bytes);
        return BinaryPrimitives.ReadUInt32BigEndian(bytes);
    }

    private static byte FirstByte(in ReadOnlySequence<byte> payload)
    {
        Span<byte> one = stackalloc byte[1];
        payload.Slice(0, 1).CopyTo(one);
        return one[0];
    }

    private static ReadOnlySpan<byte> Copy(in ReadOnlySequence<byte> buffer, Span<byte> destination)
    {
        buffer.Slice(0, destination.Length).CopyTo(destination);
        return destination;
    }
}
