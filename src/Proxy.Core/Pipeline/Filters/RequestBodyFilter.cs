using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// The built-in <c>request_body</c> policy, a request-body phase filter: bodies over <see cref="MaxBodyBytes"/> are
/// refused with 413 by the phase itself (nothing is read past the limit, nothing reaches the upstream); a body whose
/// Content-Type is not listed gets 415 (RFC 9110 section 15.5.16); with <c>json: true</c> a body that is not one
/// well-formed JSON value (RFC 8259) gets 400. The checks apply to requests that carry body bytes: a GET (or an empty
/// POST) passes untouched.
/// </summary>
/// <remarks>
/// The JSON check runs <see cref="Utf8JsonReader"/> over the buffered sequence as it lies in its pooled blocks (no copy,
/// no allocation for a valid body); the reader's own rules apply: no comments, no trailing commas, nesting at most 64,
/// nothing but whitespace after the value; strings must be valid UTF-8 once unescaped. Refusals allocate an exception (error path only).
/// </remarks>
internal sealed class RequestBodyFilter : IRequestBodyFilter, IPolicyDecisionCounters
{
    public const string UnsupportedMediaTypeDetails = "unsupported_media_type";
    public const string InvalidJsonDetails = "request_body_invalid_json";

    private static readonly byte[] s_unsupportedBody = "415 Unsupported Media Type: unsupported_media_type\n"u8.ToArray();
    private static readonly byte[] s_invalidJsonBody = "400 Bad Request: request_body_invalid_json\n"u8.ToArray();

    /// <summary>Lower-case media types (type/subtype, no parameters); empty: any content type.</summary>
    private readonly byte[][] _contentTypes;
    private readonly bool _json;
    private readonly PolicyDecisionCounts _counts;

    /// <param name="maxBodyBytes">Largest body let through.</param>
    /// <param name="contentTypes">Media types let through; empty: any.</param>
    /// <param name="json">Whether a body must be one well-formed JSON value.</param>
    /// <param name="running">On a reload, the running <c>request_body</c> filter of the same policy name, if any: its
    /// decision counts go on (<see cref="PolicyDecisionCounts"/>).</param>
    public RequestBodyFilter(long maxBodyBytes, IReadOnlyList<string> contentTypes, bool json, RequestBodyFilter? running = null)
    {
        MaxBodyBytes = maxBodyBytes;
        _counts = PolicyDecisionCounts.ContinueFrom(running?._counts);
        _contentTypes = contentTypes.Select(t => Encoding.ASCII.GetBytes(t.ToLowerInvariant())).ToArray();
        _json = json;
    }

    public long MaxBodyBytes { get; }

    public long AllowedCount => Volatile.Read(ref _counts.Allowed);

    public long RefusedCount => Volatile.Read(ref _counts.Refused);

    IEnumerable<(string Decision, long Count)> IPolicyDecisionCounters.Decisions => [("allowed", AllowedCount), ("refused", RefusedCount)];

    public FilterStatus OnRequestBody(RequestContext context, ReadOnlySequence<byte> body)
    {
        if (body.IsEmpty)
        {
            Interlocked.Increment(ref _counts.Allowed);
            return FilterStatus.Continue;
        }
        if (_contentTypes.Length > 0
            && (!context.TryGetHeader("content-type"u8, out ReadOnlySpan<byte> contentType) || !IsListed(MediaType(contentType))))
        {
            return Refuse(context, 415, UnsupportedMediaTypeDetails, s_unsupportedBody);
        }
        if (_json && !IsWellFormedJson(body))
        {
            return Refuse(context, 400, InvalidJsonDetails, s_invalidJsonBody);
        }
        Interlocked.Increment(ref _counts.Allowed);
        return FilterStatus.Continue;
    }

    /// <summary>The media type of a Content-Type value: before any parameters, without surrounding whitespace (RFC 9110 section 8.3.1).</summary>
    internal static ReadOnlySpan<byte> MediaType(ReadOnlySpan<byte> value)
    {
        int semicolon = value.IndexOf((byte)';');
        if (semicolon >= 0)
        {
            value = value[..semicolon];
        }
        return value.Trim(" \t"u8);
    }

    private bool IsListed(ReadOnlySpan<byte> mediaType)
    {
        // Type and subtype are case-insensitive (RFC 9110 section 8.3.1).
        foreach (byte[] listed in _contentTypes)
        {
            if (Ascii.EqualsIgnoreCase(mediaType, listed))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>True when <paramref name="body"/> is exactly one well-formed JSON value (whitespace around it allowed).</summary>
    internal static bool IsWellFormedJson(in ReadOnlySequence<byte> body)
    {
        var reader = new Utf8JsonReader(body, isFinalBlock: true, state: default);
        try
        {
            // The reader checks structure, literals, numbers and escape syntax as it goes, and throws on the first fault;
            // the text of strings (UTF-8, RFC 8259 section 8.1) only when asked for it.
            while (reader.Read())
            {
                if (reader.TokenType is JsonTokenType.String or JsonTokenType.PropertyName && !IsValidText(ref reader))
                {
                    return false;
                }
            }
            // A valid document ends with the root value closed (Read returns false only at the end of the input).
            return reader.BytesConsumed > 0 && reader.CurrentDepth == 0;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>
    /// The current string token is valid UTF-8 once unescaped. A plain value in one segment is checked in place; an
    /// escaped or split one is unescaped into a stack or pooled scratch buffer (the reader validates while copying).
    /// </summary>
    private static bool IsValidText(ref Utf8JsonReader reader)
    {
        if (!reader.HasValueSequence && !reader.ValueIsEscaped)
        {
            return Utf8.IsValid(reader.ValueSpan);
        }
        int length = (int)(reader.HasValueSequence ? reader.ValueSequence.Length : reader.ValueSpan.Length);
        byte[]? rented = null;
        Span<byte> scratch = length <= 256 ? stackalloc byte[256] : (rented = ArrayPool<byte>.Shared.Rent(length));
        try
        {
            reader.CopyString(scratch);
            return true;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Refuse(RequestContext context, int status, string details, byte[] body)
    {
        Interlocked.Increment(ref _counts.Refused);
        return context.Respond(status, details, "text/plain"u8, body);
    }
}
