using Proxy.Pipeline.Filters;

namespace Proxy.Configuration;

// The request_body kind: a request-body phase filter (max_bytes, content_types, json).
internal static partial class PolicyCompiler
{
    private static readonly string[] s_requestBodyKeys = ["max_bytes", "content_types", "json"];

    /// <summary>The body limit when <c>max_bytes</c> is not given.</summary>
    internal const long DefaultRequestBodyMaxBytes = 1L << 20;

    private static RequestBodyFilter? BuildRequestBody(PolicyConfig policy, Located<string> kind, ConfigErrorList errors, RequestBodyFilter? running = null)
    {
        int before = errors.Count;
        long maxBytes = DefaultRequestBodyMaxBytes;
        var contentTypes = new List<string>();
        bool json = false;
        foreach (var setting in policy.Settings)
        {
            if (!CheckKey(setting, s_requestBodyKeys, "request_body", errors))
            {
                continue;
            }
            if (setting.Key.Value == "content_types")
            {
                if (setting.List is not { } list)
                {
                    errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a list of media types for 'content_types' (e.g. [application/json])");
                    continue;
                }
                if (list.Count == 0)
                {
                    errors.Add(setting.Key.Mark, $"request_body policy '{policy.Name.Value}' would refuse every body: its 'content_types' list is empty");
                }
                foreach (var item in list)
                {
                    // RFC 9110 section 8.3.1: media-type = type "/" subtype, both tokens; parameters are not matched.
                    int slash = item.Value.IndexOf('/');
                    if (slash <= 0 || !ConfigSyntax.IsToken(item.Value[..slash]) || !ConfigSyntax.IsToken(item.Value[(slash + 1)..]))
                    {
                        errors.Add(item.Mark, $"invalid media type '{item.Value}': type/subtype, both tokens, no parameters (e.g. application/json)");
                        continue;
                    }
                    contentTypes.Add(item.Value);
                }
                continue;
            }
            if (Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            if (setting.Key.Value == "max_bytes")
            {
                if (!ConfigValues.TryParseSize(value.Value, out maxBytes) || maxBytes <= 0)
                {
                    errors.Add(value.Mark, $"invalid size '{value.Value}' for 'max_bytes': a positive size such as 65536, 64KiB or 1MiB");
                }
                continue;
            }
            if (value.Value is not ("true" or "false"))
            {
                errors.Add(value.Mark, $"expected true or false for 'json', got '{value.Value}'");
                continue;
            }
            json = value.Value == "true";
        }
        if (errors.Count != before)
        {
            return null;
        }
        return new RequestBodyFilter(maxBytes, contentTypes, json, running);
    }
}
