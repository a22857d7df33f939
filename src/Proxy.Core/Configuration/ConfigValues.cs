using System.Globalization;

namespace Proxy.Configuration;

/// <summary>Parses the scalar units of the config file: sizes ("8KiB") and durations ("500ms", "1m30s").</summary>
internal static class ConfigValues
{
    private static readonly (string Unit, long Factor)[] s_sizeUnits =
    [
        // Longest suffixes first so "KiB" is not read as a number followed by "B".
        ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30),
        ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000),
        ("B", 1),
    ];

    /// <summary>
    /// A size in bytes: a plain non-negative integer, or an integer followed by B, KB, MB, GB (powers of
    /// 1000) or KiB, MiB, GiB (powers of 1024). Units are case-sensitive: "Mb" would read as megabits to
    /// some people, so we refuse to guess.
    /// </summary>
    public static bool TryParseSize(string text, out long bytes)
    {
        bytes = 0;
        var s = text.AsSpan().Trim();
        long factor = 1;
        foreach (var (unit, f) in s_sizeUnits)
        {
            if (s.EndsWith(unit, StringComparison.Ordinal))
            {
                factor = f;
                s = s[..^unit.Length].TrimEnd();
                break;
            }
        }
        if (s.IsEmpty || !IsAllDigits(s) || !long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var n))
        {
            return false;
        }
        try
        {
            bytes = checked(n * factor);
            return true;
        }
        catch (OverflowException)
        {
            return false;
        }
    }

    /// <summary>
    /// Longest duration a config key accepts (576h, 24 days). The runtime's timers cannot wait much longer: Task.Delay,
    /// CancellationTokenSource.CancelAfter and Timer take at most 2^32-2 ms (about 49.7 days), and APIs that count in an
    /// int of milliseconds at most 2^31-1 (about 24.8 days). A longer value used to pass validation and then fail every
    /// request (a 1200h connect_timeout) or throw mid-request (an 8000h retry backoff).
    /// </summary>
    public static readonly TimeSpan MaxDuration = TimeSpan.FromDays(24);

    /// <summary>
    /// A duration: one or more number-unit pairs with units ms, s, m, h ("500ms", "2s", "1m30s", "1.5s").
    /// A bare number is refused: "30" could mean seconds or milliseconds depending on who wrote it.
    /// </summary>
    public static bool TryParseDuration(string text, out TimeSpan duration)
    {
        duration = TimeSpan.Zero;
        var s = text.AsSpan().Trim();
        if (s.IsEmpty)
        {
            return false;
        }
        decimal totalMs = 0;
        while (!s.IsEmpty)
        {
            int i = 0;
            while (i < s.Length && (char.IsAsciiDigit(s[i]) || s[i] == '.'))
            {
                i++;
            }
            if (i == 0 || !decimal.TryParse(s[..i], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value))
            {
                return false;
            }
            s = s[i..];
            decimal unitMs;
            if (s.StartsWith("ms", StringComparison.Ordinal))
            {
                unitMs = 1;
                s = s[2..];
            }
            else if (s.StartsWith("s", StringComparison.Ordinal))
            {
                unitMs = 1_000;
                s = s[1..];
            }
            else if (s.StartsWith("m", StringComparison.Ordinal))
            {
                unitMs = 60_000;
                s = s[1..];
            }
            else if (s.StartsWith("h", StringComparison.Ordinal))
            {
                unitMs = 3_600_000;
                s = s[1..];
            }
            else
            {
                return false;
            }
            totalMs += value * unitMs;
            // Far beyond any sensible timeout; keeps TimeSpan arithmetic away from overflow.
            if (totalMs > 365m * 24 * 3_600_000)
            {
                return false;
            }
        }
        duration = TimeSpan.FromTicks((long)(totalMs * TimeSpan.TicksPerMillisecond));
        return true;
    }

    private static bool IsAllDigits(ReadOnlySpan<char> s)
    {
        foreach (var c in s)
        {
            if (!char.IsAsciiDigit(c))
            {
                return false;
            }
        }
        return true;
    }
}
