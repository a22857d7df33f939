using System.Diagnostics.CodeAnalysis;
using System.Text;
using Proxy.Http;

namespace Proxy.Routing;

/// <summary>
/// One piece of a compiled rewrite template: literal bytes, or a reference to a parameter or catch-all of the route's
/// match template, named by its segment index there.
/// </summary>
internal readonly struct RewritePart
{
    public RewritePart(byte[] literal)
    {
        Literal = literal;
        Segment = -1;
    }

    public RewritePart(int segment, bool catchAll)
    {
        Literal = [];
        Segment = segment;
        CatchAll = catchAll;
    }

    /// <summary>The bytes to write for a literal piece; empty for a capture.</summary>
    public byte[] Literal { get; }

    /// <summary>Index of the captured segment in the match template; -1 for a literal piece.</summary>
    public int Segment { get; }

    /// <summary>The capture is the match template's catch-all: every remaining segment, slashes included (maybe empty).</summary>
    public bool CatchAll { get; }
}

/// <summary>
/// A route's <c>rewrite: { path }</c> compiled at load (docs/routing.md, "Path rewrite"): literal byte pieces and
/// references to the route's match template captures. It runs last, as the upstream request's target is written,
/// so routing, policies, access logs, metrics and traces all keep the client's path. Immutable and shared by every
/// request of the route; writing allocates nothing.
/// </summary>
/// <remarks>
/// Captures are cut from the path as the proxy forwards it (the parser's normalisation already applied, see
/// Http1RequestReader.NormalizePercentEncoding), byte for byte: nothing is decoded or encoded again. The query (from
/// '?') follows unchanged.
/// </remarks>
internal sealed class PathRewrite
{
    private readonly RewritePart[] _parts;
    private readonly int _literalLength;

    private PathRewrite(string source, RewritePart[] parts)
    {
        Source = source;
        _parts = parts;
        foreach (var part in parts)
        {
            _literalLength += part.Literal.Length;
        }
    }

    /// <summary>As configured.</summary>
    public string Source { get; }

    public ReadOnlySpan<RewritePart> Parts => _parts;

    /// <summary>Compiles a template validation accepted (<see cref="TryCompile"/>).</summary>
    public static PathRewrite Compile(string template, string? matchPath)
        => TryCompile(template, matchPath, out var rewrite, out var error) ? rewrite : throw new FormatException(error);

    /// <summary>
    /// Parses <paramref name="template"/>: literal text and <c>{name}</c> placeholders, each naming a parameter
    /// (<c>{id}</c>) or the catch-all (<c>{**rest}</c>, referred to as <c>{rest}</c>; <c>{**rest}</c> and <c>{*rest}</c>
    /// are accepted too, as YARP's <c>PathPattern</c> spells them) of <paramref name="matchPath"/>, which must be a
    /// valid match template (or null: no captures). The error says what is wrong, for the caller to prefix and place.
    /// </summary>
    public static bool TryCompile(string template, string? matchPath, [NotNullWhen(true)] out PathRewrite? rewrite,
        [NotNullWhen(false)] out string? error)
    {
        rewrite = null;
        if (template.Length == 0 || template[0] != '/')
        {
            error = $"path '{template}' must start with '/'";
            return false;
        }
        Dictionary<string, (int Segment, bool CatchAll)> captures = Captures(matchPath);

        var parts = new List<RewritePart>();
        var literal = new StringBuilder();
        for (int i = 0; i < template.Length; i++)
        {
            char c = template[i];
            if (c == '}')
            {
                error = $"path '{template}' has a '}}' without its '{{' at offset {i}";
                return false;
            }
            if (c == '{')
            {
                int close = template.IndexOfAny(['{', '}'], i + 1);
                if (close < 0 || template[close] != '}')
                {
                    error = $"path '{template}' has a '{{' without its '}}' at offset {i}";
                    return false;
                }
                string placeholder = template[i..(close + 1)];
                string name = template[(i + 1)..close].TrimStart('*');
                if (name.Length == 0)
                {
                    error = $"path '{template}': placeholder '{placeholder}' has no name";
                    return false;
                }
                if (!captures.TryGetValue(name, out var capture))
                {
                    error = captures.Count == 0
                        ? $"path '{template}' uses placeholder '{placeholder}' but the route's match path "
                          + (matchPath is null ? "is not set" : $"'{matchPath}' has no parameters")
                          + ", so there is nothing to substitute; capture it in match.path (like '/api/{**rest}') or write a fixed path"
                        : $"path '{template}': unknown placeholder '{placeholder}'; match.path '{matchPath}' captures "
                          + string.Join(", ", captures.Keys.Select(k => "{" + k + "}"));
                    return false;
                }
                Flush(parts, literal);
                parts.Add(new RewritePart(capture.Segment, capture.CatchAll));
                i = close;
                continue;
            }
            if (c is '?' or '#')
            {
                error = $"path '{template}' contains '{c}': the rewrite sets the path only, and the client's query is appended unchanged";
                return false;
            }
            if (c <= ' ' || c >= 0x7F)
            {
                error = $"path '{template}' contains '{(c <= ' ' || c == 0x7F ? $"\\x{(int)c:X2}" : c.ToString())}', which cannot appear in a request target; percent-encode it (RFC 3986 section 2.1)";
                return false;
            }
            if (c == '%' && (i + 2 >= template.Length || !char.IsAsciiHexDigit(template[i + 1]) || !char.IsAsciiHexDigit(template[i + 2])))
            {
                error = $"path '{template}' has a '%' not followed by two hex digits; write '%25' for a literal '%'";
                return false;
            }
            literal.Append(c);
        }
        Flush(parts, literal);

        foreach (string segment in template[1..].Split('/'))
        {
            if (!segment.Contains('{') && segment.Replace("%2e", ".", StringComparison.OrdinalIgnoreCase) is "." or "..")
            {
                error = $"path '{template}' has the dot segment '{segment}', which the upstream would resolve against the path; write the path it stands for";
                return false;
            }
        }

        rewrite = new PathRewrite(template, [.. parts]);
        error = null;
        return true;
    }

    /// <summary>
    /// Names of the match template's parameters and catch-all, as <see cref="RouteTemplate"/> parses them, with their
    /// segment index (names compare as validation does: ignoring case). None without a match path, or with one that
    /// does not parse (validation reports that).
    /// </summary>
    private static Dictionary<string, (int Segment, bool CatchAll)> Captures(string? matchPath)
    {
        var captures = new Dictionary<string, (int, bool)>(StringComparer.OrdinalIgnoreCase);
        if (matchPath is null || !RouteTemplate.TryParse(matchPath, out RouteTemplate? match, out _))
        {
            return captures;
        }
        for (int i = 0; i < match.Segments.Length; i++)
        {
            if (match.Segments[i].Name is { } name)
            {
                captures.TryAdd(name, (i, match.Segments[i].Kind == SegmentKind.CatchAll));
            }
        }
        return captures;
    }

    private static void Flush(List<RewritePart> parts, StringBuilder literal)
    {
        if (literal.Length > 0)
        {
            parts.Add(new RewritePart(Encoding.ASCII.GetBytes(literal.ToString())));
            literal.Clear();
        }
    }

    /// <summary>
    /// The text a capture stands for in <paramref name="path"/> (origin-form, no query). The match template's segments
    /// before the capture each took exactly one path segment (a literal or a parameter; the catch-all is last), so
    /// walking them is skipping that many '/'-separated segments. A parameter is the segment there, the catch-all
    /// everything after it (empty when the path ends first: "/api" and "/api/" for "/api/{**rest}").
    /// </summary>
    public static ReadOnlySpan<byte> Capture(ReadOnlySpan<byte> path, int segment, bool catchAll)
    {
        ReadOnlySpan<byte> rest = path.IsEmpty ? path : path[1..];
        for (int i = 0; i < segment; i++)
        {
            int slash = rest.IndexOf((byte)'/');
            if (slash < 0)
            {
                // Only a catch-all meets the end of the path early; a matched route's parameter never does.
                return default;
            }
            rest = rest[(slash + 1)..];
        }
        if (catchAll)
        {
            return rest;
        }
        int end = rest.IndexOf((byte)'/');
        return end < 0 ? rest : rest[..end];
    }

    /// <summary>What <paramref name="part"/> writes for a request whose path is <paramref name="path"/>.</summary>
    private static ReadOnlySpan<byte> Piece(in RewritePart part, ReadOnlySpan<byte> path)
        => part.Segment < 0 ? part.Literal : Capture(path, part.Segment, part.CatchAll);

    /// <summary>
    /// The rewrite applies to origin-form targets; "*" (OPTIONS, RFC 9112 section 3.2.4), which only a route without a
    /// path can match, is forwarded as it came.
    /// </summary>
    public static bool AppliesTo(RequestHead head) => head.PathLength > 0 && head.Buffer[head.TargetStart] == (byte)'/';

    /// <summary>Length of the rewritten target of <paramref name="head"/>, query included.</summary>
    public int TargetLength(RequestHead head)
    {
        ReadOnlySpan<byte> path = head.Path;
        int length = _literalLength + head.TargetLength - head.PathLength;
        foreach (ref readonly RewritePart part in _parts.AsSpan())
        {
            if (part.Segment >= 0)
            {
                length += Piece(in part, path).Length;
            }
        }
        return length;
    }

    /// <summary>Writes the rewritten target of <paramref name="head"/> (an origin-form one: <see cref="AppliesTo"/>) straight into the request head.</summary>
    public void WriteTarget(ref HeadWriter writer, RequestHead head)
    {
        ReadOnlySpan<byte> path = head.Path;
        foreach (ref readonly RewritePart part in _parts.AsSpan())
        {
            writer.Write(Piece(in part, path));
        }
        writer.Write(head.Target[head.PathLength..]);
    }

    /// <summary>Copies the rewritten target into <paramref name="destination"/>, sized with <see cref="TargetLength"/>; returns the length.</summary>
    public int CopyTarget(RequestHead head, Span<byte> destination)
    {
        ReadOnlySpan<byte> path = head.Path;
        int length = 0;
        foreach (ref readonly RewritePart part in _parts.AsSpan())
        {
            ReadOnlySpan<byte> piece = Piece(in part, path);
            piece.CopyTo(destination[length..]);
            length += piece.Length;
        }
        ReadOnlySpan<byte> query = head.Target[head.PathLength..];
        query.CopyTo(destination[length..]);
        return length + query.Length;
    }

    public override string ToString() => Source;
}
