namespace Proxy.Http2;

/// <summary>SETTINGS parameters (RFC 9113 section 6.5.2, RFC 8441, RFC 9218). Unknown ones are ignored.</summary>
internal enum Http2SettingsParameter : ushort
{
    SETTINGS_HEADER_TABLE_SIZE = 0x1,
    SETTINGS_ENABLE_PUSH = 0x2,
    SETTINGS_MAX_CONCURRENT_STREAMS = 0x3,
    SETTINGS_INITIAL_WINDOW_SIZE = 0x4,
    SETTINGS_MAX_FRAME_SIZE = 0x5,
    SETTINGS_MAX_HEADER_LIST_SIZE = 0x6,
    /// <summary>RFC 8441 (extended CONNECT, WebSockets over HTTP/2).</summary>
    SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8,
    /// <summary>RFC 9218 section 2.1.</summary>
    SETTINGS_NO_RFC7540_PRIORITIES = 0x9,
}

/// <summary>One (identifier, value) pair of a SETTINGS frame, for writing.</summary>
internal readonly record struct Http2Setting(Http2SettingsParameter Parameter, uint Value);
