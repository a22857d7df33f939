namespace Proxy.Upstream;

/// <summary>
/// The protocol a cluster speaks to its destinations (cluster key <c>protocol</c>, docs/http2.md).
/// </summary>
internal enum UpstreamProtocol : byte
{
    /// <summary><c>http1</c>: HTTP/1.1 (the default), one exchange per connection at a time.</summary>
    Http1 = 0,
    /// <summary><c>h2</c>: HTTP/2 over TLS; the destination must pick "h2" in ALPN (RFC 9113 section 3.2).</summary>
    H2,
    /// <summary><c>h2c</c>: cleartext HTTP/2 with prior knowledge (RFC 9113 section 3.3).</summary>
    H2c,
    /// <summary><c>auto</c>: over TLS, offer h2 and http/1.1 and use what the peer picks; cleartext stays HTTP/1.1.</summary>
    Auto,
}
