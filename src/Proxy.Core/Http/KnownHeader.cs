namespace Proxy.Http;

/// <summary>
/// Header names the engine acts on. The HTTP/1.1 parser resolves each field name to one of these
/// once, so the forwarder and filters switch on a byte instead of comparing strings.
/// </summary>
internal enum KnownHeader : byte
{
    None = 0,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    TE,
    Trailer,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    ContentType,
    Date,
    Server,
}

/// <summary>One header field as offsets into the owning head's buffer; nothing is copied out.</summary>
internal struct HeaderField
{
    public int NameStart;
    public int NameLength;
    public int ValueStart;
    public int ValueLength;
    public KnownHeader Known;

    /// <summary>True when the field must not be forwarded (hop-by-hop, or named by <c>Connection</c>).</summary>
    public bool HopByHop;
}
