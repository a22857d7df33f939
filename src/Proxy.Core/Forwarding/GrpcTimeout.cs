using Proxy.Http;

namespace Proxy.Forwarding;

/// <summary>
/// The <c>grpc-timeout</c> request header (gRPC over HTTP/2 protocol, "Requests"):
/// <code>
/// Timeout      = "grpc-timeout" TimeoutValue TimeoutUnit
/// TimeoutValue = {positive integer as ASCII string of at most 8 digits}
/// TimeoutUnit  = Hour / Minute / Second / Millisecond / Microsecond / Nanosecond
/// Hour = "H", Minute = "M", Second = "S", Millisecond = "m", Microsecond = "u", Nanosecond = "n"
/// </code>
/// Parsed from the header's bytes without allocation; it bounds the proxy's exchange deadline and is forwarded as sent.
/// </summary>
internal static class GrpcTimeout
{
    /// <summary>The field name, lower case.</summary>
    public static ReadOnlySpan<byte> FieldName => "grpc-timeout"u8;

    private const int MaxDigits = 8;

    /// <summary>
    /// Parses a grpc-timeout value into milliseconds (sub-millisecond values round up to 1 ms, so a tiny deadline
    /// still expires rather than meaning "none"). False when malformed: the header is then ignored, as gRPC servers do.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> value, out long milliseconds)
    {
        milliseconds = 0;
        if (value.Length < 2 || value.Length > MaxDigits + 1)
        {
            return false;
        }
        long n = 0;
        ReadOnlySpan<byte> digits = value[..^1];
        foreach (byte b in digits)
        {
            uint d = (uint)(b - '0');
            if (d > 9)
            {
                return false;
            }
            n = n * 10 + d;
        }
        // 8 digits keep every product below: 99,999,999 H in ms is 3.6e17 < long.MaxValue.
        milliseconds = value[^1] switch
        {
            (byte)'H' => n * 3_600_000,
            (byte)'M' => n * 60_000,
            (byte)'S' => n * 1000,
            (byte)'m' => n,
            (byte)'u' => (n + 999) / 1000,
            (byte)'n' => (n + 999_999) / 1_000_000,
            _ => -1,
        };
        return milliseconds >= 0;
    }

    /// <summary>The request's grpc-timeout in milliseconds, or -1 when absent or malformed.</summary>
    public static long Find(RequestHead head)
    {
        for (int i = 0; i < head.FieldCount; i++)
        {
            ReadOnlySpan<byte> name = head.Name(i);
            if (name.Length == 12 && System.Text.Ascii.EqualsIgnoreCase(name, FieldName))
            {
                return TryParse(head.Value(i), out long ms) ? ms : -1;
            }
        }
        return -1;
    }
}
