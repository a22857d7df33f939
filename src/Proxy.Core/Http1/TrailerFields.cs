using System.Buffers;
using Proxy.Http;

namespace Proxy.Http1;

/// <summary>
/// Iterates the field lines of a validated trailer section (RFC 9112 section 7.1.2: <c>name ":" OWS value OWS CRLF</c>,
/// as <see cref="ChunkedDecoder"/> keeps it), skipping the fields a proxy must not forward as trailers
/// (<see cref="TrailerFilter"/>). The common representation of trailers inside the proxy: an HTTP/1.1 writer copies
/// the kept lines, an HTTP/2 writer HPACK-encodes each name (lower-cased) and value. A ref struct over the
/// section's bytes: nothing is allocated.
/// <code>
/// var fields = new TrailerFields(section);
/// while (fields.MoveNext(out ReadOnlySpan&lt;byte&gt; name, out ReadOnlySpan&lt;byte&gt; value, out ReadOnlySpan&lt;byte&gt; line)) { ... }
/// </code>
/// </summary>
internal ref struct TrailerFields
{
    private ReadOnlySpan<byte> _rest;
    private readonly ITrailerFieldFilter? _owned;

    /// <param name="section">Validated field lines, each ending in CRLF, without the final empty line.</param>
    /// <param name="owned">For a request's trailers: the fields the proxy drops besides the forbidden ones, skipped too.</param>
    public TrailerFields(ReadOnlySpan<byte> section, ITrailerFieldFilter? owned = null)
    {
        _rest = section;
        _owned = owned;
    }

    /// <summary>
    /// The next forwardable field: its name (as sent), its value (OWS trimmed), and its whole line with CRLF (to copy
    /// into an HTTP/1.1 trailer section as is). False at the end.
    /// </summary>
    public bool MoveNext(out ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value, out ReadOnlySpan<byte> line)
    {
        while (!_rest.IsEmpty)
        {
            int end = _rest.IndexOf((byte)'\n');
            // The decoder stores only CRLF-terminated lines; a section from elsewhere without one ends here.
            line = end < 0 ? _rest : _rest[..(end + 1)];
            _rest = end < 0 ? default : _rest[(end + 1)..];
            ReadOnlySpan<byte> content = line.TrimEnd("\r\n"u8);
            int colon = content.IndexOf((byte)':');
            if (colon <= 0)
            {
                continue;
            }
            name = content[..colon];
            value = content[(colon + 1)..].Trim(" \t"u8);
            if (TrailerFilter.IsForbidden(name) || (_owned is not null && _owned.Drops(name, value)))
            {
                continue;
            }
            return true;
        }
        name = value = line = default;
        return false;
    }

    /// <summary>Writes the kept lines as an HTTP/1.1 trailer section's field lines (no final CRLF).</summary>
    public static void WriteHttp1(IBufferWriter<byte> output, ReadOnlySpan<byte> section, ITrailerFieldFilter? owned = null)
    {
        var fields = new TrailerFields(section, owned);
        while (fields.MoveNext(out _, out _, out ReadOnlySpan<byte> line))
        {
            output.Write(line);
        }
    }
}

/// <summary>Fields that must not travel in a trailer section (RFC 9110 section 6.5.1); they are dropped when trailers are relayed.</summary>
internal static class TrailerFilter
{
    /// <summary>True for a field name (any case) the proxy drops from trailers.</summary>
    public static bool IsForbidden(ReadOnlySpan<byte> name) => KnownHeaders.Resolve(name) switch
    {
        // Message framing: the body is already delimited; a late length could re-frame it for a naive recipient.
        KnownHeader.ContentLength or KnownHeader.TransferEncoding => true,
        // Routing: the target was chosen from the head; a late host must not be seen as a second authority.
        KnownHeader.Host => true,
        // Connection-specific (RFC 9110 section 7.6.1 / RFC 9113 section 8.2.2): about one hop, never forwarded.
        KnownHeader.Connection or KnownHeader.KeepAlive or KnownHeader.ProxyConnection or KnownHeader.Upgrade => true,
        // Request modifiers about the hop (TE) and the announcement of trailers (Trailer): head-only by definition.
        KnownHeader.TE or KnownHeader.Trailer => true,
        _ => false,
    };
}

/// <summary>
/// Request trailer fields the proxy drops besides <see cref="TrailerFilter"/>'s: those whose names it owns in the
/// request head (set, replaced or removed there), and those whose values the route's <c>deny</c> policies would refuse
/// in the head, so that a client cannot slip them past it as trailers.
/// </summary>
internal interface ITrailerFieldFilter
{
    /// <param name="name">The field name as sent.</param>
    /// <param name="value">The field value, OWS trimmed.</param>
    bool Drops(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value);
}
