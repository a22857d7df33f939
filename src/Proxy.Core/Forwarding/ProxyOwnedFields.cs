using Proxy.Http;

namespace Proxy.Forwarding;

/// <summary>
/// The request fields the proxy owns: it sets, replaces or removes them in the head it forwards, so a client's copy
/// must not reach the upstream by another way (a request trailer, an underscore spelling). X-Forwarded-* (unless
/// forwarding is off), Forwarded, X-Request-Id, the trace context fields, the listener's client certificate header,
/// and every name the route's filters set or remove.
/// </summary>
internal static class ProxyOwnedFields
{
    /// <summary>
    /// True when <paramref name="name"/> is one of them, reading '_' as '-': CGI-style upstreams (PHP, WSGI, Rack)
    /// map both spellings to one variable, so "x_auth_subject" would pass for the "x-auth-subject" a policy vouches for.
    /// </summary>
    public static bool Contains(ReadOnlySpan<byte> name, Pipeline.RequestContext? edits, bool forwarded, byte[]? clientCertificateHeader)
    {
        if (!name.Contains((byte)'_'))
        {
            return ContainsDashed(name, edits, forwarded, clientCertificateHeader);
        }
        if (name.Length > 128)
        {
            return false; // longer than any name the proxy owns
        }
        Span<byte> dashed = stackalloc byte[name.Length];
        name.CopyTo(dashed);
        dashed.Replace((byte)'_', (byte)'-');
        return ContainsDashed(dashed, edits, forwarded, clientCertificateHeader);
    }

    /// <summary>True when two field names are one to a CGI-style upstream: ASCII case-insensitive, '_' read as '-'.</summary>
    public static bool SameName(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        if (a.Length != b.Length)
        {
            return false;
        }
        for (int i = 0; i < a.Length; i++)
        {
            // OR 0x20 lower-cases a letter; any other byte must match exactly (after '_' became '-').
            byte x = a[i] == (byte)'_' ? (byte)'-' : a[i];
            byte y = b[i] == (byte)'_' ? (byte)'-' : b[i];
            if (x != y && (!char.IsAsciiLetter((char)x) || (x | 0x20) != (y | 0x20)))
            {
                return false;
            }
        }
        return true;
    }

    private static bool ContainsDashed(ReadOnlySpan<byte> name, Pipeline.RequestContext? edits, bool forwarded, byte[]? clientCertificateHeader)
    {
        bool owned = KnownHeaders.Resolve(name) is KnownHeader.XForwardedFor or KnownHeader.XForwardedProto or KnownHeader.XForwardedHost
            ? forwarded
            : name.EqualsIgnoreCaseAscii("forwarded"u8) || name.EqualsIgnoreCaseAscii(RequestId.FieldName)
                || Diagnostics.Tracing.TraceContext.IsTraceField(name);
        return owned
            || (clientCertificateHeader is not null && name.EqualsIgnoreCaseAscii(clientCertificateHeader))
            || (edits is not null && edits.IsRemovedUpstream(name));
    }
}
