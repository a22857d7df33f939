using System.Buffers.Binary;

namespace Proxy.Http;

/// <summary>
/// X-Request-Id: a client's id is kept when it is sane (1..128 visible ASCII bytes, RFC 9110 section 5.5 field
/// value without spaces), otherwise the proxy makes one. Generated ids are 16 lower-case hex digits of a process
/// counter multiplied by a random odd number plus a random offset: unique within the process (an odd multiplier
/// is a bijection modulo 2^64), not guessable across restarts, and formatted into the request's own buffer.
/// </summary>
internal static class RequestId
{
    public const int MaxLength = 128;
    public const int GeneratedLength = 16;

    public static ReadOnlySpan<byte> FieldName => "x-request-id"u8;

    // Seeded from Guid.NewGuid: the runtime's own secure random source (getrandom), where RandomNumberGenerator would
    // load and initialise OpenSSL's libcrypto on the first request of a plain-HTTP proxy that never uses it otherwise
    // (3.4 MiB of resident memory for two random numbers).
    private static readonly ulong s_multiplier = Seed(0) | 1;
    private static readonly ulong s_offset = Seed(1);

    private static ulong Seed(int half)
    {
        Span<byte> bytes = stackalloc byte[16];
        Guid.NewGuid().TryWriteBytes(bytes);
        // A version 4 GUID fixes 6 bits (version in byte 7, variant in byte 8): each half keeps 60 or 62 random bits.
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes.Slice(half * 8, 8));
    }

    private static long s_counter;

    /// <summary>1..128 bytes, each visible ASCII (0x21..0x7E): safe to log and to echo back in a header.</summary>
    public static bool IsValid(ReadOnlySpan<byte> value)
        => value.Length is > 0 and <= MaxLength && !value.ContainsAnyExceptInRange((byte)0x21, (byte)0x7E);

    /// <summary>Writes a new id into <paramref name="destination"/> (at least 16 bytes) and returns its length.</summary>
    public static int Generate(Span<byte> destination)
    {
        ulong value = unchecked((ulong)Interlocked.Increment(ref s_counter) * s_multiplier + s_offset);
        // Most significant digit first; the runtime's vectorised hex encoder instead of a loop of 16 table lookups.
        Span<byte> bytes = stackalloc byte[sizeof(ulong)];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
        Convert.TryToHexStringLower(bytes, destination, out int written);
        return written;
    }
}
