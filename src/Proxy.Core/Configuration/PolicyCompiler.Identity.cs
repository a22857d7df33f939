using System.Globalization;
using Proxy.Model;
using Proxy.Pipeline.Filters;

namespace Proxy.Configuration;

// The identity and WAF policy kinds: api_key, introspection, deny. Kept apart from the rate-limit and ip_filter
// compile code so that each part can change without touching the other.
internal static partial class PolicyCompiler
{
    private static readonly string[] s_apiKeyKeys = ["header", "query", "keys", "keys_file", "forward_identity"];
    // Claims the jwt policy reads itself: a roles claim or required claim of that name would shadow them.
    private static readonly string[] s_reservedClaims = ["exp", "nbf", "iss", "aud", "scope", "scp", "sub"];
    private static readonly string[] s_forwardIdentityKeys = ["subject", "client_id", "consumer", "plan"];
    private static readonly string[] s_apiKeyEntryKeys = ["sha256", "consumer", "plan"];

    /// <summary>Kinds that establish who the client is; a route on a public listener needs one of them.</summary>
    private static readonly string[] s_authenticationKinds = ["jwt", "api_key", "introspection"];

    /// <summary>
    /// Checks each route against the chain it runs on each of its listeners (the listener's policies, then its own):
    /// a deny policy whose method allow list excludes every method the route matches can never pass, and a route on
    /// a <c>public: true</c> listener must run an authentication policy unless it says <c>allow_anonymous: true</c>.
    /// </summary>
    private static void ValidateChains(ProxyConfig config, Dictionary<string, PolicyConfig> names, ConfigErrorList errors)
    {
        foreach (var route in config.Routes)
        {
            string label = route.Id is { } id ? $"route '{id.Value}'" : "route";
            bool anonymousOk = route.AllowAnonymous?.Value == true;
            var reported = new HashSet<string>(StringComparer.Ordinal);
            foreach (var listener in config.Listeners)
            {
                if (listener.Handler != ListenerHandler.Proxy || !RouteIsOn(route, listener))
                {
                    continue;
                }
                var chain = listener.Policies.Concat(route.Policies).Select(p => p.Value).Distinct(StringComparer.Ordinal).ToList();
                var kinds = chain.Select(n => names.TryGetValue(n, out var p) ? p.Kind?.Value : null).ToList();
                if (listener.Public?.Value == true && !anonymousOk && !kinds.Any(k => k is not null && s_authenticationKinds.Contains(k))
                    && reported.Add("public:" + listener.Name?.Value))
                {
                    errors.Add(route.Mark, $"{label} has no authentication policy (jwt, api_key or introspection) on public listener '{listener.Name?.Value}'; "
                        + "add one, or set 'allow_anonymous: true' on the route if it is meant to be open");
                }
                CheckJwtPairs(route, label, chain, kinds, names, reported, errors);
                if (route.Match.Methods.Count == 0)
                {
                    continue;
                }
                for (int i = 0; i < chain.Count; i++)
                {
                    if (kinds[i] != "deny" || DenyMethods(names[chain[i]]) is not { Count: > 0 } allowed || !reported.Add("deny:" + chain[i]))
                    {
                        continue;
                    }
                    if (!route.Match.Methods.Any(m => allowed.Contains(m.Value.ToUpperInvariant())))
                    {
                        errors.Add(route.Match.Methods[0].Mark,
                            $"{label} can never pass: it matches only {string.Join(", ", route.Match.Methods.Select(m => m.Value.ToUpperInvariant()))}, "
                            + $"and policy '{chain[i]}' lets through only {string.Join(", ", allowed)}");
                    }
                }
            }
        }
    }

    /// <summary>
    /// Two <c>jwt</c> policies on one chain both check the one bearer token: with different issuers, or audience
    /// lists that share nothing, no token can pass both.
    /// </summary>
    private static void CheckJwtPairs(RouteConfig route, string label, List<string> chain, List<string?> kinds,
        Dictionary<string, PolicyConfig> names, HashSet<string> reported, ConfigErrorList errors)
    {
        for (int i = 0; i < chain.Count; i++)
        {
            for (int j = i + 1; j < chain.Count; j++)
            {
                if (kinds[i] != "jwt" || kinds[j] != "jwt" || !reported.Add($"jwt:{chain[i]}:{chain[j]}"))
                {
                    continue;
                }
                PolicyConfig a = names[chain[i]], b = names[chain[j]];
                string? issuerA = JwtSetting(a, "issuer")?.Scalar?.Value, issuerB = JwtSetting(b, "issuer")?.Scalar?.Value;
                var audiencesA = JwtSetting(a, "audiences")?.List?.Select(v => v.Value).ToList();
                var audiencesB = JwtSetting(b, "audiences")?.List?.Select(v => v.Value).ToList();
                if (issuerA is not null && issuerB is not null && issuerA != issuerB)
                {
                    errors.Add(route.Mark, $"{label} can never pass: jwt policies '{chain[i]}' and '{chain[j]}' both check the bearer token "
                        + $"but require different issuers ('{issuerA}' and '{issuerB}')");
                }
                else if (audiencesA is { Count: > 0 } && audiencesB is { Count: > 0 } && !audiencesA.Intersect(audiencesB, StringComparer.Ordinal).Any())
                {
                    errors.Add(route.Mark, $"{label} can never pass: jwt policies '{chain[i]}' and '{chain[j]}' both check the bearer token "
                        + "but accept no audience in common");
                }
            }
        }
    }

    private static PolicySettingConfig? JwtSetting(PolicyConfig policy, string key)
        => policy.Settings.FirstOrDefault(s => s.Key.Value == key);

    private static bool RouteIsOn(RouteConfig route, ListenerConfig listener)
        => route.Listeners.Count == 0 || route.Listeners.Any(l => l.Value == listener.Name?.Value);

    private static List<string>? DenyMethods(PolicyConfig policy)
        => policy.Settings.FirstOrDefault(s => s.Key.Value == "methods")?.List?.Select(m => m.Value).ToList();

    private static readonly string[] s_denyKeys = ["path_traversal", "sql_injection", "xss", "methods", "patterns"];
    private static readonly string[] s_standardMethods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

    private static DenyFilter? BuildDeny(PolicyConfig policy, Located<string> kind, ConfigErrorList errors, DenyFilter? running = null)
    {
        int before = errors.Count;
        string name = policy.Name.Value;
        bool traversal = false, sql = false, xss = false;
        List<string>? methods = null;
        var patterns = new List<string>();
        foreach (var setting in policy.Settings)
        {
            if (!CheckKey(setting, s_denyKeys, "deny", errors))
            {
                continue;
            }
            if (setting.Key.Value is "methods" or "patterns")
            {
                if (setting.List is not { } list)
                {
                    errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, $"expected a list for '{setting.Key.Value}' (e.g. [GET, POST])");
                    continue;
                }
                if (setting.Key.Value == "methods")
                {
                    methods = [];
                    if (list.Count == 0)
                    {
                        errors.Add(setting.Key.Mark, $"deny policy '{name}' can never pass: its 'methods' list (the methods let through) is empty");
                    }
                }
                foreach (var item in list)
                {
                    if (setting.Key.Value == "patterns")
                    {
                        if (item.Value.Length == 0 || item.Value.Any(c => c > '~' || c < ' '))
                        {
                            errors.Add(item.Mark, "a deny pattern is a non-empty string of printable ASCII (matched case-insensitively)");
                        }
                        else
                        {
                            patterns.Add(item.Value);
                        }
                    }
                    else if (!ConfigSyntax.IsToken(item.Value))
                    {
                        errors.Add(item.Mark, $"invalid method '{item.Value}' (a token, e.g. GET)");
                    }
                    else if (!s_standardMethods.Contains(item.Value) && s_standardMethods.Contains(item.Value.ToUpperInvariant()))
                    {
                        errors.Add(item.Mark, $"methods are case-sensitive (RFC 9110 section 9.1); did you mean '{item.Value.ToUpperInvariant()}'?");
                    }
                    else
                    {
                        methods!.Add(item.Value);
                    }
                }
                continue;
            }
            if (Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            if (value.Value is not ("true" or "false"))
            {
                errors.Add(value.Mark, $"expected true or false for '{setting.Key.Value}', got '{value.Value}'");
                continue;
            }
            bool on = value.Value == "true";
            switch (setting.Key.Value)
            {
                case "path_traversal":
                    traversal = on;
                    break;
                case "sql_injection":
                    sql = on;
                    break;
                default:
                    xss = on;
                    break;
            }
        }
        if (errors.Count == before && !traversal && !sql && !xss && methods is null && patterns.Count == 0)
        {
            errors.Add(kind.Mark, $"deny policy '{name}' checks nothing: enable path_traversal, sql_injection or xss, or list methods or patterns");
        }
        if (errors.Count != before)
        {
            return null;
        }
        return new DenyFilter(new DenyOptions
        {
            PolicyName = name,
            PathTraversal = traversal,
            SqlInjection = sql,
            Xss = xss,
            Methods = methods ?? [],
            Patterns = patterns,
        }, running);
    }

    private static ApiKeyFilter? BuildApiKey(PolicyConfig policy, Located<string> kind, ConfigErrorList errors, string baseDirectory, ApiKeyFilter? running = null)
    {
        int before = errors.Count;
        string name = policy.Name.Value;
        string? header = null;
        string? query = null;
        var keys = new List<ApiKeyEntry>();
        var seen = new Dictionary<string, Mark>(StringComparer.Ordinal);
        IdentityForwardingOptions? forward = null;
        foreach (var setting in policy.Settings)
        {
            if (!CheckKey(setting, s_apiKeyKeys, "api_key", errors))
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "forward_identity":
                    forward = ReadForwardIdentity(setting, errors);
                    continue;
                case "keys":
                    if (setting.List is { Count: 0 })
                    {
                        continue; // an empty list: reported below as "no keys"
                    }
                    if (setting.Maps is not { } items)
                    {
                        errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a list of maps for 'keys' (e.g. [{ sha256: <64 hex digits>, consumer: alice, plan: free }])");
                        continue;
                    }
                    foreach (var item in items)
                    {
                        ReadApiKeyEntry(item, keys, seen, errors);
                    }
                    continue;
            }
            if (Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "header":
                    if (!ConfigSyntax.IsToken(value.Value))
                    {
                        errors.Add(value.Mark, $"invalid header name '{value.Value}' (a token: letters, digits and !#$%&'*+-.^_`|~)");
                    }
                    header = value.Value.ToLowerInvariant();
                    break;
                case "query":
                    if (value.Value.Length == 0 || value.Value.Any(c => c is '&' or '=' or '#' or '%' || c <= ' ' || c > '~'))
                    {
                        errors.Add(value.Mark, $"invalid query parameter name '{value.Value}' (printable ASCII without '&', '=', '#', '%' or spaces)");
                    }
                    query = value.Value;
                    break;
                case "keys_file":
                    LoadApiKeysFile(value, baseDirectory, keys, seen, errors);
                    break;
            }
        }
        if (header is not null && query is not null)
        {
            errors.Add(kind.Mark, $"api_key policy '{name}' has both 'header' and 'query'; choose one");
        }
        if (errors.Count == before && keys.Count == 0)
        {
            errors.Add(kind.Mark, $"api_key policy '{name}' can never pass: it has no keys (add 'keys' or 'keys_file')");
        }
        if (errors.Count != before)
        {
            return null;
        }
        return new ApiKeyFilter(new ApiKeyOptions
        {
            PolicyName = name,
            // Kong's and most gateways' default.
            Header = query is null ? header ?? "x-api-key" : "",
            QueryParameter = query ?? "",
            Keys = keys,
            ForwardIdentity = forward,
        }, running);
    }

    private static readonly string[] s_introspectionKeys =
        ["url", "client_id", "client_secret", "client_secret_file", "required_scopes", "cache_max", "cache_ttl", "timeout", "forward_identity"];

    /// <summary>
    /// An <c>introspection</c> policy. With <paramref name="running"/> (a reload, the running filter of the same name)
    /// the new filter takes over its answer cache when nothing that gives an entry its meaning changed
    /// (<see cref="IntrospectionFilter.SameCache"/>).
    /// </summary>
    private static IntrospectionFilter? BuildIntrospection(PolicyConfig policy, Located<string> kind, ConfigErrorList errors, TimeProvider time,
        string baseDirectory, bool validateOnly, IntrospectionFilter? running = null)
    {
        Located<string>? inlineSecret = null, secretFile = null;
        int before = errors.Count;
        string name = policy.Name.Value;
        Uri? url = null;
        string? clientId = null;
        string? clientSecret = null;
        var scopes = new List<string>();
        int cacheMax = 10_000;
        TimeSpan cacheTtl = TimeSpan.FromMinutes(5);
        TimeSpan timeout = TimeSpan.FromSeconds(2);
        IdentityForwardingOptions? forward = null;
        foreach (var setting in policy.Settings)
        {
            if (!CheckKey(setting, s_introspectionKeys, "introspection", errors))
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "forward_identity":
                    forward = ReadForwardIdentity(setting, errors);
                    continue;
                case "required_scopes":
                    if (setting.List is not { } list)
                    {
                        errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a list for 'required_scopes' (e.g. [orders.read])");
                        continue;
                    }
                    foreach (var item in list)
                    {
                        if (item.Value.Length == 0 || !IsScopeToken(item.Value))
                        {
                            // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
                            errors.Add(item.Mark, $"invalid scope '{item.Value}': a scope is printable ASCII without spaces, '\"' or '\\' (RFC 6749 section 3.3)");
                        }
                        else
                        {
                            scopes.Add(item.Value);
                        }
                    }
                    if (list.Count > 64)
                    {
                        errors.Add(setting.Key.Mark, $"introspection policy '{name}' requires {list.Count} scopes; at most 64 are supported");
                    }
                    continue;
            }
            if (Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "url":
                    if (!Uri.TryCreate(value.Value, UriKind.Absolute, out url) || url.Scheme is not ("http" or "https"))
                    {
                        errors.Add(value.Mark, $"invalid introspection url '{value.Value}': expected an absolute http:// or https:// URL (RFC 7662 section 2)");
                        url = null;
                    }
                    break;
                case "client_id":
                    if (value.Value.Length == 0)
                    {
                        errors.Add(value.Mark, "'client_id' must not be empty");
                    }
                    clientId = value.Value;
                    break;
                case "client_secret":
                    inlineSecret = value;
                    if (value.Value.Length == 0)
                    {
                        errors.Add(value.Mark, "'client_secret' must not be empty");
                    }
                    else if (secretFile is not null)
                    {
                        errors.Add(value.Mark, $"introspection policy '{name}' has both 'client_secret' and 'client_secret_file'; choose one");
                    }
                    else
                    {
                        clientSecret = value.Value;
                    }
                    break;
                case "client_secret_file":
                    secretFile = value;
                    if (inlineSecret is not null)
                    {
                        errors.Add(value.Mark, $"introspection policy '{name}' has both 'client_secret' and 'client_secret_file'; choose one");
                    }
                    else
                    {
                        clientSecret = ReadSecretFile(value, baseDirectory, errors);
                    }
                    break;
                case "cache_max":
                    if (!value.Value.All(char.IsAsciiDigit) || !int.TryParse(value.Value, NumberStyles.None, CultureInfo.InvariantCulture, out cacheMax)
                        || cacheMax < 1 || cacheMax > 16_777_216)
                    {
                        errors.Add(value.Mark, $"invalid cache_max '{value.Value}': expected a whole number from 1 to 16777216 (answers remembered)");
                    }
                    break;
                case "cache_ttl":
                    if (!ConfigValues.TryParseDuration(value.Value, out cacheTtl) || cacheTtl < TimeSpan.FromSeconds(1) || cacheTtl > TimeSpan.FromDays(1))
                    {
                        errors.Add(value.Mark, $"invalid cache_ttl '{value.Value}': expected a duration from 1s to 24h (e.g. 5m)");
                    }
                    break;
                case "timeout":
                    if (!ConfigValues.TryParseDuration(value.Value, out timeout) || timeout < TimeSpan.FromMilliseconds(10) || timeout > TimeSpan.FromMinutes(1))
                    {
                        errors.Add(value.Mark, $"invalid timeout '{value.Value}': expected a duration from 10ms to 1m (e.g. 2s)");
                    }
                    break;
            }
        }
        if (url is null && errors.Count == before)
        {
            errors.Add(kind.Mark, $"introspection policy '{name}' is missing required key 'url' (the RFC 7662 introspection endpoint)");
        }
        if (clientId is null || (clientSecret is null && inlineSecret is null && secretFile is null))
        {
            // RFC 7662 section 2.1: the endpoint requires the caller to authenticate.
            errors.Add(kind.Mark, $"introspection policy '{name}' is missing required key '{(clientId is null ? "client_id" : "client_secret' or 'client_secret_file")}' (the proxy's credentials at the introspection endpoint)");
        }
        if (errors.Count != before || url is null || clientId is null || clientSecret is null || validateOnly)
        {
            // Validation never calls the endpoint.
            return null;
        }
        return new IntrospectionFilter(new IntrospectionOptions
        {
            PolicyName = name,
            Url = url,
            ClientId = clientId,
            ClientSecret = clientSecret,
            RequiredScopes = scopes,
            CacheMax = cacheMax,
            CacheTtl = cacheTtl,
            Timeout = timeout,
            ForwardIdentity = forward,
        }, time, running);
    }

    private static readonly string[] s_fileSettings = ["jwks_file", "keys_file", "client_secret_file"];

    /// <summary>
    /// The contents of every file a policy reads at compile time, in config order, for the config version; an
    /// unreadable file gives nothing here (compiling it reports the error).
    /// </summary>
    public static IReadOnlyList<byte[]> ReadReferencedFiles(ProxyConfig config)
    {
        var files = new List<byte[]>();
        foreach (var policy in config.Policies)
        {
            foreach (var setting in policy.Settings)
            {
                if (setting.Scalar is { Value.Length: > 0 } file && Array.IndexOf(s_fileSettings, setting.Key.Value) >= 0)
                {
                    try
                    {
                        files.Add(File.ReadAllBytes(Path.Combine(config.BaseDirectory, file.Value)));
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
                    {
                        files.Add([]);
                    }
                }
            }
        }
        return files;
    }

    /// <summary>
    /// <c>client_secret_file</c>: the secret read at compile time (so every reload reads it again, and the file is
    /// part of the config version: ConfigCompiler), relative to the config file, trimmed of surrounding whitespace
    /// (editors and <c>echo</c> add a newline). Errors name the file, never its content.
    /// </summary>
    private static string? ReadSecretFile(Located<string> file, string baseDirectory, ConfigErrorList errors)
    {
        if (file.Value.Length == 0)
        {
            errors.Add(file.Mark, "'client_secret_file' must not be empty");
            return null;
        }
        string text;
        try
        {
            text = File.ReadAllText(Path.Combine(baseDirectory, file.Value));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            errors.Add(file.Mark, $"cannot read client_secret_file '{file.Value}': {e.Message}");
            return null;
        }
        string secret = text.Trim();
        if (secret.Length == 0)
        {
            errors.Add(file.Mark, $"client_secret_file '{file.Value}' is empty");
            return null;
        }
        return secret;
    }

    /// <summary><c>required_roles: [admin, editor]</c>: role names as they appear in the roles claim.</summary>
    private static List<string> ReadRoles(PolicySettingConfig setting, string name, ConfigErrorList errors)
    {
        var roles = new List<string>();
        if (setting.List is not { } list)
        {
            errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a list for 'required_roles' (e.g. [admin])");
            return roles;
        }
        foreach (var item in list)
        {
            if (item.Value.Length == 0 || !IsIdentityValue(item.Value) || item.Value.Contains(' '))
            {
                errors.Add(item.Mark, $"invalid role '{item.Value}': a role is printable ASCII without spaces, '\"' or '\\'");
            }
            else
            {
                roles.Add(item.Value);
            }
        }
        if (list.Count == 0)
        {
            errors.Add(setting.Key.Mark, $"jwt policy '{name}' has an empty 'required_roles' list; remove the key to require no role");
        }
        else if (list.Count > 64)
        {
            errors.Add(setting.Key.Mark, $"jwt policy '{name}' requires {list.Count} roles; at most 64 are supported");
        }
        return roles;
    }

    /// <summary><c>required_claims: { tenant: acme, email_verified: "true" }</c>.</summary>
    private static List<KeyValuePair<string, string>> ReadRequiredClaims(PolicySettingConfig setting, string name, ConfigErrorList errors)
    {
        var claims = new List<KeyValuePair<string, string>>();
        if (setting.Map is not { } entries)
        {
            errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a map for 'required_claims' (e.g. { tenant: acme })");
            return claims;
        }
        foreach (var entry in entries)
        {
            if (Scalar(entry, errors) is not { } value)
            {
                continue;
            }
            // A dotted name is a path into nested objects, as for roles_claim (tenant.id reads {"tenant":{"id":...}}).
            string[] path = entry.Key.Value.Split('.');
            if (entry.Key.Value.Length == 0 || s_reservedClaims.Contains(path[0]))
            {
                errors.Add(entry.Key.Mark, $"'{entry.Key.Value}' cannot be a required claim: use issuer, audiences, required_scopes (or nothing, for exp, nbf and sub)");
                continue;
            }
            if (Array.IndexOf(path, "") >= 0 || path.Length > JwtFilter.MaxRolesPathSegments)
            {
                errors.Add(entry.Key.Mark, $"invalid required claim '{entry.Key.Value}': expected a claim name or a dotted path of at most {JwtFilter.MaxRolesPathSegments} non-empty names into nested objects (e.g. org.tenant)");
                continue;
            }
            claims.Add(new(entry.Key.Value, value.Value));
        }
        if (claims.Count > 64)
        {
            errors.Add(setting.Key.Mark, $"jwt policy '{name}' requires {claims.Count} claims; at most 64 are supported");
        }
        return claims;
    }

    /// <summary><c>forward_identity: { subject: x-auth-subject, client_id: ..., consumer: ..., plan: ... }</c>.</summary>
    private static IdentityForwardingOptions? ReadForwardIdentity(PolicySettingConfig setting, ConfigErrorList errors)
    {
        if (setting.Map is not { } entries)
        {
            errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a map for 'forward_identity' (e.g. { subject: x-auth-subject, consumer: x-consumer })");
            return null;
        }
        var options = new IdentityForwardingOptions();
        var used = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            if (!CheckKey(entry, s_forwardIdentityKeys, "forward_identity", errors) || Scalar(entry, errors) is not { } value)
            {
                continue;
            }
            string header = value.Value.ToLowerInvariant();
            if (!ConfigSyntax.IsToken(header))
            {
                errors.Add(value.Mark, $"invalid header name '{value.Value}' (a token: letters, digits and !#$%&'*+-.^_`|~)");
                continue;
            }
            if (header is "host" or "authorization" or "content-length" or "transfer-encoding" or "connection" or "te" or "upgrade"
                || header.StartsWith("x-forwarded-", StringComparison.Ordinal))
            {
                errors.Add(value.Mark, $"'{value.Value}' cannot carry the identity: the proxy or the HTTP framing owns that header");
                continue;
            }
            if (!used.Add(header))
            {
                errors.Add(value.Mark, $"header '{value.Value}' is used twice in forward_identity");
                continue;
            }
            options = entry.Key.Value switch
            {
                "subject" => options with { Subject = header },
                "client_id" => options with { ClientId = header },
                "consumer" => options with { Consumer = header },
                _ => options with { Plan = header },
            };
        }
        return options;
    }

    private static void ReadApiKeyEntry(PolicyMapItem item, List<ApiKeyEntry> keys, Dictionary<string, Mark> seen, ConfigErrorList errors)
    {
        Located<string>? hash = null;
        Located<string>? consumer = null;
        string plan = "";
        foreach (var entry in item.Entries)
        {
            if (!CheckKey(entry, s_apiKeyEntryKeys, "an api_key key", errors) || Scalar(entry, errors) is not { } value)
            {
                continue;
            }
            switch (entry.Key.Value)
            {
                case "sha256":
                    hash = value;
                    break;
                case "consumer":
                    consumer = value;
                    break;
                case "plan":
                    plan = value.Value;
                    break;
            }
        }
        if (hash is null)
        {
            errors.Add(item.Mark, "an api_key key is missing 'sha256' (the key's SHA-256 in hex; `proxy hash-key KEY` prints it)");
            return;
        }
        if (consumer is null || consumer.Value.Value.Length == 0)
        {
            errors.Add(item.Mark, "an api_key key is missing 'consumer' (who the key belongs to)");
            return;
        }
        if (AddApiKey(hash.Value, consumer.Value.Value, plan, keys, seen) is { } error)
        {
            errors.Add(hash.Value.Mark, error);
        }
    }

    /// <summary>Adds one key; the error message when it is refused.</summary>
    private static string? AddApiKey(Located<string> hash, string consumer, string plan, List<ApiKeyEntry> keys, Dictionary<string, Mark> seen)
    {
        if (!TryParseSha256(hash.Value, out byte[] bytes))
        {
            return "invalid sha256: expected 64 hex digits (`proxy hash-key KEY` prints them); keys are never written in clear";
        }
        string normal = Convert.ToHexStringLower(bytes);
        if (seen.TryGetValue(normal, out var first))
        {
            return $"the same API key is listed twice (first at line {first.Line}, column {first.Column})";
        }
        if (!IsIdentityValue(consumer) || !IsIdentityValue(plan))
        {
            return "consumer and plan must be printable ASCII without '\"' or '\\' (they are forwarded in headers and problem bodies)";
        }
        seen.Add(normal, hash.Mark);
        keys.Add(new ApiKeyEntry(bytes, consumer, plan));
        return null;
    }

    /// <summary>
    /// A keys file: one key per line, <c>SHA256HEX CONSUMER [PLAN]</c> separated by spaces; blank lines and lines
    /// starting with '#' are skipped. Relative to the config file's directory; read when the config is loaded.
    /// </summary>
    private static void LoadApiKeysFile(Located<string> file, string baseDirectory, List<ApiKeyEntry> keys, Dictionary<string, Mark> seen, ConfigErrorList errors)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(Path.Combine(baseDirectory, file.Value));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            errors.Add(file.Mark, $"cannot read keys_file '{file.Value}': {e.Message}");
            return;
        }
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].Trim();
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }
            string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length is < 2 or > 3)
            {
                errors.Add(file.Mark, $"keys_file '{file.Value}' line {i + 1}: expected 'SHA256HEX CONSUMER [PLAN]'");
                continue;
            }
            var located = new Located<string>(parts[0], new Mark(file.Mark.Line, file.Mark.Column));
            if (AddApiKey(located, parts[1], parts.Length == 3 ? parts[2] : "", keys, seen) is { } error)
            {
                errors.Add(file.Mark, $"keys_file '{file.Value}' line {i + 1}: {error}");
            }
        }
    }

    internal static bool TryParseSha256(string hex, out byte[] bytes)
    {
        bytes = [];
        if (hex.Length != 64 || !hex.All(char.IsAsciiHexDigit))
        {
            return false;
        }
        bytes = Convert.FromHexString(hex);
        return true;
    }

    /// <summary>Values that go into forwarded headers, problem bodies and quoted strings without escaping.</summary>
    private static bool IsIdentityValue(string value)
    {
        foreach (char c in value)
        {
            if (c is < ' ' or > '~' or '"' or '\\')
            {
                return false;
            }
        }
        return true;
    }
}
