using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Proxy.Configuration;

/// <summary>
/// Checks and parses the string forms used in the config file (addresses, URLs, CIDRs, path templates,
/// host patterns, tokens). The validator calls them to report errors; the compiler calls them again on
/// values already known to be good, so the rules live in one place.
/// </summary>
internal static class ConfigSyntax
{
    /// <summary>"127.0.0.1:8080", "[::1]:8080", "*:8080" (any IPv4 address). Port 0 asks the OS for a free port.</summary>
    public static bool TryParseListenerAddress(string text, out IPEndPoint endPoint, out string error)
    {
        endPoint = new IPEndPoint(IPAddress.Any, 0);
        string host;
        string port;
        if (text.StartsWith('['))
        {
            int close = text.IndexOf(']');
            if (close < 0)
            {
                error = $"invalid listener address '{text}': missing ']' after the IPv6 address";
                return false;
            }
            host = text[1..close];
            if (close + 1 >= text.Length || text[close + 1] != ':')
            {
                error = $"invalid listener address '{text}': missing ':port' (e.g. [::1]:8080)";
                return false;
            }
            port = text[(close + 2)..];
            if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
            {
                error = $"invalid listener address '{text}': '{host}' is not an IPv6 address";
                return false;
            }
            if (!TryParsePort(port, out int p6, out error, text))
            {
                return false;
            }
            endPoint = new IPEndPoint(v6, p6);
            return true;
        }

        int colon = text.LastIndexOf(':');
        if (colon < 0)
        {
            error = $"invalid listener address '{text}': missing ':port' (e.g. 127.0.0.1:8080)";
            return false;
        }
        host = text[..colon];
        port = text[(colon + 1)..];
        if (host.Contains(':'))
        {
            error = $"invalid listener address '{text}': put IPv6 addresses in brackets (e.g. [::1]:8080)";
            return false;
        }
        IPAddress address;
        if (host == "*")
        {
            address = IPAddress.Any;
        }
        else if (!TryParseIPv4Strict(host, out address))
        {
            error = $"invalid listener address '{text}': '{host}' is not an IP address (use an IPv4 address, [IPv6] or *)";
            return false;
        }
        if (!TryParsePort(port, out int p, out error, text))
        {
            return false;
        }
        endPoint = new IPEndPoint(address, p);
        return true;
    }

    /// <summary>True for an https:// destination (TLS to the upstream).</summary>
    public static bool IsSecureDestination(string text) => text.StartsWith("https://", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// An upstream destination: an absolute http:// or https:// URL with a host and an optional port (default 80 or 443), and
    /// no path, query or credentials, since the engine forwards the client's path unchanged.
    /// IPv6 hosts keep their brackets ("[::1]") so the Host header can be written from them directly.
    /// </summary>
    public static bool TryParseDestination(string text, out string host, out int port, out string error)
    {
        host = "";
        port = 0;
        // https:// destinations speak TLS (the cluster's tls: block, docs/tls.md); the default port follows the scheme.
        if (!(text.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || text.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
            || !Uri.TryCreate(text, UriKind.Absolute, out var uri)
            || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            error = $"destination '{text}' must be an absolute http:// or https:// URL such as http://127.0.0.1:9000";
            return false;
        }
        if (uri.Host.Length == 0)
        {
            error = $"destination '{text}' has no host";
            return false;
        }
        if (uri.UserInfo.Length != 0)
        {
            error = $"destination '{text}' must not contain credentials";
            return false;
        }
        if (uri.AbsolutePath != "/" || uri.Query.Length != 0 || uri.Fragment.Length != 0)
        {
            error = $"destination '{text}' must not have a path, query or fragment (the request's path is forwarded as is)";
            return false;
        }
        if (uri.Port is < 1 or > 65535)
        {
            error = $"destination '{text}': port must be between 1 and 65535";
            return false;
        }
        host = uri.Host;
        port = uri.Port;
        error = "";
        return true;
    }

    /// <summary>"10.0.0.0/8", "::1/128", or a bare address meaning a single host.</summary>
    public static bool TryParseCidr(string text, out IPNetwork network, out string error)
    {
        network = default;
        int slash = text.IndexOf('/');
        var addressText = slash < 0 ? text : text[..slash];
        IPAddress? address;
        if (addressText.Contains(':'))
        {
            if (!IPAddress.TryParse(addressText, out address) || address.AddressFamily != AddressFamily.InterNetworkV6)
            {
                address = null;
            }
        }
        else if (!TryParseIPv4Strict(addressText, out address))
        {
            address = null;
        }
        if (address is null)
        {
            error = $"invalid CIDR '{text}': '{addressText}' is not an IP address";
            return false;
        }
        int maxPrefix = address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        int prefix = maxPrefix;
        if (slash >= 0)
        {
            var prefixText = text[(slash + 1)..];
            if (prefixText.Length == 0 || prefixText.Length > 3 || !prefixText.All(char.IsAsciiDigit)
                || !int.TryParse(prefixText, NumberStyles.None, CultureInfo.InvariantCulture, out prefix) || prefix > maxPrefix)
            {
                error = $"invalid CIDR '{text}': prefix length must be 0-{maxPrefix}";
                return false;
            }
        }
        // A set host bit ("10.1.0.0/8") is usually a typo for a narrower network; say so instead of masking it.
        var bytes = address.GetAddressBytes();
        for (int bit = prefix; bit < bytes.Length * 8; bit++)
        {
            if ((bytes[bit / 8] & (0x80 >> (bit % 8))) != 0)
            {
                for (int b = prefix; b < bytes.Length * 8; b++)
                {
                    bytes[b / 8] &= (byte)~(0x80 >> (b % 8));
                }
                error = $"invalid CIDR '{text}': the address has bits set beyond the /{prefix} prefix (did you mean {new IPAddress(bytes)}/{prefix}?)";
                return false;
            }
        }
        network = new IPNetwork(address, prefix);
        error = "";
        return true;
    }

    /// <summary>
    /// The most segments a path template may have. Matching (<c>RouteTable.Visit</c>) recurses once per segment of the
    /// deepest template a request follows, so an unbounded template let one request overflow the stack and end the
    /// process (200,000 segments did). Real templates have a handful; 128 leaves room and keeps the depth trivial.
    /// </summary>
    public const int MaxTemplateSegments = 128;

    /// <summary>
    /// Path templates: "/exact", "/users/{id}" (a parameter is a whole segment), "/api/{**rest}" or "/api/{*rest}"
    /// (catch-all, last segment only). Returns null when valid, otherwise the reason.
    /// </summary>
    public static string? CheckPathTemplate(string template)
    {
        if (!template.StartsWith('/'))
        {
            return $"path '{template}' must start with '/'";
        }
        int segmentCount = template.AsSpan().Count('/');
        if (segmentCount > MaxTemplateSegments)
        {
            return $"path '{Abbreviate(template)}' has {segmentCount} segments; at most {MaxTemplateSegments} are supported";
        }
        foreach (var c in template)
        {
            if (c is '?' or '#' || c <= ' ' || c == 0x7F)
            {
                return $"path '{template}' contains '{(c <= ' ' || c == 0x7F ? $"\\x{(int)c:X2}" : c.ToString())}', which cannot appear in a request path (match query parameters with 'query')";
            }
        }
        var segments = template[1..].Split('/');
        var names = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        for (int i = 0; i < segments.Length; i++)
        {
            var segment = segments[i];
            if (!segment.Contains('{') && !segment.Contains('}'))
            {
                if (CheckLiteralSegment(template, segment) is { } literalError)
                {
                    return literalError;
                }
                continue;
            }
            if (!segment.StartsWith('{') || !segment.EndsWith('}') || segment.Length < 2
                || segment.IndexOf('{', 1) >= 0 || segment.IndexOf('}') != segment.Length - 1)
            {
                return $"path '{template}': a parameter must be a whole segment, like '/{{id}}' (found '{segment}')";
            }
            var name = segment[1..^1];
            // "{*rest}" is a catch-all too, as in YARP and ASP.NET Core routing (where the two differ only when a URL
            // is generated, which a proxy never does).
            int stars = name.StartsWith("**", StringComparison.Ordinal) ? 2 : name.StartsWith('*') ? 1 : 0;
            if (stars > 0)
            {
                name = name[stars..];
                if (name.StartsWith('*'))
                {
                    return $"path '{template}': '{segment}' is not supported; use '{{**{name.TrimStart('*')}}}' for a catch-all";
                }
                if (i != segments.Length - 1)
                {
                    return $"path '{template}': the catch-all '{segment}' must be the last segment";
                }
            }
            if (name.Length == 0)
            {
                return $"path '{template}': parameter name is empty in '{segment}'";
            }
            foreach (var c in name)
            {
                if (!char.IsAsciiLetterOrDigit(c) && c != '_')
                {
                    return $"path '{template}': parameter name '{name}' may contain only letters, digits and '_'";
                }
            }
            if (!names.Add(name))
            {
                return $"path '{template}': parameter '{name}' appears twice";
            }
        }
        return null;
    }

    /// <summary>
    /// A literal segment that no request can carry as routing sees it (docs/http1-parsing.md): the parser refuses dot
    /// segments and malformed escapes (400), decodes escaped unreserved characters ("%41" is routed as "A") and takes
    /// only visible ASCII. Such a template would make a route that never matches.
    /// </summary>
    private static string? CheckLiteralSegment(string template, string segment)
    {
        if (IsDotSegment(segment))
        {
            return $"path '{template}' has the dot segment '{segment}': requests with one are refused (400), so the route could never match";
        }
        for (int i = 0; i < segment.Length; i++)
        {
            char c = segment[i];
            if (c > '~')
            {
                return $"path '{template}' contains '{c}', which a request can only send percent-encoded (raw bytes above 0x7E are refused); write '{CanonicalPathTemplate(template)}'";
            }
            if (c != '%')
            {
                continue;
            }
            if (i + 2 >= segment.Length || !char.IsAsciiHexDigit(segment[i + 1]) || !char.IsAsciiHexDigit(segment[i + 2]))
            {
                return $"path '{template}' has a '%' not followed by two hex digits: requests with one are refused (400); write '%25' for a literal '%'";
            }
            char decoded = (char)Convert.ToByte(segment.Substring(i + 1, 2), 16);
            if (IsUnreserved(decoded))
            {
                return $"path '{template}' escapes '{decoded}' as '{segment.Substring(i, 3)}': requests are routed with escaped unreserved characters decoded, so the route could never match; write '{CanonicalPathTemplate(template)}'";
            }
            i += 2;
        }
        return null;
    }

    /// <summary>A template as quoted in an error: cut after 100 characters, so a huge one does not flood the output.</summary>
    private static string Abbreviate(string template) => template.Length <= 100 ? template : template[..100] + "...";

    /// <summary>"." or "..", also spelt with "%2e" (RFC 3986 section 2.3: the same character).</summary>
    private static bool IsDotSegment(string segment)
    {
        string dots = segment.Replace("%2e", ".", StringComparison.OrdinalIgnoreCase);
        return dots is "." or "..";
    }

    /// <summary>RFC 3986 section 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".</summary>
    private static bool IsUnreserved(char c) => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_' or '~';

    /// <summary>
    /// A path template as requests spell it when routed: escaped unreserved characters decoded, the hex digits of other
    /// escapes in upper case (RFC 3986 section 6.2.2.1), characters outside ASCII percent-encoded as UTF-8. Applied to
    /// valid templates when compiling, so "/caf%c3%a9" matches what browsers send; also the suggestion in errors.
    /// </summary>
    public static string CanonicalPathTemplate(string template)
    {
        var result = new System.Text.StringBuilder(template.Length);
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < template.Length; i++)
        {
            char c = template[i];
            if (c == '%' && i + 2 < template.Length && char.IsAsciiHexDigit(template[i + 1]) && char.IsAsciiHexDigit(template[i + 2]))
            {
                char decoded = (char)Convert.ToByte(template.Substring(i + 1, 2), 16);
                if (IsUnreserved(decoded))
                {
                    result.Append(decoded);
                }
                else
                {
                    result.Append('%').Append(char.ToUpperInvariant(template[i + 1])).Append(char.ToUpperInvariant(template[i + 2]));
                }
                i += 2;
            }
            else if (c > '~')
            {
                // A surrogate pair is one code point: encode both halves together.
                int length = char.IsHighSurrogate(c) && i + 1 < template.Length && char.IsLowSurrogate(template[i + 1])
                    ? System.Text.Encoding.UTF8.GetBytes(template.AsSpan(i++, 2), utf8)
                    : System.Text.Encoding.UTF8.GetBytes(template.AsSpan(i, 1), utf8);
                foreach (byte b in utf8[..length])
                {
                    result.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
                }
            }
            else
            {
                result.Append(c);
            }
        }
        return result.ToString();
    }

    /// <summary>
    /// Host patterns: an exact name ("api.example.com"), an IP literal ("10.0.0.1", "[::1]") or a wildcard
    /// for any subdomain ("*.example.org"). No port: the Host header's port is ignored when matching.
    /// </summary>
    public static string? CheckHostPattern(string pattern)
    {
        if (pattern.Length == 0)
        {
            return "host pattern is empty";
        }
        if (pattern == "*")
        {
            return "host '*' is not a pattern; leave 'hosts' out to match every host";
        }
        if (pattern.StartsWith('['))
        {
            return pattern.EndsWith(']') && IPAddress.TryParse(pattern[1..^1], out var ip) && ip.AddressFamily == AddressFamily.InterNetworkV6
                ? null
                : $"host '{pattern}' is not a valid bracketed IPv6 address";
        }
        var name = pattern.StartsWith("*.", StringComparison.Ordinal) ? pattern[2..] : pattern;
        if (IPAddress.TryParse(pattern, out var v6) && v6.AddressFamily == AddressFamily.InterNetworkV6)
        {
            // As in the Host header (RFC 3986 section 3.2.2: IP-literal), and so that the colons are not read as a port.
            return $"host '{pattern}' is an IPv6 address: write it in brackets, '[{pattern}]'";
        }
        if (name.Contains(':'))
        {
            return $"host '{pattern}' must not include a port";
        }
        if (name.Length > 253)
        {
            return $"host '{pattern}' is longer than 253 characters";
        }
        foreach (var label in name.Split('.'))
        {
            if (label.Length is 0 or > 63)
            {
                return $"host '{pattern}' has an empty or over-long label";
            }
            foreach (var c in label)
            {
                if (!char.IsAsciiLetterOrDigit(c) && c is not '-' and not '_')
                {
                    return c == '*'
                        ? $"host '{pattern}': a wildcard is allowed only as a whole first label ('*.example.org')"
                        : $"host '{pattern}' contains '{c}', which is not allowed in a host name";
                }
            }
        }
        return null;
    }

    /// <summary>RFC 9110 section 5.6.2: token = 1*tchar.</summary>
    public static bool IsToken(string s)
    {
        if (s.Length == 0)
        {
            return false;
        }
        foreach (var c in s)
        {
            if (!char.IsAsciiLetterOrDigit(c) && "!#$%&'*+-.^_`|~".IndexOf(c) < 0)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>RFC 9110 section 5.5: a field value must not contain CR, LF, NUL or other controls except HTAB.</summary>
    public static bool IsFieldValue(string s)
    {
        foreach (var c in s)
        {
            if ((c < ' ' && c != '\t') || c == 0x7F)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Dotted-quad only: IPAddress.TryParse also takes "127.1" and "10", which are too surprising in config.</summary>
    private static bool TryParseIPv4Strict(string text, out IPAddress address)
    {
        address = IPAddress.None;
        var parts = text.Split('.');
        if (parts.Length != 4)
        {
            return false;
        }
        foreach (var part in parts)
        {
            if (part.Length is 0 or > 3 || !part.All(char.IsAsciiDigit) || int.Parse(part, CultureInfo.InvariantCulture) > 255)
            {
                return false;
            }
        }
        address = IPAddress.Parse(text);
        return true;
    }

    private static bool TryParsePort(string text, out int port, out string error, string whole)
    {
        port = 0;
        if (text.Length == 0)
        {
            error = $"invalid listener address '{whole}': missing port";
            return false;
        }
        if (!text.All(char.IsAsciiDigit))
        {
            error = $"invalid listener address '{whole}': port '{text}' is not a number";
            return false;
        }
        if (text.Length > 5 || (port = int.Parse(text, CultureInfo.InvariantCulture)) > 65535)
        {
            error = $"invalid listener address '{whole}': port {text} is out of range (0-65535)";
            return false;
        }
        error = "";
        return true;
    }
}
