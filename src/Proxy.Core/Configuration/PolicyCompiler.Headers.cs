using System.Text;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Configuration;

// The header rewrite kinds: request_headers (the request sent upstream, per try) and response_headers (the response
// sent to the client). Same keys for both: add and set (maps of name: value), remove (a list of names).
internal static partial class PolicyCompiler
{
    private static readonly string[] s_headerRewriteKeys = ["add", "set", "remove"];

    /// <summary>Fields the proxy writes itself: framing and connection management (RFC 9112 sections 6 and 9.6), and Host upstream.</summary>
    private static readonly string[] s_reservedResponseFields = ["content-length", "transfer-encoding", "connection"];
    private static readonly string[] s_reservedRequestFields =
        ["content-length", "transfer-encoding", "connection", "host", "te", "upgrade", "keep-alive", "proxy-connection"];

    private static IProxyFilter? BuildHeaderRewrite(PolicyConfig policy, Located<string> kind, ConfigErrorList errors)
    {
        int before = errors.Count;
        string name = policy.Name.Value;
        bool request = kind.Value == "request_headers";
        string[] reserved = request ? s_reservedRequestFields : s_reservedResponseFields;
        var remove = new List<string>();
        var addNames = new List<string>();
        var addValues = new List<string>();
        var setNames = new List<string>();
        var setValues = new List<string>();
        bool any = false;
        foreach (var setting in policy.Settings)
        {
            any = true;
            if (!CheckKey(setting, s_headerRewriteKeys, kind.Value, errors))
            {
                continue;
            }
            if (setting.Key.Value == "remove")
            {
                if (setting.List is not { } list)
                {
                    errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a list of header names for 'remove' (e.g. [server, x-powered-by])");
                    continue;
                }
                foreach (var item in list)
                {
                    if (CheckFieldName(item, reserved, kind.Value, errors))
                    {
                        remove.Add(item.Value.ToLowerInvariant());
                    }
                }
                continue;
            }
            if (setting.Map is not { } map)
            {
                errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark,
                    $"expected a map of header names to values for '{setting.Key.Value}' (e.g. {setting.Key.Value}: {{ x-frame-options: DENY }})");
                continue;
            }
            foreach (var entry in map)
            {
                if (!CheckFieldName(entry.Key, reserved, kind.Value, errors))
                {
                    continue;
                }
                if (entry.Scalar is not { } value)
                {
                    errors.Add(entry.Key.Mark, $"expected a single value for header '{entry.Key.Value}'");
                    continue;
                }
                if (!ConfigSyntax.IsFieldValue(value.Value) || value.Value.Any(c => c > '\x7e'))
                {
                    errors.Add(value.Mark, $"invalid value for header '{entry.Key.Value}': printable ASCII and tabs only (RFC 9110 section 5.5)");
                    continue;
                }
                (setting.Key.Value == "add" ? addNames : setNames).Add(entry.Key.Value.ToLowerInvariant());
                (setting.Key.Value == "add" ? addValues : setValues).Add(value.Value.Trim());
            }
        }
        if (!any)
        {
            errors.Add(kind.Mark, $"{kind.Value} policy '{name}' has nothing to do: give it 'add', 'set' or 'remove'");
        }
        if (errors.Count != before)
        {
            return null;
        }
        // set = remove every field of that name, then add one.
        remove.AddRange(setNames);
        addNames.AddRange(setNames);
        addValues.AddRange(setValues);
        var edits = new HeaderRewrite(
            remove.Distinct(StringComparer.Ordinal).Select(Encoding.ASCII.GetBytes).ToArray(),
            addNames.Select(Encoding.ASCII.GetBytes).ToArray(),
            addValues.Select(Encoding.ASCII.GetBytes).ToArray());
        return request ? new UpstreamHeaderRewriteFilter(edits) : new ResponseHeaderRewriteFilter(edits);
    }

    private static bool CheckFieldName(Located<string> name, string[] reserved, string kind, ConfigErrorList errors)
    {
        if (!ConfigSyntax.IsToken(name.Value))
        {
            errors.Add(name.Mark, $"invalid header name '{name.Value}': a token (letters, digits and !#$%&'*+-.^_`|~)");
            return false;
        }
        if (Array.IndexOf(reserved, name.Value.ToLowerInvariant()) >= 0)
        {
            errors.Add(name.Mark, $"{kind} cannot edit '{name.Value}': the proxy writes it (reserved: {string.Join(", ", reserved)})");
            return false;
        }
        return true;
    }
}
