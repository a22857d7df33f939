using System.Buffers.Text;
using System.Security.Cryptography;

namespace Proxy.Http;

/// <summary>
/// The one piece of the WebSocket opening handshake the proxy computes itself when it translates between the
/// HTTP/1.1 upgrade (RFC 6455 section 4) and HTTP/2's extended CONNECT (RFC 8441 section 5), which has no key.
/// </summary>
internal static class WebSocketHandshake
{
    /// <summary>Length of a Sec-WebSocket-Accept value: a SHA-1 digest (20 octets) in base64.</summary>
    public const int AcceptLength = 28;

    /// <summary>Longest key accepted for the computation; a valid key is 24 octets (16 in base64, section 4.1).</summary>
    private const int MaxKeyLength = 64;

    // RFC 6455 section 1.3: the GUID appended to the key before hashing.
    private static ReadOnlySpan<byte> Guid => "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"u8;

    /// <summary>
    /// Writes base64(SHA-1(key + GUID)) (RFC 6455 section 4.2.2, item 5.4) into <paramref name="destination"/>
    /// (<see cref="AcceptLength"/> octets). False for a key too long to be a valid one.
    /// </summary>
    public static bool TryComputeAccept(ReadOnlySpan<byte> key, Span<byte> destination)
    {
        key = key.Trim((byte)' ');
        if (key.IsEmpty || key.Length > MaxKeyLength || destination.Length < AcceptLength)
        {
            return false;
        }
        Span<byte> input = stackalloc byte[MaxKeyLength + 36];
        key.CopyTo(input);
        Guid.CopyTo(input[key.Length..]);
        Span<byte> digest = stackalloc byte[20];
        SHA1.HashData(input[..(key.Length + Guid.Length)], digest);
        Base64.EncodeToUtf8(digest, destination, out _, out _);
        return true;
    }

    /// <summary>True when <paramref name="accept"/> is the answer to <paramref name="key"/>.</summary>
    public static bool IsValidAccept(ReadOnlySpan<byte> key, ReadOnlySpan<byte> accept)
    {
        Span<byte> expected = stackalloc byte[AcceptLength];
        return TryComputeAccept(key, expected) && accept.Trim((byte)' ').SequenceEqual(expected);
    }
}
