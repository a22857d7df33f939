using System.Buffers;
using System.Text;
using CsCheck;
using Proxy.Http;
using Proxy.Http1;
using static Proxy.Core.Tests.Http1.Http1TestBuffers;

namespace Proxy.Core.Tests.Http1;

/// <summary>
/// Generated requests and mutations of them. The oracle is a deliberately plain string-based reading
/// of the strict grammar: whenever the reader accepts a message, the oracle must accept it too and
/// see the same method, target, fields and framing. A mutation may be refused, never read differently.
/// </summary>
public class Http1RequestReaderPropertyTests
{
    private const string TChar = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    private const string PathChar = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~!$&'()*+,;=:@%";

    private sealed record Message(string Method, string Target, List<(string Name, string Value)> Fields, long ContentLength,
        bool Chunked)
    {
        public string Head()
        {
            StringBuilder text = new($"{Method} {Target} HTTP/1.1\r\n");
            foreach ((string name, string value) in Fields)
            {
                text.Append(name).Append(": ").Append(value).Append("\r\n");
            }
            return text.Append("\r\n").ToString();
        }
    }

    private static readonly Gen<string> GenMethod = Gen.OneOf(
        Gen.OneOfConst("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"),
        Gen.String[Gen.Char[TChar], 1, 10]);

    private static readonly Gen<string> GenSegment = Gen.String[Gen.Char[PathChar], 1, 8].Where(s => s.Trim('.').Length > 0 && !s.Contains('%'));

    private static readonly Gen<string> GenTarget = Gen.Select(
        GenSegment.Array[0, 5],
        Gen.String[Gen.Char[PathChar + "/?."], 0, 12].Where(s => !s.Contains('%')),
        Gen.Bool,
        (segments, query, hasQuery) => "/" + string.Join('/', segments) + (hasQuery ? "?" + query : ""));

    private static readonly Gen<string> GenValue = Gen.String[Gen.Char[' ', '~'], 0, 30].Select(s => s.Trim(' '));

    private static readonly Gen<(string, string)> GenField = Gen.Select(
        Gen.String[Gen.Char[TChar], 1, 12], GenValue, (name, value) => ("X-G-" + name, value));

    private static readonly Gen<Message> GenMessage = Gen.Select(
        GenMethod, GenTarget, GenField.List[0, 12], Gen.Int[0, 2], Gen.Long[0, 1_000_000],
        (method, target, fields, framing, length) =>
        {
            List<(string, string)> all = [("Host", "example.com")];
            all.AddRange(fields);
            if (framing == 1)
            {
                all.Insert(all.Count / 2, ("Content-Length", length.ToString()));
            }
            else if (framing == 2)
            {
                all.Insert(all.Count / 2, ("Transfer-Encoding", "chunked"));
            }
            return new Message(method, target, all, framing == 1 ? length : -1, framing == 2);
        });

    [Fact]
    public void TryRead_GeneratedValidRequest_ParsesToSameMessage()
    {
        GenMessage.Sample(message =>
        {
            string text = message.Head();
            var (status, reason, consumed, head) = Read(text + "tail");
            Assert.True(status == HeadStatus.Complete, $"{status} {reason}: {text}");
            Assert.Equal(text.Length, consumed);
            Assert.Equal(message.Method, Text(head.MethodBytes));
            Assert.Equal(message.Target, Text(head.Target));
            Assert.Equal(message.ContentLength, head.ContentLength);
            Assert.Equal(message.Chunked, head.Chunked);
            Assert.Equal(message.Fields.Count, head.FieldCount);
            for (int i = 0; i < head.FieldCount; i++)
            {
                Assert.Equal(message.Fields[i].Name, Text(head.Name(i)));
                Assert.Equal(message.Fields[i].Value, Text(head.Value(i)));
            }
        }, iter: 2000);
    }

    [Fact]
    public void TryRead_GeneratedRequestAtRandomSplit_ParsesIdentically()
    {
        Gen.Select(GenMessage, Gen.Int[0, 1000], Gen.Int[0, 1000]).Sample((message, a, b) =>
        {
            byte[] data = Bytes(message.Head());
            int first = a % (data.Length + 1);
            int second = first + b % (data.Length - first + 1);
            RequestHead head = new();
            var (status, _, consumed) = Read(Split(data, first, second), head);
            Assert.Equal(HeadStatus.Complete, status);
            Assert.Equal(data.Length, consumed);
            Assert.Equal(Describe(Read(message.Head()).Head), Describe(head));
        }, iter: 1000);
    }

    private static readonly string[] InsertedBytes = ["\r", "\n", "\0", " ", "\t", "\u007f", ":", ",", "\u0080", "\r\n", "\r\n ", "\n\n", "\r\n\r\n"];

    private static readonly string[] InsertedLines =
    [
        "Content-Length: 5\r\n", "Content-Length: 6\r\n", "Content-Length: 5, 5\r\n", "Content-Length: +5\r\n",
        "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: gzip\r\n", "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding : chunked\r\n", " Transfer-Encoding: chunked\r\n", "Transfer-Encoding:\u000bchunked\r\n",
        "Host: other.example\r\n", "Host: a b\r\n", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length : 5\r\n", "X: y\r\n folded\r\n", "Connection: X-G-a\r\n", "Expect: 100-continue\r\n",
    ];

    [Fact]
    public void TryRead_MutatedRequest_IsRejectedOrReadAsTheOracleReadsIt()
    {
        Gen<string> mutated = Gen.Select(GenMessage, Gen.Int[0, 1], Gen.Int[0, 10_000], Gen.Int[0, 1000], (message, kind, where, what) =>
        {
            string head = message.Head();
            if (kind == 0)
            {
                int at = where % (head.Length - 3);
                return head.Insert(at, InsertedBytes[what % InsertedBytes.Length]);
            }
            // A whole line inserted after the request line or after some field line.
            List<int> lineStarts = [];
            for (int i = head.IndexOf("\r\n", StringComparison.Ordinal); i >= 0 && i < head.Length - 2; i = head.IndexOf("\r\n", i + 2, StringComparison.Ordinal))
            {
                lineStarts.Add(i + 2);
            }
            int start = lineStarts[where % lineStarts.Count];
            return head.Insert(start, InsertedLines[what % InsertedLines.Length]);
        });

        mutated.Sample(text =>
        {
            var (status, reason, consumed, head) = Read(text);
            if (status != HeadStatus.Complete)
            {
                return;
            }
            Oracle? oracle = Oracle.Read(text);
            Assert.True(oracle is not null, $"accepted what the oracle refuses: {Escape(text)}");
            Assert.Equal(oracle.Consumed, consumed);
            Assert.Equal(oracle.Method, Text(head.MethodBytes));
            Assert.Equal(oracle.Target, Text(head.Target));
            Assert.Equal(oracle.Fields.Count, head.FieldCount);
            for (int i = 0; i < head.FieldCount; i++)
            {
                Assert.Equal(oracle.Fields[i].Name, Text(head.Name(i)));
                Assert.Equal(oracle.Fields[i].Value, Text(head.Value(i)));
            }
            Assert.Equal(oracle.ContentLength, head.ContentLength);
            Assert.Equal(oracle.Chunked, head.Chunked);
            Assert.Equal(RejectReason.None, reason);
        }, iter: 5000, print: Escape);
    }

    private static string Escape(string text) => text.Replace("\r", "\\r").Replace("\n", "\\n").Replace("\0", "\\0");

    /// <summary>The strict reading, written plainly with strings.</summary>
    private sealed record Oracle(string Method, string Target, List<(string Name, string Value)> Fields, long ContentLength,
        bool Chunked, int Consumed)
    {
        public static Oracle? Read(string text)
        {
            // RFC 9112 section 2.2: empty lines before the request line are skipped.
            int skipped = 0;
            while (text.AsSpan(skipped).StartsWith("\r\n"))
            {
                skipped += 2;
            }
            text = text[skipped..];
            int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (end < 0)
            {
                return null;
            }
            string[] lines = text[..end].Split("\r\n");
            if (lines.Any(l => l.Contains('\r') || l.Contains('\n')))
            {
                return null;
            }
            string[] parts = lines[0].Split(' ');
            if (parts.Length != 3 || parts[0].Length == 0 || parts[0].Any(c => !TChar.Contains(c)) || parts[2] != "HTTP/1.1"
                || parts[1].Length == 0 || parts[1][0] != '/' || parts[1].Any(c => c <= ' ' || c >= '\u007f' || c == '#'))
            {
                return null;
            }
            List<(string, string)> fields = [];
            long contentLength = -1;
            bool chunked = false;
            bool sawTransferEncoding = false;
            int hosts = 0;
            foreach (string line in lines.Skip(1))
            {
                int colon = line.IndexOf(':');
                if (colon <= 0 || line[..colon].Any(c => !TChar.Contains(c)))
                {
                    return null;
                }
                string value = line[(colon + 1)..].Trim(' ', '\t');
                if (value.Any(c => (c < ' ' && c != '\t') || c == '\u007f'))
                {
                    return null;
                }
                string name = line[..colon].ToLowerInvariant();
                fields.Add((line[..colon], value));
                if (name == "host")
                {
                    hosts++;
                }
                else if (name == "content-length")
                {
                    foreach (string element in value.Split(','))
                    {
                        string digits = element.Trim(' ', '\t');
                        if (digits.Length == 0 || digits.Any(c => c < '0' || c > '9') || !long.TryParse(digits, out long parsed)
                            || (contentLength >= 0 && contentLength != parsed))
                        {
                            return null;
                        }
                        contentLength = parsed;
                    }
                }
                else if (name == "transfer-encoding")
                {
                    if (sawTransferEncoding || !value.Equals("chunked", StringComparison.OrdinalIgnoreCase))
                    {
                        return null;
                    }
                    sawTransferEncoding = chunked = true;
                }
            }
            if (hosts != 1 || (chunked && contentLength >= 0))
            {
                return null;
            }
            return new Oracle(parts[0], parts[1], fields, contentLength, chunked, skipped + end + 4);
        }
    }
}
