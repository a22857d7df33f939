namespace Proxy.Http2.HPack;

/// <summary>
/// Why a header block could not be decoded. Values, not exceptions: every one of them leaves the
/// connection's HPACK state out of step with the peer, so each maps to a connection error of type
/// COMPRESSION_ERROR (RFC 9113 section 4.3) through <see cref="HPackErrorExtensions.ToHttp2ErrorCode"/>.
/// </summary>
internal enum HPackError : byte
{
    None = 0,
    /// <summary>An integer does not fit in 31 bits, or uses more continuation octets than that needs (RFC 7541 section 5.1).</summary>
    IntegerOverflow,
    /// <summary>Indexed field with index 0 (RFC 7541 section 6.1).</summary>
    IndexZero,
    /// <summary>Index past the static and dynamic tables (RFC 7541 section 2.3.3).</summary>
    IndexOutOfRange,
    /// <summary>A Huffman literal contains the EOS symbol (RFC 7541 section 5.2).</summary>
    HuffmanEos,
    /// <summary>A Huffman literal ends with more than 7 bits of padding (RFC 7541 section 5.2).</summary>
    HuffmanPaddingTooLong,
    /// <summary>A Huffman literal ends with padding that is not the most significant bits of EOS (RFC 7541 section 5.2).</summary>
    HuffmanPaddingNotOnes,
    /// <summary>Dynamic table size update above SETTINGS_HEADER_TABLE_SIZE (RFC 7541 section 6.3).</summary>
    TableSizeUpdateTooLarge,
    /// <summary>Dynamic table size update after the first field of a block (RFC 7541 section 4.2).</summary>
    TableSizeUpdateNotAtStart,
    /// <summary>We lowered SETTINGS_HEADER_TABLE_SIZE and the next block did not start with a size update (RFC 7541 section 4.2).</summary>
    TableSizeUpdateMissing,
    /// <summary>The block ended inside a field representation, e.g. a string longer than the block.</summary>
    IncompleteHeaderBlock,
    /// <summary>
    /// The decoded list exceeds the limit (RFC 9113 section 6.5.2: name + value + 32 per field), or one
    /// string cannot fit in what is left of it. Stops an HPACK bomb before it is expanded.
    /// </summary>
    HeaderListTooLarge,
}

internal static class HPackErrorExtensions
{
    /// <summary>
    /// RFC 9113 section 4.3: a decoding failure is a connection error of type COMPRESSION_ERROR. The list
    /// limit is one too: decoding stopped midway, so the dynamic table can no longer be trusted.
    /// </summary>
    public static Http2ErrorCode ToHttp2ErrorCode(this HPackError error)
        => error == HPackError.None ? Http2ErrorCode.NO_ERROR : Http2ErrorCode.COMPRESSION_ERROR;

    /// <summary>Stable snake_case code for logs and metrics.</summary>
    public static string DetailsCode(this HPackError error) => error switch
    {
        HPackError.None => "none",
        HPackError.IntegerOverflow => "hpack_integer_overflow",
        HPackError.IndexZero => "hpack_index_zero",
        HPackError.IndexOutOfRange => "hpack_index_out_of_range",
        HPackError.HuffmanEos => "hpack_huffman_eos",
        HPackError.HuffmanPaddingTooLong => "hpack_huffman_padding_too_long",
        HPackError.HuffmanPaddingNotOnes => "hpack_huffman_padding_not_ones",
        HPackError.TableSizeUpdateTooLarge => "hpack_table_size_update_too_large",
        HPackError.TableSizeUpdateNotAtStart => "hpack_table_size_update_not_at_start",
        HPackError.TableSizeUpdateMissing => "hpack_table_size_update_missing",
        HPackError.IncompleteHeaderBlock => "hpack_incomplete_header_block",
        HPackError.HeaderListTooLarge => "header_list_too_large",
        _ => "unknown",
    };
}
