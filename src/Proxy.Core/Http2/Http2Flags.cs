namespace Proxy.Http2;

/// <summary>Frame flags (RFC 9113 section 6); a bit's meaning depends on the frame type. Undefined bits are ignored.</summary>
[Flags]
internal enum Http2Flags : byte
{
    None = 0x0,
    /// <summary>DATA, HEADERS.</summary>
    END_STREAM = 0x1,
    /// <summary>SETTINGS, PING (same bit as END_STREAM).</summary>
    ACK = 0x1,
    /// <summary>HEADERS, PUSH_PROMISE, CONTINUATION.</summary>
    END_HEADERS = 0x4,
    /// <summary>DATA, HEADERS, PUSH_PROMISE.</summary>
    PADDED = 0x8,
    /// <summary>HEADERS.</summary>
    PRIORITY = 0x20,
}
