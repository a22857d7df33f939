namespace Proxy.Http;

/// <summary>
/// Why a message was refused by a codec. Values, not exceptions: the connection maps each one to a
/// status code and a stable details code in one place (<see cref="RejectReasonExtensions"/>).
/// </summary>
internal enum RejectReason : byte
{
    None = 0,

    // 400 and close
    InvalidRequestLine,
    InvalidRequestTarget,
    InvalidMethod,
    InvalidHeaderName,
    InvalidHeaderValue,
    WhitespaceBeforeColon,
    ObsoleteLineFolding,
    BareCarriageReturn,
    BareLineFeed,
    MissingHost,
    MultipleHost,
    InvalidHost,
    InvalidContentLength,
    ConflictingContentLength,
    ContentLengthWithTransferEncoding,
    InvalidTransferEncoding,
    InvalidChunkSize,
    InvalidChunkExtension,
    InvalidChunkTerminator,
    InvalidTrailer,
    UnexpectedEndOfBody,

    // other statuses
    RequestLineTooLong,        // 414
    HeadersTooLarge,           // 431
    TooManyHeaders,            // 431
    BodyTooLarge,              // 413
    UnsupportedTransferCoding, // 501
    UnsupportedVersion,        // 505
    HeaderTimeout,             // 408
    BodyTimeout,               // 408

    // upstream response problems (the proxy answers 502)
    InvalidStatusLine,
    InvalidResponse,

    // 400 and close (added after the groups above, which keep their values)
    /// <summary>More than one Authorization field (RFC 9110 section 11.6.2 defines one credential).</summary>
    MultipleAuthorization,
    /// <summary>
    /// A chunked body's framing (chunk-size lines, extensions, CRLFs) far exceeds its payload: tiny chunks with long
    /// extensions, which max_body_bytes (payload only) would let run on (Go's CVE-2023-39326 rule).
    /// </summary>
    ChunkFramingExcess,
}

internal static class RejectReasonExtensions
{
    /// <summary>The status code the proxy answers with for this rejection.</summary>
    public static int StatusCode(this RejectReason reason) => reason switch
    {
        RejectReason.RequestLineTooLong => 414,
        RejectReason.HeadersTooLarge or RejectReason.TooManyHeaders => 431,
        RejectReason.BodyTooLarge => 413,
        RejectReason.UnsupportedTransferCoding => 501,
        RejectReason.UnsupportedVersion => 505,
        RejectReason.HeaderTimeout or RejectReason.BodyTimeout => 408,
        RejectReason.InvalidStatusLine or RejectReason.InvalidResponse => 502,
        _ => 400,
    };

    /// <summary>Stable snake_case code for logs and metrics.</summary>
    public static string DetailsCode(this RejectReason reason) => reason switch
    {
        RejectReason.None => "none",
        RejectReason.InvalidRequestLine => "invalid_request_line",
        RejectReason.InvalidRequestTarget => "invalid_request_target",
        RejectReason.InvalidMethod => "invalid_method",
        RejectReason.InvalidHeaderName => "invalid_header_name",
        RejectReason.InvalidHeaderValue => "invalid_header_value",
        RejectReason.WhitespaceBeforeColon => "whitespace_before_colon",
        RejectReason.ObsoleteLineFolding => "obs_fold",
        RejectReason.BareCarriageReturn => "bare_cr",
        RejectReason.BareLineFeed => "bare_lf",
        RejectReason.MissingHost => "missing_host",
        RejectReason.MultipleHost => "multiple_host",
        RejectReason.InvalidHost => "invalid_host",
        RejectReason.InvalidContentLength => "invalid_content_length",
        RejectReason.ConflictingContentLength => "conflicting_content_length",
        RejectReason.ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
        RejectReason.InvalidTransferEncoding => "invalid_transfer_encoding",
        RejectReason.InvalidChunkSize => "invalid_chunk_size",
        RejectReason.InvalidChunkExtension => "invalid_chunk_extension",
        RejectReason.InvalidChunkTerminator => "invalid_chunk_terminator",
        RejectReason.InvalidTrailer => "invalid_trailer",
        RejectReason.UnexpectedEndOfBody => "unexpected_end_of_body",
        RejectReason.RequestLineTooLong => "request_line_too_long",
        RejectReason.HeadersTooLarge => "headers_too_large",
        RejectReason.TooManyHeaders => "too_many_headers",
        RejectReason.BodyTooLarge => "body_too_large",
        RejectReason.UnsupportedTransferCoding => "unsupported_transfer_coding",
        RejectReason.UnsupportedVersion => "unsupported_version",
        RejectReason.HeaderTimeout => "header_timeout",
        RejectReason.BodyTimeout => "body_timeout",
        RejectReason.InvalidStatusLine => "upstream_invalid_status_line",
        RejectReason.InvalidResponse => "upstream_invalid_response",
        RejectReason.MultipleAuthorization => "multiple_authorization",
        RejectReason.ChunkFramingExcess => "chunk_framing_excess",
        _ => "unknown",
    };
}
