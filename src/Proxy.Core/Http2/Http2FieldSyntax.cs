using System.Buffers;

namespace Proxy.Http2;

/// <summary>
/// RFC 9113 section 8.2.1, for regular (non-pseudo) fields in either direction: a name is a token without uppercase
/// letters, a value has no NUL, CR or LF and no leading or trailing space or tab. A field that breaks it makes the
/// message malformed; relayed as HTTP/1.1 it could split the message ("a\r\nSet-Cookie: x" as a value).
/// </summary>
internal static class Http2FieldSyntax
{
    // tchar without uppercase (RFC 9110 section 5.6.2).
    private static readonly SearchValues<byte> s_nameChars =
        SearchValues.Create("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"u8);
    private static readonly SearchValues<byte> s_upper = SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZ"u8);
    private static readonly SearchValues<byte> s_badValue = SearchValues.Create("\0\r\n"u8);

    public static bool IsValidName(ReadOnlySpan<byte> name) => !name.IsEmpty && name.IndexOfAnyExcept(s_nameChars) < 0;

    /// <summary>For a name <see cref="IsValidName"/> refused: true when it is an uppercase letter that made it invalid.</summary>
    public static bool HasUppercase(ReadOnlySpan<byte> name) => name.IndexOfAny(s_upper) >= 0;

    public static bool IsValidValue(ReadOnlySpan<byte> value)
        => value.IndexOfAny(s_badValue) < 0 && (value.IsEmpty || (!IsWhitespace(value[0]) && !IsWhitespace(value[^1])));

    private static bool IsWhitespace(byte b) => b is (byte)' ' or (byte)'\t';
}
