using System.IO.Pipelines;
using System.Net;
using Proxy.Diagnostics.Tracing;
using Proxy.Http;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Upstream;

namespace Proxy.Forwarding;

/// <summary>Serialises the request the proxy sends upstream (RFC 9112 section 3, RFC 9110 section 7.6).</summary>
internal static class UpstreamRequestWriter
{
    private static ReadOnlySpan<byte> Http11Suffix => " HTTP/1.1\r\n"u8;

    /// <summary>
    /// Writes the upstream request head: request line, the client's fields minus hop-by-hop ones, X-Forwarded-*,
    /// and framing of our own. Nothing is materialised: every field is copied from the parsed offsets.
    /// The client's <c>transport</c>, when given, makes X-Forwarded-Proto https over TLS and carries the verified client
    /// certificate; <c>clientCertificateHeader</c> is the listener's <c>client_certificates.forward_header</c> (lower
    /// case): incoming copies are dropped, and the subject, when there is one, is written under that name.
    /// The route's filter context (<c>edits</c>), when its filters ran: fields they asked to drop are skipped and fields
    /// they added are written after the client's (identity forwarding).
    /// The route's <c>rewrite</c>, when it has one, replaces the path in the request line and nowhere else: the head
    /// keeps the client's target for logs, metrics and traces.
    /// </summary>
    public static void WriteHead(PipeWriter output, RequestHead head, ForwardedModel forwarded, IPAddress clientAddress,
        DestinationState destination, RequestTelemetry? telemetry = null, ClientTransport? transport = null,
        byte[]? clientCertificateHeader = null, Pipeline.RequestContext? edits = null, Routing.PathRewrite? rewrite = null)
    {
        var writer = new HeadWriter(output);
        writer.Write(head.MethodBytes);
        writer.Write(" "u8);
        if (rewrite is not null && Routing.PathRewrite.AppliesTo(head))
        {
            rewrite.WriteTarget(ref writer, head);
        }
        else
        {
            writer.Write(head.Target);
        }
        writer.Write(Http11Suffix);

        WriteFields(ref writer, head, forwarded, clientAddress, destination, telemetry, transport, clientCertificateHeader, edits);

        if (head.Chunked)
        {
            writer.Write("transfer-encoding: chunked\r\n"u8);
        }
        else if (head.ContentLength >= 0)
        {
            writer.WriteContentLength(head.ContentLength);
        }

        if (head.IsUpgrade && head.TryGetHeader("upgrade"u8, out ReadOnlySpan<byte> protocol))
        {
            writer.Write("connection: upgrade\r\n"u8);
            writer.WriteField("upgrade"u8, protocol);
        }
        writer.Write("\r\n"u8);
        writer.Commit();
    }

    /// <summary>The field lines below, into a pipe of their own (the HTTP/2 client's, re-encoded with HPACK).</summary>
    public static void WriteFields(PipeWriter output, RequestHead head, ForwardedModel forwarded, IPAddress clientAddress,
        DestinationState destination, RequestTelemetry? telemetry = null, ClientTransport? transport = null,
        byte[]? clientCertificateHeader = null, Pipeline.RequestContext? edits = null)
    {
        var writer = new HeadWriter(output);
        WriteFields(ref writer, head, forwarded, clientAddress, destination, telemetry, transport, clientCertificateHeader, edits);
        writer.Commit();
    }

    /// <summary>
    /// The field lines both protocols send upstream: the client's end-to-end fields minus what filters, tracing and
    /// forwarding replace, then ours (request id, trace context, client certificate, filter additions, Host when the
    /// client sent none, X-Forwarded-*). No framing and no connection fields: HTTP/1.1 adds its own after these, and
    /// the HTTP/2 client turns the lines into a field block (Http2/Client/Http2RequestEncoder), so both protocols
    /// share one source of truth for what is added and removed.
    /// </summary>
    public static void WriteFields(ref HeadWriter writer, RequestHead head, ForwardedModel forwarded, IPAddress clientAddress,
        DestinationState destination, RequestTelemetry? telemetry = null, ClientTransport? transport = null,
        byte[]? clientCertificateHeader = null, Pipeline.RequestContext? edits = null)
    {
        if (edits is { HasUpstreamEdits: false })
        {
            edits = null;
        }
        // Tracing on: the client's traceparent/tracestate are replaced by ours (W3C Trace Context section 3.2.1).
        bool tracing = telemetry?.Tracing is not null;
        telemetry?.UpstreamRequestStarting(head, destination);

        ForwardedMode mode = forwarded.Mode;
        if (mode == ForwardedMode.Trust)
        {
            mode = forwarded.IsTrusted(clientAddress) ? ForwardedMode.Append : ForwardedMode.Replace;
        }

        int xffCount = 0;
        bool hasProto = false, hasHost = false;
        HeaderField[] fields = head.Fields;
        for (int i = 0; i < head.FieldCount; i++)
        {
            ref readonly HeaderField f = ref fields[i];
            if (f.HopByHop)
            {
                continue;
            }
            if (edits is not null && edits.IsRemovedUpstream(head.Name(i)))
            {
                continue; // a filter owns this name (e.g. x-auth-subject): the client's copy must not reach the upstream
            }
            if (f.Known == KnownHeader.None && head.Name(i).Contains((byte)'_')
                && ProxyOwnedFields.Contains(head.Name(i), edits, mode != ForwardedMode.Off, clientCertificateHeader))
            {
                continue;
            }
            if (head.RequestIdGenerated && f.Known == KnownHeader.None && head.Name(i).EqualsIgnoreCaseAscii(RequestId.FieldName))
            {
                continue; // the client's id was invalid: ours replaces it below
            }
            if (tracing && f.Known == KnownHeader.None && TraceContext.IsTraceField(head.Name(i)))
            {
                continue;
            }
            if (clientCertificateHeader is not null && f.Known == KnownHeader.None && head.Name(i).EqualsIgnoreCaseAscii(clientCertificateHeader))
            {
                continue; // only the proxy vouches for a client certificate: a client's own copy is dropped
            }
            if (mode != ForwardedMode.Off)
            {
                switch (f.Known)
                {
                    case KnownHeader.XForwardedFor:
                        xffCount++;
                        continue; // rewritten below, as one field
                    case KnownHeader.XForwardedProto:
                        if (mode == ForwardedMode.Replace)
                        {
                            continue;
                        }
                        hasProto = true;
                        break;
                    case KnownHeader.XForwardedHost:
                        if (mode == ForwardedMode.Replace)
                        {
                            continue;
                        }
                        hasHost = true;
                        break;
                }
            }
            writer.WriteField(head.Name(i), head.Value(i));
        }

        if (head.RequestIdGenerated)
        {
            writer.WriteField(RequestId.FieldName, head.RequestIdValue);
        }
        if (tracing)
        {
            telemetry!.WriteTraceFields(ref writer, head);
        }

        if (clientCertificateHeader is not null && transport?.ClientCertificateSubjectBytes is { } subject)
        {
            writer.WriteField(clientCertificateHeader, subject);
        }

        if (edits is not null)
        {
            writer.Write(edits.UpstreamAddedFields);
        }

        if (head.HostIndex < 0)
        {
            // HTTP/1.0 without Host: name the destination (RFC 9112 section 3.2 requires Host in 1.1).
            writer.WriteField("host"u8, destination.HostHeader);
        }

        if (mode != ForwardedMode.Off)
        {
            writer.Write("x-forwarded-for: "u8);
            if (mode == ForwardedMode.Append && xffCount > 0)
            {
                for (int i = 0; i < head.FieldCount; i++)
                {
                    if (fields[i].Known == KnownHeader.XForwardedFor && !fields[i].HopByHop)
                    {
                        writer.Write(head.Value(i));
                        writer.Write(", "u8);
                    }
                }
            }
            // Formatted per request rather than kept per connection: idle connections stay small.
            clientAddress.TryFormat(writer.Reserve(64), out int ipLength);
            writer.Advance(ipLength);
            writer.Write("\r\n"u8);
            if (!hasProto)
            {
                writer.Write(transport is { IsSecure: true } ? "x-forwarded-proto: https\r\n"u8 : "x-forwarded-proto: http\r\n"u8);
            }
            if (!hasHost && head.HostIndex >= 0)
            {
                writer.WriteField("x-forwarded-host"u8, head.Host);
            }
        }
    }

}
