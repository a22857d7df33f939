using System.Numerics;

namespace Proxy.Http1;

/// <summary>Writes chunked framing (RFC 9112 section 7.1) around payload the caller copies itself.</summary>
internal static class ChunkedWriter
{
    /// <summary>16 hex digits and CRLF: the longest chunk header <see cref="WriteChunkHeader"/> writes.</summary>
    public const int MaxChunkHeaderLength = 18;

    /// <summary>The CRLF that ends a chunk's data.</summary>
    public static ReadOnlySpan<byte> Crlf => "\r\n"u8;

    /// <summary>The last chunk with an empty trailer section: ends a chunked body.</summary>
    public static ReadOnlySpan<byte> LastChunk => "0\r\n\r\n"u8;

    /// <summary>Writes "hex-length CRLF" and returns the bytes written (lower-case hex, no leading zeros).</summary>
    public static int WriteChunkHeader(Span<byte> destination, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        int digits = length == 0 ? 1 : (67 - BitOperations.LeadingZeroCount((ulong)length)) >> 2;
        if (destination.Length < digits + 2)
        {
            ThrowDestinationTooSmall();
        }
        ReadOnlySpan<byte> hex = "0123456789abcdef"u8;
        for (int i = digits - 1; i >= 0; i--)
        {
            destination[i] = hex[(int)(length & 0xF)];
            length >>= 4;
        }
        destination[digits] = (byte)'\r';
        destination[digits + 1] = (byte)'\n';
        return digits + 2;
    }

    private static void ThrowDestinationTooSmall()
        => throw new ArgumentException("Destination is too small for a chunk header.", "destination");
}
