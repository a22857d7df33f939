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
    Authorization,
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

/// <summary>Resolves field names to <see cref="KnownHeader"/> (HTTP/1.1 parser) without a string dictionary.</summary>
internal static class KnownHeaders
{
    /// <summary>
    /// The header a field name denotes, or <see cref="KnownHeader.None"/>. Field names are
    /// case-insensitive (RFC 9110 section 5.1): switch on the length, then on the first letter, then
    /// one ASCII case-insensitive compare, so an unknown name usually costs a length test.
    /// </summary>
    public static KnownHeader Resolve(ReadOnlySpan<byte> name)
    {
        if (name.IsEmpty)
        {
            return KnownHeader.None;
        }
        // '|0x20' lower-cases ASCII letters; the full compare below rejects non-letters.
        byte first = (byte)(name[0] | 0x20);
        return name.Length switch
        {
            2 => Match(name, "te"u8, KnownHeader.TE),
            4 => first == (byte)'h' ? Match(name, "host"u8, KnownHeader.Host) : Match(name, "date"u8, KnownHeader.Date),
            6 => first == (byte)'e' ? Match(name, "expect"u8, KnownHeader.Expect) : Match(name, "server"u8, KnownHeader.Server),
            7 => first == (byte)'t' ? Match(name, "trailer"u8, KnownHeader.Trailer) : Match(name, "upgrade"u8, KnownHeader.Upgrade),
            10 => first == (byte)'c' ? Match(name, "connection"u8, KnownHeader.Connection) : Match(name, "keep-alive"u8, KnownHeader.KeepAlive),
            12 => Match(name, "content-type"u8, KnownHeader.ContentType),
            13 => Match(name, "authorization"u8, KnownHeader.Authorization),
            14 => Match(name, "content-length"u8, KnownHeader.ContentLength),
            15 => Match(name, "x-forwarded-for"u8, KnownHeader.XForwardedFor),
            16 => first == (byte)'p' ? Match(name, "proxy-connection"u8, KnownHeader.ProxyConnection) : Match(name, "x-forwarded-host"u8, KnownHeader.XForwardedHost),
            17 => first == (byte)'t' ? Match(name, "transfer-encoding"u8, KnownHeader.TransferEncoding) : Match(name, "x-forwarded-proto"u8, KnownHeader.XForwardedProto),
            _ => KnownHeader.None,
        };
    }

    /// <summary>
    /// Fields that describe one connection and must not be forwarded (RFC 9110 section 7.6.1), plus the
    /// framing fields (Content-Length, Transfer-Encoding) and Expect, which the forwarder writes itself.
    /// </summary>
    public static bool IsHopByHop(KnownHeader header) => header switch
    {
        KnownHeader.Connection or KnownHeader.KeepAlive or KnownHeader.ProxyConnection or KnownHeader.TE
            or KnownHeader.Trailer or KnownHeader.Upgrade or KnownHeader.TransferEncoding
            or KnownHeader.ContentLength or KnownHeader.Expect => true,
        _ => false,
    };

    private static KnownHeader Match(ReadOnlySpan<byte> name, ReadOnlySpan<byte> lowerCase, KnownHeader header)
        => System.Text.Ascii.EqualsIgnoreCase(name, lowerCase) ? header : KnownHeader.None;
}
