namespace Proxy.Http2;

/// <summary>Frame types (RFC 9113 section 6). Unknown types must be ignored (section 5.5), so any byte is valid.</summary>
internal enum Http2FrameType : byte
{
    DATA = 0x0,
    HEADERS = 0x1,
    PRIORITY = 0x2,
    RST_STREAM = 0x3,
    SETTINGS = 0x4,
    PUSH_PROMISE = 0x5,
    PING = 0x6,
    GOAWAY = 0x7,
    WINDOW_UPDATE = 0x8,
    CONTINUATION = 0x9,
}
