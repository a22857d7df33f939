using System.Globalization;
using System.Net;
using Proxy.Model;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Configuration;

/// <summary>
/// The <c>policies:</c> section: checks each policy's kind and settings (every error with its position), checks the
/// references from listeners and routes, and builds one filter per policy and one <see cref="FilterChain"/> per
/// route and listener. Validation and compilation share <see cref="Build"/>, so what validates is what runs.
/// </summary>
internal static partial class PolicyCompiler
{
    private static readonly string[] s_rateLimitKeys = ["key", "rate", "burst", "quota", "plans", "default_plan", "store", "redis", "max_keys"];
    private static readonly string[] s_rateLimitPlanKeys = ["rate", "burst", "quota"];
    private static readonly string[] s_redisKeys = ["address", "on_error", "timeout", "local_budget"];
    private static readonly string[] s_ipFilterKeys = ["allow", "deny", "trusted_proxies"];
    private static readonly string[] s_jwtKeys =
    [
        "issuer", "audiences", "jwks_file", "jwks_url", "jwks_refresh", "jwks_min_refetch", "required_scopes", "scopes_mode",
        "required_roles", "roles_mode", "roles_claim", "required_claims", "forward_identity", "clock_skew",
    ];

    public static void Validate(ProxyConfig config, ConfigErrorList errors)
    {
        var names = new Dictionary<string, PolicyConfig>(StringComparer.Ordinal);
        foreach (var policy in config.Policies)
        {
            if (!IsPolicyName(policy.Name.Value))
            {
                errors.Add(policy.Name.Mark, $"invalid policy name '{policy.Name.Value}': use letters, digits, '.', '_' and '-'");
            }
            names.TryAdd(policy.Name.Value, policy);
            if (policy.Kind is { } kind && !PolicyKinds.IsKnown(kind.Value))
            {
                var near = ConfigErrorList.Nearest(kind.Value, PolicyKinds.AllKinds);
                errors.Add(kind.Mark, $"unknown policy kind '{kind.Value}' in policy '{policy.Name.Value}'"
                    + (near is null ? $" (expected one of: {string.Join(", ", PolicyKinds.AllKinds)})" : $"; did you mean '{near}'?"));
                continue;
            }
            Build(policy, errors, TimeProvider.System, config.BaseDirectory, validateOnly: true);
        }

        foreach (var listener in config.Listeners)
        {
            var label = listener.Name is { } n ? $"listener '{n.Value}'" : "listener";
            CheckReferences(listener.Policies, label, names, errors);
            if (listener.Policies.Count > 0 && listener.Handler != ListenerHandler.Proxy)
            {
                errors.Add(listener.Policies[0].Mark, $"{label} has 'handler: echo', which never routes, so its policies would never run");
            }
        }
        foreach (var route in config.Routes)
        {
            CheckReferences(route.Policies, route.Id is { } id ? $"route '{id.Value}'" : "route", names, errors);
        }
        // Conflicts between a route and the chain it gets: PolicyCompiler.Identity.cs.
        ValidateChains(config, names, errors);
    }

    private static void CheckReferences(IReadOnlyList<Located<string>> references, string owner, Dictionary<string, PolicyConfig> names, ConfigErrorList errors)
    {
        var seen = new Dictionary<string, Located<string>>(StringComparer.Ordinal);
        foreach (var reference in references)
        {
            if (!names.ContainsKey(reference.Value))
            {
                var near = ConfigErrorList.Nearest(reference.Value, names.Keys);
                errors.Add(reference.Mark, $"{owner} refers to unknown policy '{reference.Value}'" + (near is null ? "" : $"; did you mean '{near}'?"));
            }
            if (seen.TryGetValue(reference.Value, out var first))
            {
                errors.Add(reference.Mark, $"{owner} lists policy '{reference.Value}' twice (first at line {first.Mark.Line}, column {first.Mark.Column})");
            }
            else
            {
                seen.Add(reference.Value, reference);
            }
        }
    }

    /// <summary>
    /// Builds every policy's filter (on a validated config, so nothing fails). With <paramref name="running"/> (a
    /// reload: the running snapshot's policies), a policy that keeps its name gets the running filter of that name:
    /// when it is of the same kind, the built-in filter goes on with its decision counts
    /// (<see cref="PolicyDecisionCounts"/>), and a <c>rate_limit</c> whose state-relevant definition is unchanged takes
    /// over its tables (<see cref="RateLimitFilter.SameState"/>).
    /// </summary>
    public static Dictionary<string, IProxyFilter> BuildAll(ProxyConfig config, TimeProvider time,
        IReadOnlyList<KeyValuePair<string, IProxyFilter>>? running = null)
    {
        var errors = new ConfigErrorList("");
        var previous = new Dictionary<string, IProxyFilter>(StringComparer.Ordinal);
        foreach (var (name, filter) in running ?? [])
        {
            previous.TryAdd(name, filter);
        }
        var filters = new Dictionary<string, IProxyFilter>(StringComparer.Ordinal);
        foreach (var policy in config.Policies)
        {
            previous.TryGetValue(policy.Name.Value, out IProxyFilter? was);
            if (Build(policy, errors, time, config.BaseDirectory, running: was) is { } filter)
            {
                filters.TryAdd(policy.Name.Value, filter);
            }
        }
        return filters;
    }

    /// <summary>
    /// The chain of <paramref name="route"/> on each listener of the file (indexed like <paramref name="listeners"/>):
    /// the listener's policies, then the route's. Empty when nothing applies anywhere, so a request tests one length.
    /// </summary>
    public static FilterChain[] Chains(RouteConfig route, IReadOnlyList<ListenerConfig> listeners, Dictionary<string, IProxyFilter> filters)
    {
        bool any = route.Policies.Count > 0;
        foreach (var listener in listeners)
        {
            any |= listener.Policies.Count > 0;
        }
        if (!any)
        {
            return [];
        }
        var chains = new FilterChain[listeners.Count];
        // Listeners without defaults share one chain: the route's own.
        FilterChain? routeOnly = null;
        for (int i = 0; i < chains.Length; i++)
        {
            var listenerPolicies = listeners[i].Policies;
            if (listenerPolicies.Count == 0 && routeOnly is not null)
            {
                chains[i] = routeOnly;
                continue;
            }
            var names = new List<string>();
            foreach (var name in listenerPolicies)
            {
                names.Add(name.Value);
            }
            foreach (var name in route.Policies)
            {
                // A policy both on the listener and on the route runs once, at the listener's position.
                if (!names.Contains(name.Value))
                {
                    names.Add(name.Value);
                }
            }
            var chain = names.Count == 0 ? FilterChain.Empty : new FilterChain(names.Select(n => filters[n]).ToArray(), [.. names]);
            chains[i] = chain;
            if (listenerPolicies.Count == 0)
            {
                routeOnly = chain;
            }
        }
        return chains;
    }

    /// <summary>
    /// A listener's chain for requests no route matched: its default policies that take part in the response-headers
    /// or logging phase (the only phases such a request runs); null when there are none.
    /// </summary>
    public static FilterChain? Unmatched(ListenerConfig listener, Dictionary<string, IProxyFilter> filters)
    {
        var names = new List<string>();
        foreach (var name in listener.Policies)
        {
            if (filters.TryGetValue(name.Value, out var filter) && filter is (IResponseHeadersFilter or IResponseCompleteFilter) && !names.Contains(name.Value))
            {
                names.Add(name.Value);
            }
        }
        return names.Count == 0 ? null : new FilterChain(names.Select(n => filters[n]).ToArray(), [.. names]);
    }

    /// <summary>
    /// Checks one policy's settings and builds its filter; null (errors added) when they are wrong. With
    /// <paramref name="validateOnly"/>, built-in kinds skip building (a rate-limit table is a MiB); custom kinds are
    /// built, since their factory is their validation. <paramref name="running"/> is the filter of the same name in the
    /// running config (a reload): a built-in filter of the same kind hands over its decision counts, and some kinds
    /// more (rate-limit tables, a JWKS source, an answer cache).
    /// </summary>
    public static IProxyFilter? Build(PolicyConfig policy, ConfigErrorList errors, TimeProvider time, string baseDirectory = "", bool validateOnly = false,
        IProxyFilter? running = null)
    {
        if (policy.Kind is not { } kind)
        {
            return null;
        }
        switch (kind.Value)
        {
            case "rate_limit":
                return BuildRateLimit(policy, kind, errors, time, validateOnly, running as RateLimitFilter);
            case "ip_filter":
                return BuildIpFilter(policy, kind, errors, running as IpFilter);
            case "jwt":
                return BuildJwt(policy, kind, errors, time, baseDirectory, validateOnly, running as JwtFilter);
            // Identity and WAF kinds: PolicyCompiler.Identity.cs.
            case "api_key":
                return BuildApiKey(policy, kind, errors, baseDirectory, running as ApiKeyFilter);
            case "deny":
                return BuildDeny(policy, kind, errors, running as DenyFilter);
            case "introspection":
                return BuildIntrospection(policy, kind, errors, time, baseDirectory, validateOnly, running as IntrospectionFilter);
            // Header rewrites (upstream request, response): PolicyCompiler.Headers.cs.
            case "request_headers":
            case "response_headers":
                return BuildHeaderRewrite(policy, kind, errors);
            // The request-body phase: PolicyCompiler.Body.cs.
            case "request_body":
                return BuildRequestBody(policy, kind, errors, running as RequestBodyFilter);
        }
        if (!PolicyKinds.TryGetCustom(kind.Value, out var factory))
        {
            return null;
        }
        var scalars = new Dictionary<string, string>(StringComparer.Ordinal);
        var lists = new Dictionary<string, IReadOnlyList<string>>(StringComparer.Ordinal);
        foreach (var setting in policy.Settings)
        {
            if (setting.List is { } list)
            {
                lists[setting.Key.Value] = list.Select(l => l.Value).ToArray();
            }
            else
            {
                scalars[setting.Key.Value] = setting.Scalar?.Value ?? "";
            }
        }
        IProxyFilter? filter;
        try
        {
            filter = factory(new PolicyDefinition(policy.Name.Value, kind.Value, scalars, lists));
        }
        catch (Exception e) when (e is ArgumentException or FormatException or InvalidOperationException)
        {
            errors.Add(kind.Mark, $"policy '{policy.Name.Value}' ({kind.Value}): {e.Message}");
            return null;
        }
        catch (Exception e)
        {
            // The embedder's code, not the file, failed; still a config error at the policy, so that a load reports it
            // with the others and a reload keeps its promise not to throw (and keeps the running config).
            errors.Add(kind.Mark, $"policy '{policy.Name.Value}' ({kind.Value}): the factory failed: {e.GetType().FullName}: {e.Message}");
            return null;
        }
        if (filter is null)
        {
            errors.Add(kind.Mark, $"policy '{policy.Name.Value}' ({kind.Value}): the factory returned no filter (null)");
        }
        return filter;
    }

    private static RateLimitFilter? BuildRateLimit(PolicyConfig policy, Located<string> kind, ConfigErrorList errors, TimeProvider time, bool validateOnly,
        RateLimitFilter? running)
    {
        int before = errors.Count;
        string name = policy.Name.Value;
        RateLimitKeyKind keyKind = RateLimitKeyKind.ClientIp;
        string header = "";
        var plans = new List<RateLimitPlan>();
        Located<string>? defaultPlan = null;
        Located<string>? store = null;
        PolicySettingConfig? redisSetting = null;
        RedisStoreOptions? redis = null;
        int capacity = 0;
        foreach (var setting in policy.Settings)
        {
            if (!CheckKey(setting, s_rateLimitKeys, "rate_limit", errors))
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "plans":
                    if (setting.Map is not { } planMap)
                    {
                        errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a map of plans for 'plans' (e.g. plans: { free: { rate: 10/s, burst: 20, quota: 10000/day } })");
                        continue;
                    }
                    if (planMap.Count == 0)
                    {
                        errors.Add(setting.Key.Mark, $"rate_limit policy '{name}' has an empty 'plans' map");
                    }
                    foreach (var planSetting in planMap)
                    {
                        if (!IsPolicyName(planSetting.Key.Value))
                        {
                            errors.Add(planSetting.Key.Mark, $"invalid plan name '{planSetting.Key.Value}': use letters, digits, '.', '_' and '-'");
                        }
                        if (planSetting.Map is not { } planSettings)
                        {
                            errors.Add(planSetting.Scalar?.Mark ?? planSetting.Key.Mark, $"expected a map for plan '{planSetting.Key.Value}' (e.g. {{ rate: 10/s, burst: 20, quota: 10000/day }})");
                            continue;
                        }
                        if (ReadLimits(planSettings, s_rateLimitPlanKeys, $"plan '{planSetting.Key.Value}'", planSetting.Key, errors) is { } limits)
                        {
                            plans.Add(limits with { Name = planSetting.Key.Value });
                        }
                    }
                    continue;
                case "redis":
                    redisSetting = setting;
                    if (setting.Map is not { } redisMap)
                    {
                        errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, "expected a map for 'redis' (e.g. redis: { address: 127.0.0.1:6379, on_error: allow })");
                        continue;
                    }
                    redis = ReadRedis(redisMap, setting.Key, errors);
                    continue;
                case "rate":
                case "burst":
                case "quota":
                    // Read below with the plans' reader.
                    continue;
            }
            if (Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "key":
                    if (value.Value == "client_ip")
                    {
                        keyKind = RateLimitKeyKind.ClientIp;
                    }
                    else if (value.Value == "route")
                    {
                        keyKind = RateLimitKeyKind.Route;
                    }
                    else if (value.Value == "jwt:sub")
                    {
                        keyKind = RateLimitKeyKind.Subject;
                    }
                    else if (value.Value == "jwt:client_id")
                    {
                        keyKind = RateLimitKeyKind.ClientId;
                    }
                    else if (value.Value == "consumer")
                    {
                        keyKind = RateLimitKeyKind.Consumer;
                    }
                    else if (value.Value.StartsWith("header:", StringComparison.Ordinal))
                    {
                        header = value.Value["header:".Length..];
                        if (!ConfigSyntax.IsToken(header))
                        {
                            errors.Add(value.Mark, $"invalid rate_limit key '{value.Value}': after 'header:' comes a header name (a token: letters, digits and !#$%&'*+-.^_`|~)");
                        }
                        keyKind = RateLimitKeyKind.Header;
                        header = header.ToLowerInvariant();
                    }
                    else
                    {
                        errors.Add(value.Mark, $"unknown rate_limit key '{value.Value}'; expected header:NAME, client_ip, route, jwt:sub, jwt:client_id or consumer");
                    }
                    break;
                case "default_plan":
                    defaultPlan = value;
                    break;
                case "max_keys":
                    if (!value.Value.All(char.IsAsciiDigit) || !int.TryParse(value.Value, NumberStyles.None, CultureInfo.InvariantCulture, out int keys)
                        || keys < 1024 || keys > 16_777_216)
                    {
                        errors.Add(value.Mark, $"invalid max_keys '{value.Value}': expected a whole number from 1024 to 16777216 (memory: 16 bytes per key, 32 with a quota)");
                    }
                    else
                    {
                        capacity = keys;
                    }
                    break;
                case "store":
                    store = value;
                    if (value.Value is not ("memory" or "redis"))
                    {
                        errors.Add(value.Mark, $"unknown rate_limit store '{value.Value}'; expected 'memory' or 'redis'");
                    }
                    break;
            }
        }

        // The policy's own limits: for every request without a plan, unless default_plan names one.
        RateLimitPlan? ownLimits = ReadLimits(policy.Settings, s_rateLimitPlanKeys, null, kind, errors, ignoreUnknown: true);
        RateLimitPlan own = ownLimits ?? new RateLimitPlan();
        if (ownLimits is { HasLimits: false } && !policy.Settings.Any(s => s.Key.Value == "plans"))
        {
            errors.Add(kind.Mark, $"rate_limit policy '{name}' is missing required key 'rate' (e.g. rate: 100/s); or give it a 'quota' or 'plans'");
        }
        var planNames = new HashSet<string>(StringComparer.Ordinal);
        foreach (var plan in plans)
        {
            planNames.Add(plan.Name);
        }
        if (defaultPlan is { } d && !planNames.Contains(d.Value))
        {
            var near = ConfigErrorList.Nearest(d.Value, planNames);
            errors.Add(d.Mark, plans.Count == 0
                ? $"default_plan '{d.Value}' in rate_limit policy '{name}', which has no 'plans'"
                : $"default_plan '{d.Value}' is not a plan of rate_limit policy '{name}'" + (near is null ? $" (plans: {string.Join(", ", planNames)})" : $"; did you mean '{near}'?"));
        }
        if (store is { Value: "redis" } redisStore && redisSetting is null)
        {
            errors.Add(redisStore.Mark, $"rate_limit policy '{name}' has 'store: redis' but no 'redis' block (e.g. redis: {{ address: 127.0.0.1:6379, on_error: allow }})");
        }
        if (redisSetting is not null && store is not { Value: "redis" })
        {
            errors.Add(redisSetting.Key.Mark, $"rate_limit policy '{name}' has a 'redis' block but not 'store: redis'");
        }
        if (errors.Count != before || validateOnly)
        {
            return null;
        }
        var options = new RateLimitOptions
        {
            PolicyName = name,
            KeyKind = keyKind,
            HeaderName = header,
            Rate = own.Rate,
            WindowSeconds = own.WindowSeconds,
            Burst = own.Burst,
            Quota = own.Quota,
            QuotaPeriod = own.QuotaPeriod,
            Plans = plans,
            DefaultPlan = defaultPlan?.Value,
            // Route keys are few: a small table is plenty.
            Capacity = capacity != 0 ? capacity : keyKind == RateLimitKeyKind.Route ? 1024 : 65_536,
            Redis = redis,
        };
        // On a reload, an unchanged definition keeps the running tables (every key's budget and quota count).
        return new RateLimitFilter(options, time, running);
    }

    /// <summary>
    /// <c>rate</c>, <c>burst</c> and <c>quota</c> of a plan, or (with <paramref name="ignoreUnknown"/>) of the policy
    /// itself; null after an error.
    /// </summary>
    private static RateLimitPlan? ReadLimits(IReadOnlyList<PolicySettingConfig> settings, string[] known, string? owner, Located<string> ownerMark, ConfigErrorList errors, bool ignoreUnknown = false)
    {
        int before = errors.Count;
        var plan = new RateLimitPlan();
        Located<string>? burstValue = null;
        foreach (var setting in settings)
        {
            if (ignoreUnknown ? Array.IndexOf(known, setting.Key.Value) < 0 : !CheckKey(setting, known, $"rate_limit {owner}", errors))
            {
                continue;
            }
            if (Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "rate":
                    if (TryParseRate(value.Value, out int n, out int w))
                    {
                        plan = plan with { Rate = n, WindowSeconds = w };
                    }
                    else
                    {
                        errors.Add(value.Mark, $"invalid rate '{value.Value}': expected N/s, N/m or N/h with N a whole number from 1 (e.g. 100/s)");
                    }
                    break;
                case "burst":
                    burstValue = value;
                    if (!int.TryParse(value.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int b) || !value.Value.All(c => char.IsAsciiDigit(c) || c == '-'))
                    {
                        errors.Add(value.Mark, $"expected a whole number for 'burst', got '{value.Value}'");
                    }
                    else if (b < 1)
                    {
                        errors.Add(value.Mark, $"'burst' must be at least 1, got {b}");
                    }
                    else
                    {
                        plan = plan with { Burst = b };
                    }
                    break;
                case "quota":
                    if (TryParseQuota(value.Value, out int q, out QuotaPeriod period))
                    {
                        plan = plan with { Quota = q, QuotaPeriod = period };
                    }
                    else
                    {
                        errors.Add(value.Mark, $"invalid quota '{value.Value}': expected N/hour, N/day or N/month with N a whole number from 1 (e.g. 10000/day)");
                    }
                    break;
            }
        }
        if (owner is not null && errors.Count == before && !plan.HasLimits)
        {
            errors.Add(ownerMark.Mark, $"rate_limit {owner} has neither 'rate' nor 'quota'");
        }
        // At the policy's level without any limit, "missing 'rate'" says it better.
        if (burstValue is { } bv && errors.Count == before && plan.Rate == 0 && (owner is not null || plan.Quota > 0))
        {
            errors.Add(bv.Mark, $"'burst' without 'rate'{(owner is null ? "" : $" in {owner}")}: a burst only applies to a rate");
        }
        return errors.Count == before ? plan : null;
    }

    private static RedisStoreOptions? ReadRedis(IReadOnlyList<PolicySettingConfig> settings, Located<string> key, ConfigErrorList errors)
    {
        int before = errors.Count;
        string? address = null;
        bool allow = true;
        TimeSpan timeout = TimeSpan.FromMilliseconds(250);
        int localBudget = 0;
        foreach (var setting in settings)
        {
            if (!CheckKey(setting, s_redisKeys, "redis", errors) || Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "address":
                    address = value.Value;
                    if (!IsHostPort(value.Value))
                    {
                        errors.Add(value.Mark, $"invalid redis address '{value.Value}': expected host:port with a port from 1 to 65535 (e.g. 127.0.0.1:6379)");
                    }
                    break;
                case "on_error":
                    if (value.Value is not ("allow" or "deny"))
                    {
                        errors.Add(value.Mark, $"invalid on_error '{value.Value}': expected 'allow' (let requests through while Redis is unreachable) or 'deny' (answer 503)");
                    }
                    allow = value.Value != "deny";
                    break;
                case "local_budget":
                    if (!value.Value.All(char.IsAsciiDigit) || !int.TryParse(value.Value, NumberStyles.None, CultureInfo.InvariantCulture, out localBudget)
                        || localBudget < 1 || localBudget > 10_000)
                    {
                        errors.Add(value.Mark, $"invalid local_budget '{value.Value}': expected a whole number from 1 to 10000 (units leased per Redis round trip)");
                    }
                    break;
                case "timeout":
                    if (!ConfigValues.TryParseDuration(value.Value, out timeout) || timeout <= TimeSpan.Zero || timeout > TimeSpan.FromSeconds(10))
                    {
                        errors.Add(value.Mark, $"invalid redis timeout '{value.Value}': expected a duration above 0 and at most 10s (e.g. 250ms)");
                    }
                    break;
            }
        }
        if (address is null)
        {
            errors.Add(key.Mark, "the 'redis' block is missing required key 'address' (e.g. address: 127.0.0.1:6379)");
        }
        return errors.Count == before ? new RedisStoreOptions { Address = address!, OnErrorAllow = allow, Timeout = timeout, LocalBudget = localBudget } : null;
    }

    /// <summary>host:port, the host a name or an address ([v6] in brackets), as StackExchange.Redis takes it.</summary>
    private static bool IsHostPort(string text)
    {
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || colon == text.Length - 1 || !text[(colon + 1)..].All(char.IsAsciiDigit)
            || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
        {
            return false;
        }
        string host = text[..colon];
        return host.StartsWith('[') ? host.EndsWith(']') && IPAddress.TryParse(host[1..^1], out _) : !host.Contains(':') && !host.Any(char.IsWhiteSpace);
    }

    /// <summary>"10000/day", "500/hour", "1000000/month".</summary>
    internal static bool TryParseQuota(string text, out int count, out QuotaPeriod period)
    {
        count = 0;
        period = QuotaPeriod.None;
        int slash = text.IndexOf('/');
        if (slash <= 0 || !text[..slash].All(char.IsAsciiDigit)
            || !int.TryParse(text.AsSpan(0, slash), NumberStyles.None, CultureInfo.InvariantCulture, out count) || count < 1)
        {
            return false;
        }
        period = text[(slash + 1)..] switch
        {
            "hour" => QuotaPeriod.Hour,
            "day" => QuotaPeriod.Day,
            "month" => QuotaPeriod.Month,
            _ => QuotaPeriod.None,
        };
        return period != QuotaPeriod.None;
    }

    /// <summary>"100/s", "20/m", "1000/h".</summary>
    internal static bool TryParseRate(string text, out int count, out int windowSeconds)
    {
        count = 0;
        windowSeconds = 0;
        int slash = text.IndexOf('/');
        if (slash <= 0 || slash != text.Length - 2 || !text[..slash].All(char.IsAsciiDigit)
            || !int.TryParse(text.AsSpan(0, slash), NumberStyles.None, CultureInfo.InvariantCulture, out count) || count < 1)
        {
            return false;
        }
        windowSeconds = text[^1] switch
        {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 0,
        };
        return windowSeconds != 0;
    }

    private static IpFilter? BuildIpFilter(PolicyConfig policy, Located<string> kind, ConfigErrorList errors, IpFilter? running = null)
    {
        int before = errors.Count;
        var allow = new List<IPNetwork>();
        var deny = new List<IPNetwork>();
        var trusted = new List<IPNetwork>();
        Located<string>? allowKey = null;
        foreach (var setting in policy.Settings)
        {
            if (!CheckKey(setting, s_ipFilterKeys, "ip_filter", errors))
            {
                continue;
            }
            if (setting.List is not { } list)
            {
                errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, $"expected a list of CIDRs for '{setting.Key.Value}' (e.g. [10.0.0.0/8, \"::1/128\"])");
                continue;
            }
            var target = setting.Key.Value switch { "allow" => allow, "deny" => deny, _ => trusted };
            if (setting.Key.Value == "allow")
            {
                allowKey = setting.Key;
                if (list.Count == 0)
                {
                    // Written out, an empty allow list reads as "nobody", but means "everybody not denied": say so.
                    errors.Add(setting.Key.Mark, $"ip_filter policy '{policy.Name.Value}' has an empty 'allow' list, which would allow every address rather than none; "
                        + "remove 'allow' to allow every address not denied, or list the allowed networks");
                }
            }
            foreach (var item in list)
            {
                if (ConfigSyntax.TryParseCidr(item.Value, out var network, out var error))
                {
                    target.Add(network);
                }
                else
                {
                    errors.Add(item.Mark, error);
                }
            }
        }
        if (errors.Count != before)
        {
            return null;
        }
        if (allow.Count == 0 && deny.Count > 0 && CidrSet.Covers(deny, [IPNetwork.Parse("0.0.0.0/0"), IPNetwork.Parse("::/0")]))
        {
            errors.Add(kind.Mark, $"ip_filter policy '{policy.Name.Value}' can never pass: its deny list covers every IPv4 and IPv6 address");
            return null;
        }
        if (allow.Count > 0 && deny.Count > 0 && CidrSet.Covers(deny, allow))
        {
            errors.Add(allowKey?.Mark ?? kind.Mark,
                $"ip_filter policy '{policy.Name.Value}' can never pass: every address in its allow list is also in its deny list (deny wins)");
            return null;
        }
        return new IpFilter(policy.Name.Value, allow, deny, trusted, running);
    }

    /// <summary>
    /// A <c>jwt</c> policy. With <paramref name="running"/> (a reload, the running filter of the same name), a
    /// <c>jwks_url</c> source with the same URL, schedule and clock goes on as it is (its keys, its refresh timer): a
    /// reload neither refetches nor starts without keys. One with the same URL and another schedule starts from the
    /// running one's last good set. Otherwise (a new URL, or none before) the set is empty until its first fetch. The
    /// filter takes over the running one's verified-token cache when a cached verdict still means the same
    /// (<see cref="JwtFilter.SameCache"/>: among others, the very same source, or a jwks_file of identical content).
    /// </summary>
    private static JwtFilter? BuildJwt(PolicyConfig policy, Located<string> kind, ConfigErrorList errors, TimeProvider time, string baseDirectory,
        bool validateOnly = false, JwtFilter? running = null)
    {
        Uri? jwksUrl = null;
        Located<string>? jwksFile = null;
        TimeSpan refresh = TimeSpan.FromMinutes(5), minRefetch = TimeSpan.FromSeconds(30);
        int before = errors.Count;
        string name = policy.Name.Value;
        string? issuer = null;
        List<string>? audiences = null;
        var scopes = new List<string>();
        var roles = new List<string>();
        var claims = new List<KeyValuePair<string, string>>();
        bool allScopes = true, allRoles = true;
        string rolesClaim = "roles";
        IdentityForwardingOptions? forward = null;
        TimeSpan skew = TimeSpan.FromSeconds(30);
        JsonWebKey[]? keys = null;
        byte[]? keysSha256 = null;
        bool hasJwks = false;
        foreach (var setting in policy.Settings)
        {
            if (!CheckKey(setting, s_jwtKeys, "jwt", errors))
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "forward_identity":
                    forward = ReadForwardIdentity(setting, errors);
                    continue;
                case "required_claims":
                    claims = ReadRequiredClaims(setting, name, errors);
                    continue;
                case "required_roles":
                    roles = ReadRoles(setting, name, errors);
                    continue;
                case "audiences":
                case "required_scopes":
                    if (setting.List is not { } list)
                    {
                        errors.Add(setting.Scalar?.Mark ?? setting.Key.Mark, $"expected a list for '{setting.Key.Value}' (e.g. [orders-api])");
                        continue;
                    }
                    if (setting.Key.Value == "audiences")
                    {
                        audiences = [];
                        if (list.Count == 0)
                        {
                            errors.Add(setting.Key.Mark, $"jwt policy '{name}' has an empty 'audiences' list: no token could pass");
                        }
                    }
                    foreach (var item in list)
                    {
                        if (item.Value.Length == 0)
                        {
                            errors.Add(item.Mark, $"empty value in '{setting.Key.Value}'");
                        }
                        else if (setting.Key.Value == "audiences")
                        {
                            audiences!.Add(item.Value);
                        }
                        else if (!IsScopeToken(item.Value))
                        {
                            // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
                            errors.Add(item.Mark, $"invalid scope '{item.Value}': a scope is printable ASCII without spaces, '\"' or '\\' (RFC 6749 section 3.3)");
                        }
                        else
                        {
                            scopes.Add(item.Value);
                        }
                    }
                    if (setting.Key.Value == "required_scopes" && list.Count > 64)
                    {
                        errors.Add(setting.Key.Mark, $"jwt policy '{name}' requires {list.Count} scopes; at most 64 are supported");
                    }
                    continue;
            }
            if (Scalar(setting, errors) is not { } value)
            {
                continue;
            }
            switch (setting.Key.Value)
            {
                case "issuer":
                    if (value.Value.Length == 0)
                    {
                        errors.Add(value.Mark, "'issuer' must not be empty");
                    }
                    issuer = value.Value;
                    break;
                case "scopes_mode":
                case "roles_mode":
                    if (value.Value is not ("all" or "any"))
                    {
                        errors.Add(value.Mark, $"invalid {setting.Key.Value} '{value.Value}': expected 'all' or 'any'");
                    }
                    else if (setting.Key.Value == "scopes_mode")
                    {
                        allScopes = value.Value == "all";
                    }
                    else
                    {
                        allRoles = value.Value == "all";
                    }
                    break;
                case "roles_claim":
                {
                    // A dotted name is a path into nested objects (realm_access.roles); the top-level claim it starts
                    // from must not be one the filter reads itself.
                    string[] path = value.Value.Split('.');
                    if (value.Value.Length == 0 || s_reservedClaims.Contains(path[0]))
                    {
                        errors.Add(value.Mark, $"invalid roles_claim '{value.Value}': name a claim other than {string.Join(", ", s_reservedClaims)}");
                    }
                    else if (Array.IndexOf(path, "") >= 0 || path.Length > JwtFilter.MaxRolesPathSegments)
                    {
                        errors.Add(value.Mark, $"invalid roles_claim '{value.Value}': expected a claim name or a dotted path of at most {JwtFilter.MaxRolesPathSegments} non-empty names into nested objects (e.g. realm_access.roles)");
                    }
                    rolesClaim = value.Value;
                    break;
                }
                case "clock_skew":
                    if (!ConfigValues.TryParseDuration(value.Value, out skew) || skew > TimeSpan.FromHours(1))
                    {
                        errors.Add(value.Mark, $"invalid clock_skew '{value.Value}': expected a duration from 0s to 1h (e.g. 30s)");
                    }
                    break;
                case "jwks_url":
                    hasJwks = true;
                    if (!Uri.TryCreate(value.Value, UriKind.Absolute, out jwksUrl) || jwksUrl.Scheme is not ("http" or "https"))
                    {
                        errors.Add(value.Mark, $"invalid jwks_url '{value.Value}': expected an absolute http:// or https:// URL");
                    }
                    break;
                case "jwks_refresh":
                case "jwks_min_refetch":
                    if (!ConfigValues.TryParseDuration(value.Value, out var period) || period < TimeSpan.FromSeconds(1) || period > TimeSpan.FromDays(1))
                    {
                        errors.Add(value.Mark, $"invalid {setting.Key.Value} '{value.Value}': expected a duration from 1s to 24h (e.g. 5m)");
                    }
                    else if (setting.Key.Value == "jwks_refresh")
                    {
                        refresh = period;
                    }
                    else
                    {
                        minRefetch = period;
                    }
                    break;
                case "jwks_file":
                    hasJwks = true;
                    jwksFile = value;
                    keys = LoadJwks(value, baseDirectory, errors, out keysSha256);
                    break;
            }
        }
        if (issuer is null)
        {
            errors.Add(kind.Mark, $"jwt policy '{name}' is missing required key 'issuer' (the expected \"iss\" claim)");
        }
        if (audiences is null)
        {
            errors.Add(kind.Mark, $"jwt policy '{name}' is missing required key 'audiences' (the accepted \"aud\" values)");
        }
        if (!hasJwks)
        {
            errors.Add(kind.Mark, $"jwt policy '{name}' is missing required key 'jwks_file' or 'jwks_url' (a JSON Web Key Set, RFC 7517)");
        }
        if (jwksFile is not null && jwksUrl is not null)
        {
            errors.Add(jwksFile.Value.Mark, $"jwt policy '{name}' has both 'jwks_file' and 'jwks_url'; choose one");
        }
        if (errors.Count != before || (keys is null && jwksUrl is null) || issuer is null || audiences is null || (validateOnly && jwksUrl is not null))
        {
            // Validation never fetches: a down key server must not fail `proxy validate` (nor slow it down).
            return null;
        }
        JwksSource? source = null;
        if (jwksUrl is not null)
        {
            var options = new JwksSourceOptions { Url = jwksUrl, Refresh = refresh, MinRefetch = minRefetch };
            JwksSource? was = running?.Options.KeySource;
            if (was is not null && ReferenceEquals(was.Time, time) && was.Options == options)
            {
                source = was;
            }
            else
            {
                // First fetch now, in the background: config load does not wait for (or fail on) the key server.
                source = new JwksSource(name, options, time, seed: was is not null && was.Options.Url == jwksUrl ? was.Keys : null);
                source.Start();
            }
        }
        return new JwtFilter(new JwtOptions
        {
            PolicyName = name,
            Issuer = issuer,
            Audiences = audiences,
            RequiredScopes = scopes,
            AllScopes = allScopes,
            RequiredRoles = roles,
            AllRoles = allRoles,
            RolesClaim = rolesClaim,
            RequiredClaims = claims,
            ForwardIdentity = forward,
            ClockSkew = skew,
            Keys = keys ?? [],
            KeySetSha256 = keysSha256,
            KeySource = source,
        }, time, running);
    }

    /// <summary>
    /// Reads the JWKS at compile time; a path is relative to the config file's directory. <paramref name="sha256"/> is
    /// the content's digest, by which a reload tells an unchanged key set (<see cref="JwtFilter.SameCache"/>).
    /// </summary>
    private static JsonWebKey[]? LoadJwks(Located<string> file, string baseDirectory, ConfigErrorList errors, out byte[]? sha256)
    {
        sha256 = null;
        if (file.Value.Length == 0)
        {
            errors.Add(file.Mark, "'jwks_file' must not be empty");
            return null;
        }
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(Path.Combine(baseDirectory, file.Value));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            errors.Add(file.Mark, $"cannot read jwks_file '{file.Value}': {e.Message}");
            return null;
        }
        sha256 = System.Security.Cryptography.SHA256.HashData(bytes);
        try
        {
            return JsonWebKeySet.Parse(bytes);
        }
        catch (FormatException e)
        {
            errors.Add(file.Mark, $"jwks_file '{file.Value}': {e.Message}");
            return null;
        }
    }

    private static bool IsScopeToken(string scope)
    {
        foreach (char c in scope)
        {
            if (c is < '!' or > '~' or '"' or '\\')
            {
                return false;
            }
        }
        return true;
    }

    private static bool CheckKey(PolicySettingConfig setting, string[] known, string kind, ConfigErrorList errors)
    {
        if (Array.IndexOf(known, setting.Key.Value) >= 0)
        {
            return true;
        }
        var near = ConfigErrorList.Nearest(setting.Key.Value, known);
        errors.Add(setting.Key.Mark, near is null
            ? $"unknown key '{setting.Key.Value}' in {kind} (expected one of: {string.Join(", ", known)})"
            : $"unknown key '{setting.Key.Value}' in {kind}; did you mean '{near}'?");
        return false;
    }

    private static Located<string>? Scalar(PolicySettingConfig setting, ConfigErrorList errors)
    {
        if (setting.Scalar is { } scalar)
        {
            return scalar;
        }
        errors.Add(setting.Key.Mark, $"expected a single value for '{setting.Key.Value}', got {(setting.Map is null ? "a list" : "a map")}");
        return null;
    }

    /// <summary>Policy names appear inside structured-field strings and problem bodies: keep them plain.</summary>
    private static bool IsPolicyName(string name)
    {
        if (name.Length == 0)
        {
            return false;
        }
        foreach (char c in name)
        {
            if (!char.IsAsciiLetterOrDigit(c) && c is not ('.' or '_' or '-'))
            {
                return false;
            }
        }
        return true;
    }
}
