using System.Globalization;
using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// The tests' own strict HTTP/1.1 message parser (RFC 9112), written independently of the engine's. Used by the
/// recording upstream to read what the proxy forwarded and by the raw client to read what the proxy answered.
/// Anything malformed throws <see cref="InvalidDataException"/>: the proxy must only emit well-formed messages.
/// </summary>
internal static class Http1Wire
{
    private const int MaxHeaderLines = 1000;

    /// <summary>Reads one request; null when the connection ended cleanly before it started.</summary>
    public static async Task<HttpMessage?> ReadRequestAsync(WireReader reader, IBodySink? sink, CancellationToken cancellationToken)
    {
        var line = await reader.ReadLineAsync(cancellationToken);
        if (line is null)
        {
            return null;
        }
        // request-line = method SP request-target SP HTTP-version
        var parts = line.Split(' ');
        if (parts.Length != 3 || parts[0].Length == 0 || parts[1].Length == 0 || !parts[2].StartsWith("HTTP/", StringComparison.Ordinal))
        {
            throw new InvalidDataException("Malformed request line: " + line);
        }
        var message = new HttpMessage { StartLine = line, Method = parts[0], Target = parts[1], Version = parts[2] };
        await ReadFieldsAsync(reader, message.Headers, cancellationToken);

        // RFC 9112 section 6.3: a request without Transfer-Encoding or Content-Length has no body.
        var te = message.Header("transfer-encoding");
        var cl = message.HeaderValues("content-length");
        if (te is not null && cl.Length > 0)
        {
            throw new InvalidDataException("Forwarded request has both Transfer-Encoding and Content-Length.");
        }
        if (te is not null)
        {
            if (!string.Equals(te.Trim(), "chunked", StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidDataException("Unexpected Transfer-Encoding: " + te);
            }
            await ReadChunkedAsync(reader, message, sink, cancellationToken);
        }
        else if (cl.Length > 0)
        {
            await ReadLengthAsync(reader, message, ParseContentLength(cl), sink, cancellationToken);
        }
        return message;
    }

    /// <summary>
    /// Reads a response to a request with <paramref name="requestMethod"/>, collecting 1xx interim responses into
    /// <see cref="HttpMessage.Interim"/> (a 101 is returned as final: what follows is not HTTP).
    /// </summary>
    public static async Task<HttpMessage> ReadResponseAsync(WireReader reader, string requestMethod, IBodySink? sink, CancellationToken cancellationToken)
    {
        var interim = new List<HttpMessage>();
        while (true)
        {
            var response = await ReadResponseHeadAsync(reader, cancellationToken);
            if (response.Status is >= 100 and < 200 && response.Status != 101)
            {
                interim.Add(response);
                continue;
            }
            response.Interim.AddRange(interim);
            await ReadResponseBodyAsync(reader, response, requestMethod, sink, cancellationToken);
            return response;
        }
    }

    public static async Task<HttpMessage> ReadResponseHeadAsync(WireReader reader, CancellationToken cancellationToken)
    {
        var line = await reader.ReadLineAsync(cancellationToken)
            ?? throw new EndOfStreamException("Connection closed before a response.");
        // status-line = HTTP-version SP status-code SP [ reason-phrase ]
        var firstSpace = line.IndexOf(' ');
        if (firstSpace < 0 || !line.StartsWith("HTTP/1.", StringComparison.Ordinal) || line.Length < firstSpace + 4
            || (line.Length > firstSpace + 4 && line[firstSpace + 4] != ' ')
            || !int.TryParse(line.AsSpan(firstSpace + 1, 3), NumberStyles.None, CultureInfo.InvariantCulture, out var status))
        {
            throw new InvalidDataException("Malformed status line: " + line);
        }
        var reason = line.Length > firstSpace + 5 ? line[(firstSpace + 5)..] : "";
        var message = new HttpMessage { StartLine = line, Version = line[..firstSpace], Status = status, Reason = reason };
        await ReadFieldsAsync(reader, message.Headers, cancellationToken);
        return message;
    }

    private static async Task ReadResponseBodyAsync(WireReader reader, HttpMessage response, string requestMethod, IBodySink? sink, CancellationToken cancellationToken)
    {
        // RFC 9112 section 6.3, in order.
        if (requestMethod == "HEAD" || response.Status is 101 or 204 or 304)
        {
            return;
        }
        var te = response.Header("transfer-encoding");
        var cl = response.HeaderValues("content-length");
        if (te is not null)
        {
            if (cl.Length > 0)
            {
                throw new InvalidDataException("Response has both Transfer-Encoding and Content-Length.");
            }
            if (!te.Trim().EndsWith("chunked", StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidDataException("Unexpected response Transfer-Encoding: " + te);
            }
            await ReadChunkedAsync(reader, response, sink, cancellationToken);
        }
        else if (cl.Length > 0)
        {
            await ReadLengthAsync(reader, response, ParseContentLength(cl), sink, cancellationToken);
        }
        else
        {
            var target = sink ?? new CollectSink();
            var counter = new CountingSink(target);
            await reader.ReadToEndAsync(counter, cancellationToken);
            response.BodyLength = counter.Count;
            response.CloseDelimited = true;
            if (sink is null)
            {
                response.Body = ((CollectSink)target).ToArray();
            }
        }
    }

    private static async Task ReadFieldsAsync(WireReader reader, List<KeyValuePair<string, string>> fields, CancellationToken cancellationToken)
    {
        for (var i = 0; ; i++)
        {
            if (i > MaxHeaderLines)
            {
                throw new InvalidDataException("Too many header lines.");
            }
            var line = await reader.ReadLineAsync(cancellationToken)
                ?? throw new EndOfStreamException("Connection closed inside a header block.");
            if (line.Length == 0)
            {
                return;
            }
            fields.Add(ParseField(line));
        }
    }

    /// <summary>field-line = field-name ":" OWS field-value OWS (RFC 9112 section 5).</summary>
    public static KeyValuePair<string, string> ParseField(string line)
    {
        var colon = line.IndexOf(':');
        if (colon <= 0)
        {
            throw new InvalidDataException("Malformed field line: " + line);
        }
        var name = line[..colon];
        foreach (var c in name)
        {
            if (c <= ' ' || c >= 0x7F || "\"(),/:;<=>?@[\\]{}".Contains(c))
            {
                throw new InvalidDataException("Malformed field name: " + line);
            }
        }
        var value = line[(colon + 1)..].Trim(' ', '\t');
        foreach (var c in value)
        {
            if ((c < ' ' && c != '\t') || c == 0x7F)
            {
                throw new InvalidDataException("Control character in field value: " + line);
            }
        }
        return new(name, value);
    }

    private static long ParseContentLength(string[] values)
    {
        if (values.Length != 1 || values[0].Length == 0 || !values[0].All(char.IsAsciiDigit))
        {
            throw new InvalidDataException("Unexpected Content-Length: " + string.Join(" | ", values));
        }
        return long.Parse(values[0], CultureInfo.InvariantCulture);
    }

    private static async Task ReadLengthAsync(WireReader reader, HttpMessage message, long length, IBodySink? sink, CancellationToken cancellationToken)
    {
        var collect = sink is null ? new CollectSink() : null;
        await reader.ReadExactlyAsync(length, sink ?? collect!, cancellationToken);
        message.BodyLength = length;
        if (collect is not null)
        {
            message.Body = collect.ToArray();
        }
    }

    // chunked-body = *chunk last-chunk trailer-section CRLF (RFC 9112 section 7.1)
    private static async Task ReadChunkedAsync(WireReader reader, HttpMessage message, IBodySink? sink, CancellationToken cancellationToken)
    {
        message.Chunked = true;
        var collect = sink is null ? new CollectSink() : null;
        var target = sink ?? collect!;
        while (true)
        {
            var line = await reader.ReadLineAsync(cancellationToken)
                ?? throw new EndOfStreamException("Connection closed before a chunk size.");
            var semicolon = line.IndexOf(';');
            var sizeText = semicolon >= 0 ? line[..semicolon] : line;
            if (sizeText.Length == 0 || sizeText.Length > 15
                || !long.TryParse(sizeText, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var size))
            {
                throw new InvalidDataException("Malformed chunk size line: " + line);
            }
            if (size == 0)
            {
                break;
            }
            message.ChunkSizes.Add(size);
            await reader.ReadExactlyAsync(size, target, cancellationToken);
            message.BodyLength += size;
            var end = await reader.ReadLineAsync(cancellationToken);
            if (end != "")
            {
                throw new InvalidDataException("Chunk data not followed by CRLF.");
            }
        }
        await ReadFieldsAsync(reader, message.Trailers, cancellationToken);
        if (collect is not null)
        {
            message.Body = collect.ToArray();
        }
    }

    private sealed class CountingSink(IBodySink inner) : IBodySink
    {
        public long Count { get; private set; }

        public void Write(ReadOnlySpan<byte> data)
        {
            Count += data.Length;
            inner.Write(data);
        }
    }
}
