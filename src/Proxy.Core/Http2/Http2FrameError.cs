namespace Proxy.Http2;

/// <summary>
/// The outcome of validating a frame: no error, a stream error (RST_STREAM on <c>StreamId</c>, section 5.4.2)
/// or a connection error (GOAWAY, section 5.4.1), with the RFC 9113 code to send.
/// </summary>
internal readonly record struct Http2FrameError(Http2ErrorCode Code, bool IsStreamError)
{
    public static Http2FrameError None => default;

    public bool IsError => Code != Http2ErrorCode.NO_ERROR;

    public bool IsConnectionError => IsError && !IsStreamError;

    public static Http2FrameError Connection(Http2ErrorCode code) => new(code, false);

    public static Http2FrameError Stream(Http2ErrorCode code) => new(code, true);
}

/// <summary>Result of reading a frame (or its header) from a buffer.</summary>
internal enum Http2ReadStatus : byte
{
    /// <summary>The frame was read; the out values are set.</summary>
    Done,
    /// <summary>Not enough bytes yet; nothing was consumed.</summary>
    NeedMoreData,
    /// <summary>The frame is invalid; the error says how to answer.</summary>
    Error,
}
