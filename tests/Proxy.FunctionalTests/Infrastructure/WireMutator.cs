using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>Seeded byte-level mutations of HTTP/1.1 messages, for the live fuzz tests.</summary>
internal static class WireMutator
{
    /// <summary>Tokens that touch the framing: line ends alone, folding, NUL, framing fields, a whole extra message.</summary>
    private static readonly string[] Inserts =
    [
        "\r\n", "\n", "\r", " ", "\t", ":", "\0", "0", "-", ",", ";ext=1", "chunked", "\x7f", "\xff", "\r\n\r\n",
        "Content-Length: 3\r\n", "Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: gzip\r\n",
        "Host: b\r\n", " HTTP/1.1", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "Expect: 100-continue\r\n", "Connection: close\r\n", "ffffffffffffffffff", "X: a\r\n b\r\n",
    ];

    /// <summary>One to three edits: insert a token, delete a few bytes, or change one byte.</summary>
    public static byte[] Mutate(Random random, string message)
    {
        var bytes = new List<byte>(Encoding.Latin1.GetBytes(message));
        int edits = random.Next(1, 4);
        for (int e = 0; e < edits && bytes.Count > 0; e++)
        {
            int at = random.Next(bytes.Count + 1);
            switch (random.Next(4))
            {
                case 0:
                case 1:
                    bytes.InsertRange(at, Encoding.Latin1.GetBytes(Inserts[random.Next(Inserts.Length)]));
                    break;
                case 2:
                    at = Math.Min(at, bytes.Count - 1);
                    bytes.RemoveRange(at, Math.Min(random.Next(1, 6), bytes.Count - at));
                    break;
                default:
                    bytes[Math.Min(at, bytes.Count - 1)] = (byte)random.Next(256);
                    break;
            }
        }
        return [.. bytes];
    }

    /// <summary>Bytes as one line of text for a failure message (CR and LF shown escaped).</summary>
    public static string Show(byte[] bytes) =>
        Encoding.Latin1.GetString(bytes).Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
}
