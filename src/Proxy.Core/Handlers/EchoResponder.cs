using System.Buffers;
using System.Text.Json;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Transport;

namespace Proxy.Handlers;

/// <summary>
/// The built-in echo responder behind <c>handler: echo</c> listeners: answers every request with a JSON
/// description of what arrived (method, target, version: HTTP/1.0, HTTP/1.1 or HTTP/2, header fields, body size). It lets the quickstart
/// run with no other server and shows exactly what the proxy forwarded. Not a hot path.
/// </summary>
internal static class EchoResponder
{
    public static async ValueTask<bool> HandleAsync(Http1ServerConnection connection)
    {
        RequestHead head = connection.Head;
        if (!await connection.ConsumeBodyAsync().ConfigureAwait(false))
        {
            return false;
        }
        long bodyBytes = head.HasBody ? connection.RequestPump.BytesRead : 0;

        var body = new ArrayBufferWriter<byte>(512);
        using (var json = new Utf8JsonWriter(body, new JsonWriterOptions { Indented = false }))
        {
            json.WriteStartObject();
            json.WriteString("method", head.MethodBytes);
            json.WriteString("target", head.Target);
            // An HTTP/2 stream runs this loop with an HTTP/1.1 head: its version is the connection's, not the head's.
            json.WriteString("version", connection.IsHttp2Stream ? "HTTP/2" : head.Version == Http.HttpVersion.Http10 ? "HTTP/1.0" : "HTTP/1.1");
            json.WriteStartArray("headers");
            for (int i = 0; i < head.FieldCount; i++)
            {
                json.WriteStartArray();
                json.WriteStringValue(head.Name(i));
                json.WriteStringValue(head.Value(i));
                json.WriteEndArray();
            }
            json.WriteEndArray();
            json.WriteNumber("body_bytes", bodyBytes);
            json.WriteString("client", connection.RemoteEndPoint?.ToString());
            json.WriteEndObject();
        }
        body.Write("\n"u8);

        bool keepAlive = head.KeepAlive && !connection.Draining;
        var output = connection.Output;
        output.Write("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "u8);
        output.WriteNumber(body.WrittenCount);
        output.Write("\r\ndate: "u8);
        output.Write(DateHeader.Value);
        output.Write("\r\n"u8);
        output.Write(connection.ConnectionField(keepAlive));
        output.Write("\r\n"u8);
        if (head.Method != Http.HttpMethod.Head)
        {
            output.Write(body.WrittenSpan);
        }
        return await connection.FlushClientAsync().ConfigureAwait(false) && keepAlive;
    }
}
