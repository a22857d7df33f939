using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Proxy.Pipeline.Filters;

/// <summary>The compiled settings of one <c>deny</c> policy (a small WAF).</summary>
internal sealed record DenyOptions
{
    public required string PolicyName { get; init; }
    public bool PathTraversal { get; init; }
    public bool SqlInjection { get; init; }
    public bool Xss { get; init; }
    /// <summary>Methods allowed through (exact, case-sensitive as RFC 9110 section 9.1 says); empty: any.</summary>
    public IReadOnlyList<string> Methods { get; init; } = [];
    /// <summary>Substrings refused (ASCII case-insensitive) in the decoded path, query and header values.</summary>
    public IReadOnlyList<string> Patterns { get; init; } = [];
}

/// <summary>The rules of a <c>deny</c> policy; each refusal names one in its details code and problem body.</summary>
internal enum DenyRule : byte
{
    None = 0,
    Method,
    PathTraversal,
    SqlInjection,
    Xss,
    Pattern,
}

/// <summary>
/// The built-in <c>deny</c> policy: refuses requests whose method is not allowed, or whose path, query or header values
/// carry a path traversal, SQL injection or XSS signature, or one of the configured patterns. Signatures are compiled
/// into <see cref="SearchValues{T}"/> of strings (a vectorised multi-substring search, ASCII case-insensitive) and run
/// over each part once percent-decoded (RFC 3986 section 2.1) and whitespace-normalised, into a stack or pooled buffer:
/// no regular expressions and no allocation per request. A refusal is 403 with an RFC 9457 problem naming the rule.
/// </summary>
/// <remarks>
/// This is a coarse screen in front of the application, not a substitute for parameterised queries and output
/// encoding: signatures catch the common probes (scanners, copy-pasted payloads) and miss crafted ones.
/// </remarks>
internal sealed class DenyFilter : IRequestHeadersFilter, IRequestTrailerScreen, IPolicyDecisionCounters
{
    private const int StackLimit = 256;

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();

    // Indexed by DenyRule.
    private static readonly string[] s_details = ["", "waf_method", "waf_path_traversal", "waf_sql_injection", "waf_xss", "waf_pattern"];
    private static readonly string[] s_ruleNames = ["", "methods", "path_traversal", "sql_injection", "xss", "patterns"];

    // After decoding: "..", "/" and "\" were written in clear, so what is left encoded was encoded twice (%252e).
    private static readonly SearchValues<string> s_traversal = SearchValues.Create(
        ["../", "..\\", "=..&", "%2e", "%2f", "%5c", "%00", "\0", "/etc/passwd", "c:\\windows", "/proc/self/"], StringComparison.OrdinalIgnoreCase);

    // Whitespace runs are one space by now, so "union   select" and "union+select" (query) read "union select".
    private static readonly SearchValues<string> s_sql = SearchValues.Create(
    [
        "union select", "union all select", "' or '", "' or 1", "\" or \"", " or 1=1", "' and '", "' and 1", "'--", "' --", "'#",
        "; drop ", "; delete ", "; insert ", "; update ", "; shutdown", "sleep(", "benchmark(", "waitfor delay", "pg_sleep(",
        "information_schema", "xp_cmdshell", "load_file(", "into outfile", "into dumpfile", "/**/", "@@version",
    ], StringComparison.OrdinalIgnoreCase);

    private static readonly SearchValues<string> s_xss = SearchValues.Create(
    [
        "<script", "</script", "javascript:", "vbscript:", "onerror=", "onload=", "onmouseover=", "onfocus=", "onclick=",
        "<iframe", "<svg", "<img", "<object", "<embed", "document.cookie", "alert(", "eval(", "expression(", "srcdoc=",
    ], StringComparison.OrdinalIgnoreCase);

    private readonly SearchValues<string>? _patterns;
    private readonly byte[][] _methods;
    private readonly bool _pathTraversal;
    private readonly bool _sql;
    private readonly bool _xss;
    private readonly bool _scansText;
    private readonly byte[][] _bodies;
    private readonly PolicyDecisionCounts _counts;

    /// <param name="options">The compiled policy.</param>
    /// <param name="running">On a reload, the running <c>deny</c> filter of the same policy name, if any: its decision
    /// counts go on (<see cref="PolicyDecisionCounts"/>).</param>
    public DenyFilter(DenyOptions options, DenyFilter? running = null)
    {
        Options = options;
        _counts = PolicyDecisionCounts.ContinueFrom(running?._counts);
        _pathTraversal = options.PathTraversal;
        _sql = options.SqlInjection;
        _xss = options.Xss;
        _patterns = options.Patterns.Count > 0 ? SearchValues.Create([.. options.Patterns], StringComparison.OrdinalIgnoreCase) : null;
        _methods = options.Methods.Select(Encoding.ASCII.GetBytes).ToArray();
        _scansText = _pathTraversal || _sql || _xss || _patterns is not null;
        _bodies = new byte[s_details.Length][];
        for (int i = 1; i < s_details.Length; i++)
        {
            _bodies[i] = BuildProblem(options.PolicyName, s_ruleNames[i]);
        }
    }

    public DenyOptions Options { get; }

    public long AllowedCount => Volatile.Read(ref _counts.Allowed);

    public long DeniedCount => Volatile.Read(ref _counts.Denied);

    /// <summary>Request trailer fields dropped because a rule refused their value.</summary>
    public long DroppedTrailerCount => Volatile.Read(ref _counts.TrailersDropped);

    IEnumerable<(string Decision, long Count)> IPolicyDecisionCounters.Decisions
        => [("allowed", AllowedCount), ("denied", DeniedCount), ("trailer_dropped", DroppedTrailerCount)];

    public static string DetailsCode(DenyRule rule) => s_details[(int)rule];

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        DenyRule rule = Check(context);
        if (rule == DenyRule.None)
        {
            Interlocked.Increment(ref _counts.Allowed);
            return FilterStatus.Continue;
        }
        return Reject(context, rule);
    }

    /// <summary>The first rule the request breaks, or <see cref="DenyRule.None"/>.</summary>
    public DenyRule Check(RequestContext context)
    {
        if (_methods.Length > 0 && !IsAllowedMethod(context.Method))
        {
            return DenyRule.Method;
        }
        if (!_scansText)
        {
            return DenyRule.None;
        }
        DenyRule rule = Scan(context.Path, isQuery: false, traversal: _pathTraversal);
        if (rule == DenyRule.None)
        {
            rule = Scan(context.Query, isQuery: true, traversal: _pathTraversal);
        }
        for (int i = 0; rule == DenyRule.None && i < context.FieldCount; i++)
        {
            rule = CheckField(context.FieldName(i), context.FieldValue(i));
        }
        return rule;
    }

    /// <summary>A request trailer field is screened as a header field would be (see <see cref="IRequestTrailerScreen"/>).</summary>
    public bool Refuses(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        if (!_scansText || CheckField(name, value) == DenyRule.None)
        {
            return false;
        }
        Interlocked.Increment(ref _counts.TrailersDropped);
        return true;
    }

    private DenyRule CheckField(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
        // Credentials are opaque tokens, never text to screen (and a base64 token can spell anything).
        => Ascii.EqualsIgnoreCase(name, "authorization"u8) ? DenyRule.None : Scan(value, isQuery: false, traversal: false);

    private bool IsAllowedMethod(ReadOnlySpan<byte> method)
    {
        foreach (byte[] allowed in _methods)
        {
            if (method.SequenceEqual(allowed))
            {
                return true;
            }
        }
        return false;
    }

    private DenyRule Scan(ReadOnlySpan<byte> raw, bool isQuery, bool traversal)
    {
        if (raw.IsEmpty)
        {
            return DenyRule.None;
        }
        char[]? rented = null;
        // Decoding only shrinks, so the raw length bounds the decoded text.
        Span<char> buffer = raw.Length <= StackLimit ? stackalloc char[StackLimit] : (rented = ArrayPool<char>.Shared.Rent(raw.Length));
        try
        {
            ReadOnlySpan<char> text = buffer[..Normalize(raw, buffer, isQuery)];
            if (traversal && (text.IndexOfAny(s_traversal) >= 0 || text.EndsWith("/..") || text.EndsWith("\\..") || text.EndsWith("=..") || text.SequenceEqual("..")))
            {
                return DenyRule.PathTraversal;
            }
            if (_sql && text.IndexOfAny(s_sql) >= 0)
            {
                return DenyRule.SqlInjection;
            }
            if (_xss && text.IndexOfAny(s_xss) >= 0)
            {
                return DenyRule.Xss;
            }
            if (_patterns is not null && text.IndexOfAny(_patterns) >= 0)
            {
                return DenyRule.Pattern;
            }
            return DenyRule.None;
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<char>.Shared.Return(rented);
            }
        }
    }

    /// <summary>
    /// Percent-decodes <paramref name="raw"/> once (a malformed escape is kept as written), widening each byte to a char
    /// (Latin-1: signatures are ASCII, so UTF-8 sequences cannot fake one), turns '+' in a query and any ASCII
    /// whitespace into a space, and collapses runs of spaces to one. Returns the length written.
    /// </summary>
    internal static int Normalize(ReadOnlySpan<byte> raw, Span<char> destination, bool isQuery)
    {
        int written = 0;
        bool lastSpace = false;
        for (int i = 0; i < raw.Length; i++)
        {
            int b = raw[i];
            if (b == '%' && i + 2 < raw.Length && HexValue(raw[i + 1]) is >= 0 and var hi && HexValue(raw[i + 2]) is >= 0 and var lo)
            {
                b = (hi << 4) | lo;
                i += 2;
            }
            else if (b == '+' && isQuery)
            {
                b = ' ';
            }
            if (b is ' ' or '\t' or '\r' or '\n' or '\v' or '\f')
            {
                if (lastSpace)
                {
                    continue;
                }
                lastSpace = true;
                b = ' ';
            }
            else
            {
                lastSpace = false;
            }
            destination[written++] = (char)b;
        }
        return written;
    }

    private static int HexValue(byte b) => b switch
    {
        >= (byte)'0' and <= (byte)'9' => b - '0',
        >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
        >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
        _ => -1,
    };

    /// <summary>RFC 9457 problem with a "rule" extension member (section 3.2), so clients and logs can tell rules apart.</summary>
    private static byte[] BuildProblem(string policy, string rule)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("type", "about:blank");
            json.WriteString("title", "Forbidden");
            json.WriteNumber("status", 403);
            json.WriteString("detail", $"The request was refused by rule '{rule}' of policy '{policy}'.");
            json.WriteString("rule", rule);
            json.WriteEndObject();
        }
        return stream.ToArray();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Reject(RequestContext context, DenyRule rule)
    {
        Interlocked.Increment(ref _counts.Denied);
        return context.Respond(403, s_details[(int)rule], s_problemJson, _bodies[(int)rule]);
    }
}
