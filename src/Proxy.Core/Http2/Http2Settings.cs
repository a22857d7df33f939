namespace Proxy.Http2;

/// <summary>
/// A peer's (or our) SETTINGS values in force (RFC 9113 section 6.5.2), with the protocol defaults.
/// Kept as uint: the wire field is 32 bits, and "unlimited" is <see cref="uint.MaxValue"/>.
/// </summary>
internal struct Http2Settings
{
    public const uint DefaultHeaderTableSize = 4096;
    public const uint DefaultInitialWindowSize = 65_535;
    public const uint MinMaxFrameSize = 16_384;
    public const uint MaxMaxFrameSize = 16_777_215; // 2^24-1
    public const uint MaxWindowSize = int.MaxValue;  // 2^31-1

    public uint HeaderTableSize = DefaultHeaderTableSize;
    public bool EnablePush = true;
    public uint MaxConcurrentStreams = uint.MaxValue;
    public uint InitialWindowSize = DefaultInitialWindowSize;
    public uint MaxFrameSize = MinMaxFrameSize;
    public uint MaxHeaderListSize = uint.MaxValue;
    public bool EnableConnectProtocol;

    public Http2Settings()
    {
    }

    public static Http2Settings Default => new();
}
