using System.Diagnostics.CodeAnalysis;
using System.Text;
using Proxy.Http1;

namespace Proxy.Routing;

/// <summary>
/// Kinds of template segment, in precedence order: at the same position a literal is tried before a
/// parameter, and a parameter before a catch-all. The numeric values are that order.
/// </summary>
internal enum SegmentKind : byte
{
    Literal = 0,
    Parameter = 1,
    CatchAll = 2,
}

/// <summary>One '/'-separated piece of a path template.</summary>
internal readonly struct TemplateSegment
{
    public TemplateSegment(SegmentKind kind, byte[] literal, string? name = null)
    {
        Kind = kind;
        Literal = literal;
        Name = name;
    }

    public SegmentKind Kind { get; }

    /// <summary>A parameter's or catch-all's name as written, without braces or '*' (what a rewrite refers to); null for a literal.</summary>
    public string? Name { get; }

    /// <summary>The segment's bytes for <see cref="SegmentKind.Literal"/> (may be empty: "/a//b", "/"); empty otherwise.</summary>
    public byte[] Literal { get; }
}

/// <summary>
/// A parsed path template. The request path is split after its leading '/' on every '/', so "/" is one
/// empty segment, "/x" is ["x"] and "/x/" is ["x", ""]; a template is split the same way, which is what
/// makes a trailing slash significant. Matching is on the bytes of the normalised request path (escaped unreserved
/// characters decoded, the hex digits of other escapes upper-cased, dot segments refused): case-sensitive
/// otherwise. Literals have the hex digits of their escapes upper-cased the same way.
/// </summary>
internal sealed class RouteTemplate
{
    // Sorts before every segment kind: a template that ends here is tried before a catch-all at the
    // same position (the catch-all would match the same request with zero remaining segments).
    private const int EndRank = -1;

    private RouteTemplate(string? source, TemplateSegment[] segments)
    {
        Source = source;
        Segments = segments;
    }

    /// <summary>The template of a route without a path: a catch-all at the root.</summary>
    public static RouteTemplate MatchAll { get; } = new(null, [new TemplateSegment(SegmentKind.CatchAll, [])]);

    /// <summary>As configured; null for <see cref="MatchAll"/>.</summary>
    public string? Source { get; }

    public TemplateSegment[] Segments { get; }

    public bool EndsWithCatchAll => Segments.Length > 0 && Segments[^1].Kind == SegmentKind.CatchAll;

    public static RouteTemplate Parse(string? path)
        => TryParse(path, out var template, out var error) ? template : throw new FormatException(error);

    /// <summary>
    /// Parses "/x/y" (literals), "/users/{id}" (a parameter: one non-empty segment) and
    /// "/x/{**rest}" (a catch-all, last only: zero or more remaining segments). Null means every path.
    /// </summary>
    public static bool TryParse(string? path, [NotNullWhen(true)] out RouteTemplate? template, [NotNullWhen(false)] out string? error)
    {
        template = null;
        if (path is null)
        {
            template = MatchAll;
            error = null;
            return true;
        }
        if (path.Length == 0 || path[0] != '/')
        {
            error = $"path template '{path}' must start with '/'";
            return false;
        }

        string[] parts = path[1..].Split('/');
        var segments = new TemplateSegment[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            string part = parts[i];
            if (part.StartsWith('{') && part.EndsWith('}') && part.Length >= 2)
            {
                string name = part[1..^1];
                bool catchAll = name.StartsWith('*');
                name = name.TrimStart('*');
                if (name.Length == 0 || name.AsSpan().IndexOfAny("{}*/") >= 0)
                {
                    error = $"path template '{path}': invalid parameter '{part}'";
                    return false;
                }
                if (catchAll && i != parts.Length - 1)
                {
                    error = $"path template '{path}': catch-all '{part}' must be the last segment";
                    return false;
                }
                segments[i] = new TemplateSegment(catchAll ? SegmentKind.CatchAll : SegmentKind.Parameter, [], name);
                continue;
            }
            if (part.AsSpan().IndexOfAny("{}?#") >= 0)
            {
                error = $"path template '{path}': segment '{part}' mixes text and parameters or contains '?'/'#' (a parameter must be a whole segment)";
                return false;
            }
            // Request paths reach routing with the hex digits of their escapes upper-cased (Http1RequestReader):
            // a literal written "/caf%c3%a9" is normalised the same way, or it could never match.
            byte[] literal = Encoding.UTF8.GetBytes(part);
            Http1Syntax.UpperCaseEscapes(literal);
            segments[i] = new TemplateSegment(SegmentKind.Literal, literal);
        }

        template = new RouteTemplate(path, segments);
        error = null;
        return true;
    }

    /// <summary>
    /// Path precedence: negative when <paramref name="a"/> is tried first. Kinds are compared position by
    /// position (literal, then parameter, then catch-all; a template that ends before a catch-all comes
    /// first). Literal values are not compared: two templates that differ only there can never match the
    /// same request. This is exactly the order in which the trie's depth-first search meets templates.
    /// </summary>
    public static int ComparePrecedence(RouteTemplate a, RouteTemplate b)
    {
        for (int i = 0; ; i++)
        {
            int ka = i < a.Segments.Length ? (int)a.Segments[i].Kind : EndRank;
            int kb = i < b.Segments.Length ? (int)b.Segments[i].Kind : EndRank;
            if (ka != kb)
            {
                return ka.CompareTo(kb);
            }
            if (ka == EndRank || ka == (int)SegmentKind.CatchAll)
            {
                return 0;
            }
        }
    }

    /// <summary>True when every path <paramref name="other"/> matches is also matched by this template.</summary>
    public bool Covers(RouteTemplate other)
    {
        for (int i = 0; ; i++)
        {
            int mine = i < Segments.Length ? (int)Segments[i].Kind : EndRank;
            int theirs = i < other.Segments.Length ? (int)other.Segments[i].Kind : EndRank;
            if (mine == (int)SegmentKind.CatchAll)
            {
                return true;
            }
            if (theirs == (int)SegmentKind.CatchAll || mine == EndRank || theirs == EndRank)
            {
                // Their catch-all matches paths of any length; only a catch-all covers that. Otherwise
                // both must end at the same position.
                return mine == theirs;
            }
            if (mine == (int)SegmentKind.Literal)
            {
                if (theirs != (int)SegmentKind.Literal || !Segments[i].Literal.AsSpan().SequenceEqual(other.Segments[i].Literal))
                {
                    return false;
                }
            }
            else if (theirs == (int)SegmentKind.Literal && other.Segments[i].Literal.Length == 0)
            {
                // A parameter needs a non-empty segment, so it does not cover an empty literal.
                return false;
            }
        }
    }

    /// <summary>Matches one request path (no query). Used by the linear baseline and by tests; the table uses its trie.</summary>
    public bool Matches(ReadOnlySpan<byte> path)
    {
        if (path.IsEmpty || path[0] != (byte)'/')
        {
            // Not origin-form ("*" of OPTIONS): only a root catch-all takes it.
            return Segments.Length == 1 && Segments[0].Kind == SegmentKind.CatchAll;
        }

        ReadOnlySpan<byte> rest = path[1..];
        bool hasMore = true;
        foreach (ref readonly TemplateSegment segment in Segments.AsSpan())
        {
            if (segment.Kind == SegmentKind.CatchAll)
            {
                return true;
            }
            if (!hasMore)
            {
                return false;
            }
            ReadOnlySpan<byte> current = NextSegment(ref rest, ref hasMore);
            if (segment.Kind == SegmentKind.Literal ? !current.SequenceEqual(segment.Literal) : current.IsEmpty)
            {
                return false;
            }
        }
        return !hasMore;
    }

    /// <summary>Cuts the next segment off <paramref name="rest"/>; clears <paramref name="hasMore"/> after the last one.</summary>
    internal static ReadOnlySpan<byte> NextSegment(ref ReadOnlySpan<byte> rest, ref bool hasMore)
    {
        int slash = rest.IndexOf((byte)'/');
        ReadOnlySpan<byte> segment;
        if (slash < 0)
        {
            segment = rest;
            rest = default;
            hasMore = false;
        }
        else
        {
            segment = rest[..slash];
            rest = rest[(slash + 1)..];
        }
        return segment;
    }

    public override string ToString() => Source ?? "/{**}";
}
