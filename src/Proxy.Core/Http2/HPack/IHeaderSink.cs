namespace Proxy.Http2.HPack;

/// <summary>
/// Receives the fields of a header block from <see cref="HPackDecoder"/>, in order. Spans are only valid
/// during the call (they point into the input, the dynamic table or the decoder's buffers): copy what
/// must be kept. Implement it on a struct (or ref struct) so the generic decoder calls it without boxing.
/// </summary>
internal interface IHeaderSink
{
    /// <summary>A field entirely from the static table (RFC 7541 section 6.1, index 1..61): name and value are
    /// <see cref="HPackStaticTable.Name"/>/<see cref="HPackStaticTable.Value"/> of <paramref name="index"/>, so
    /// known fields (":method GET") are recognised without comparing bytes.</summary>
    void OnStaticIndexedHeader(int index);

    /// <summary>A literal whose name is the static entry <paramref name="index"/> (RFC 7541 section 6.2).</summary>
    /// <param name="index">Static table index of the name (1..61).</param>
    /// <param name="value">The literal value.</param>
    /// <param name="neverIndexed">Sent as "never indexed" (6.2.3): an intermediary must re-encode it the same way.</param>
    void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed);

    /// <summary>Any other field: literal name, or name/value from the dynamic table.</summary>
    /// <param name="name">Field name (lowercase if the peer is conformant; validation is the caller's).</param>
    /// <param name="value">Field value.</param>
    /// <param name="neverIndexed">Sent as "never indexed" (6.2.3): an intermediary must re-encode it the same way.</param>
    void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed);
}
