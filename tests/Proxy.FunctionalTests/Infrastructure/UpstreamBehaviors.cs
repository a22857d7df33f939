using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>Ready-made upstream scripts. Each reads requests with the tests' own parser.</summary>
internal static class UpstreamBehaviors
{
    /// <summary>
    /// Keep-alive upstream answering every request with 200, a Content-Length body "{method} {target}" and
    /// <c>x-upstream-connection: {index}</c>, so tests can check order and connection reuse.
    /// </summary>
    public static UpstreamHandler Ok() => Respond(static (request, connection) =>
        Wire.Response(200, $"{request.Method} {request.Target}", ("content-type", "text/plain"), ("x-upstream-connection", connection.Index.ToString())));

    /// <summary>Keep-alive upstream that answers each request with whatever <paramref name="respond"/> builds.</summary>
    public static UpstreamHandler Respond(Func<HttpMessage, UpstreamConnection, string> respond) =>
        async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                await connection.WriteAsync(respond(request, connection), ct);
                if (request.ConnectionHas("close"))
                {
                    return;
                }
            }
        };

    /// <summary>Answers every request with the same raw bytes, keeping the connection open.</summary>
    public static UpstreamHandler Fixed(string rawResponse) => Respond((_, _) => rawResponse);

    /// <summary>Reads one request, writes <paramref name="rawResponse"/> and closes (FIN).</summary>
    public static UpstreamHandler FixedThenClose(string rawResponse) =>
        async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is not null)
            {
                await connection.WriteAsync(rawResponse, ct);
            }
        };

    /// <summary>Answers with a chunked body sent as exactly these chunks (each written and flushed separately).</summary>
    public static UpstreamHandler Chunked(params string[] chunks) =>
        async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is not null)
            {
                await connection.WriteAsync("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n", ct);
                foreach (var chunk in chunks)
                {
                    await connection.WriteAsync($"{Encoding.UTF8.GetByteCount(chunk):x}\r\n{chunk}\r\n", ct);
                    await Task.Delay(10, ct);
                }
                await connection.WriteAsync("0\r\nx-upstream-trailer: t\r\n\r\n", ct);
            }
        };

    /// <summary>Answers one request with a body delimited by closing the connection (no Content-Length, not chunked).</summary>
    public static UpstreamHandler CloseDelimited(string body) =>
        async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is not null)
            {
                await connection.WriteAsync("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n", ct);
                var bytes = Encoding.UTF8.GetBytes(body);
                // Two writes, so the proxy cannot rely on the whole body arriving with the head.
                await connection.WriteAsync(bytes.AsMemory(0, bytes.Length / 2), ct);
                await Task.Delay(20, ct);
                await connection.WriteAsync(bytes.AsMemory(bytes.Length / 2), ct);
            }
        };

    /// <summary>Reads a request, then aborts with a TCP RST before any response byte.</summary>
    public static UpstreamHandler ResetAfterRequest() =>
        async (connection, ct) =>
        {
            await connection.ReadRequestAsync(ct);
            connection.Reset();
        };

    /// <summary>Reads a request, writes <paramref name="partialResponse"/>, then aborts with a TCP RST.</summary>
    public static UpstreamHandler ResetAfter(string partialResponse) =>
        async (connection, ct) =>
        {
            await connection.ReadRequestAsync(ct);
            await connection.WriteAsync(partialResponse, ct);
            await Task.Delay(50, ct);
            connection.Reset();
        };

    /// <summary>Reads requests and never answers (until the upstream is disposed).</summary>
    public static UpstreamHandler Hang() =>
        async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is not null)
            {
            }
            await Task.Delay(Timeout.Infinite, ct);
        };

    /// <summary>Answers like <see cref="Ok"/> after waiting <paramref name="delay"/> for each request.</summary>
    public static UpstreamHandler Delayed(TimeSpan delay) =>
        async (connection, ct) =>
        {
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                await Task.Delay(delay, ct);
                await connection.WriteAsync(Wire.Response(200, $"{request.Method} {request.Target}"), ct);
            }
        };

    /// <summary>Answers a request with 101 Switching Protocols, then echoes every byte back until the proxy closes.</summary>
    public static UpstreamHandler SwitchingProtocolsEcho() =>
        async (connection, ct) =>
        {
            if (await connection.ReadRequestAsync(ct) is not { } request)
            {
                return;
            }
            // RFC 6455 section 4.2.2: a proper accept value, so proxies that check the handshake accept it.
            var key = request.Header("sec-websocket-key");
            var accept = key is null ? "" : "sec-websocket-accept: " + Convert.ToBase64String(
                System.Security.Cryptography.SHA1.HashData(Encoding.ASCII.GetBytes(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))) + "\r\n";
            await connection.WriteAsync("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n" + accept + "\r\n", ct);
            // Bytes the proxy sent right behind the request head are already in the reader's buffer.
            var early = connection.Reader.TakeBuffered();
            if (early.Length > 0)
            {
                await connection.WriteAsync(early, ct);
            }
            while (await connection.Reader.FillAsync(ct))
            {
                await connection.WriteAsync(connection.Reader.TakeBuffered(), ct);
            }
        };

    /// <summary>
    /// Reads each request body without keeping it (count + SHA-256) and answers 200 with body "{count} {sha256}".
    /// </summary>
    public static UpstreamHandler CountBody() =>
        async (connection, ct) =>
        {
            while (true)
            {
                using var sink = new HashSink();
                var request = await connection.ReadRequestAsync(ct, sink);
                if (request is null)
                {
                    return;
                }
                await connection.WriteAsync(Wire.Response(200, $"{sink.Count} {sink.Finish()}"), ct);
            }
        };

    /// <summary>Answers each request with <paramref name="length"/> generated bytes (see <see cref="BodyGenerator"/>).</summary>
    public static UpstreamHandler Download(long length, bool chunked = false) =>
        async (connection, ct) =>
        {
            var buffer = new byte[64 * 1024];
            while (await connection.ReadRequestAsync(ct) is { } request)
            {
                var framing = chunked ? "transfer-encoding: chunked" : $"content-length: {length}";
                await connection.WriteAsync($"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n{framing}\r\n\r\n", ct);
                if (request.Method == "HEAD")
                {
                    continue;
                }
                var generator = new BodyGenerator(length);
                int n;
                while ((n = generator.Fill(buffer)) > 0)
                {
                    if (chunked)
                    {
                        await connection.WriteAsync(Encoding.ASCII.GetBytes($"{n:x}\r\n"), ct);
                        await connection.WriteAsync(buffer.AsMemory(0, n), ct);
                        await connection.WriteAsync("\r\n"u8.ToArray(), ct);
                    }
                    else
                    {
                        await connection.WriteAsync(buffer.AsMemory(0, n), ct);
                    }
                }
                if (chunked)
                {
                    await connection.WriteAsync("0\r\n\r\n", ct);
                }
            }
        };
}

/// <summary>Builders for raw HTTP/1.1 messages.</summary>
internal static class Wire
{
    /// <summary>A complete response with a Content-Length body.</summary>
    public static string Response(int status, string body, params (string Name, string Value)[] headers)
    {
        var sb = new StringBuilder($"HTTP/1.1 {status} {ReasonPhrase(status)}\r\n");
        foreach (var (name, value) in headers)
        {
            sb.Append(name).Append(": ").Append(value).Append("\r\n");
        }
        sb.Append("content-length: ").Append(Encoding.UTF8.GetByteCount(body)).Append("\r\n\r\n").Append(body);
        return sb.ToString();
    }

    /// <summary>A GET with a Host field and optional extra header lines (each without CRLF).</summary>
    public static string Get(string target, string host = "example.test", params string[] headers)
    {
        var sb = new StringBuilder($"GET {target} HTTP/1.1\r\nHost: {host}\r\n");
        foreach (var h in headers)
        {
            sb.Append(h).Append("\r\n");
        }
        return sb.Append("\r\n").ToString();
    }

    public static string ReasonPhrase(int status) => status switch
    {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
}
