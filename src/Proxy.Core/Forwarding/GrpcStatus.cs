using System.Buffers.Text;
using Proxy.Http;

namespace Proxy.Forwarding;

/// <summary>
/// gRPC over HTTP (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) as the forwarder sees it: which
/// requests are gRPC, the status code a local reply carries to a gRPC client (one table, pre-encoded fields), and
/// whether an upstream answered UNAVAILABLE. A gRPC client reads only <c>grpc-status</c>: an HTTP 503 with a text
/// body is "UNKNOWN" or worse to it, so local failures are sent as HTTP 200 "trailers-only" responses (status in the head,
/// no body), the shape Envoy uses for its gRPC local replies.
/// </summary>
internal static class GrpcStatus
{
    public const int Ok = 0;
    public const int Unknown = 2;
    public const int DeadlineExceeded = 4;
    public const int NotFound = 5;
    public const int PermissionDenied = 7;
    public const int ResourceExhausted = 8;
    public const int Unimplemented = 12;
    public const int Internal = 13;
    public const int Unavailable = 14;
    public const int Unauthenticated = 16;

    /// <summary>"grpc-status: N\r\n" for N in 0..16 (the codes gRPC defines), built once.</summary>
    private static readonly byte[][] s_statusFields = BuildStatusFields();

    private static byte[][] BuildStatusFields()
    {
        var fields = new byte[17][];
        for (int i = 0; i < fields.Length; i++)
        {
            fields[i] = System.Text.Encoding.ASCII.GetBytes($"grpc-status: {i}\r\n");
        }
        return fields;
    }

    /// <summary>The head of every gRPC local reply: HTTP 200 and the gRPC content type (the status follows).</summary>
    public static ReadOnlySpan<byte> ReplyHead => "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"u8;

    /// <summary>The pre-encoded <c>grpc-status</c> field line for <paramref name="code"/> (0..16).</summary>
    public static ReadOnlySpan<byte> StatusField(int code) => s_statusFields[(uint)code < (uint)s_statusFields.Length ? code : Unknown];

    /// <summary>
    /// True when the request is gRPC: its content-type starts with <c>application/grpc</c> (any of "+proto", "+json",
    /// "-web" follow). One pass over the parsed fields, comparing only the known content-type slot.
    /// </summary>
    public static bool IsGrpcRequest(RequestHead head)
    {
        HeaderField[] fields = head.Fields;
        for (int i = 0; i < head.FieldCount; i++)
        {
            if (fields[i].Known == KnownHeader.ContentType)
            {
                ReadOnlySpan<byte> value = head.Value(i);
                return value.Length >= 16 && System.Text.Ascii.EqualsIgnoreCase(value[..16], "application/grpc"u8);
            }
        }
        return false;
    }

    /// <summary>
    /// The gRPC status of a forwarding failure, as Envoy answers them: the call never reached a working server
    /// (connect failure, nothing healthy, overloaded, reset) is UNAVAILABLE, which clients may retry; a deadline is
    /// DEADLINE_EXCEEDED; a response we could not understand is INTERNAL.
    /// </summary>
    public static int ForError(ProxyError error) => error switch
    {
        ProxyError.UpstreamResponseTimeout or ProxyError.UpstreamRequestTimeout or ProxyError.UpstreamPerTryTimeout => DeadlineExceeded,
        ProxyError.UpstreamInvalidResponse or ProxyError.UpstreamInvalidBody or ProxyError.RequestBodyFailed => Internal,
        ProxyError.NoRoute or ProxyError.MethodNotAllowed => Unimplemented,
        _ => Unavailable,
    };

    /// <summary>
    /// The gRPC status for a local reply known only by its HTTP status (filters, limits): the table of the gRPC spec
    /// (doc/http-grpc-status-mapping.md), with 413 and 429 as RESOURCE_EXHAUSTED (a quota, not an outage: clients must
    /// not retry them at once) and 408/504 as DEADLINE_EXCEEDED.
    /// </summary>
    public static int ForHttpStatus(int status) => status switch
    {
        400 => Internal,
        401 => Unauthenticated,
        403 => PermissionDenied,
        404 => Unimplemented,
        408 or 504 => DeadlineExceeded,
        413 or 429 or 431 => ResourceExhausted,
        500 => Internal,
        502 or 503 => Unavailable,
        _ => Unknown,
    };

    /// <summary>
    /// True when an upstream's response head says UNAVAILABLE: HTTP 200 with <c>grpc-status: 14</c> in the head, a
    /// trailers-only response (a status in the trailers comes after the body was relayed: too late to retry). Used by
    /// <c>retry.on: unavailable</c> for HTTP/1.1 upstreams and meant for the HTTP/2 upstream path too.
    /// </summary>
    public static bool IsUnavailable(ResponseHead response)
    {
        if (response.StatusCode != 200)
        {
            return false;
        }
        for (int i = 0; i < response.FieldCount; i++)
        {
            ReadOnlySpan<byte> name = response.Name(i);
            if (name.Length == 11 && System.Text.Ascii.EqualsIgnoreCase(name, "grpc-status"u8))
            {
                return IsUnavailable(response.Value(i));
            }
        }
        return false;
    }

    /// <summary>True when a <c>grpc-status</c> value is 14 (OWS already trimmed by the parser).</summary>
    public static bool IsUnavailable(ReadOnlySpan<byte> value)
        => Utf8Parser.TryParse(value, out int code, out int used) && used == value.Length && code == Unavailable;
}
