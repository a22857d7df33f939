using Proxy.Configuration;
using Proxy.Model;
using Proxy.Pipeline;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The <c>policies:</c> section: validation errors with positions, and the compiled chains.</summary>
public class PolicyConfigTests
{
    private static string[] Errors(params string[] lines)
        => ConfigLoader.LoadText(string.Join('\n', lines) + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    private static readonly string[] s_tail =
    [
        "listeners:",
        "  - { name: public, address: \"127.0.0.1:8080\" }",
        "routes:",
        "  - { id: r, match: { path: /r }, respond: { status: 200 } }",
    ];

    private static string[] PolicyErrors(params string[] policyLines) => Errors(["policies:", .. policyLines, .. s_tail]);

    [Fact]
    public void Validate_ValidPolicies_NoErrors()
    {
        Assert.Empty(Errors(
            "policies:",
            "  per-client:",
            "    rate_limit: { key: header:x-api-key, rate: 100/s, burst: 200, store: memory }",
            "  office-only:",
            "    ip_filter: { allow: [10.0.0.0/8, \"::1/128\"], deny: [10.1.2.3/32] }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\", policies: [per-client] }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [office-only, per-client] }"));
    }

    [Theory]
    [InlineData("100", "invalid rate '100'")]
    [InlineData("100/d", "invalid rate '100/d'")]
    [InlineData("0/s", "invalid rate '0/s'")]
    [InlineData("x/s", "invalid rate 'x/s'")]
    [InlineData("-1/s", "invalid rate '-1/s'")]
    public void Validate_MalformedRate_ReportsValuePosition(string rate, string message)
    {
        var errors = PolicyErrors("  p:", $"    rate_limit: {{ rate: \"{rate}\" }}");
        Assert.Single(errors);
        Assert.StartsWith($"t.yaml:3:25: {message}", errors[0]);
    }

    [Fact]
    public void Validate_BurstBelowOne_ReportsPosition()
    {
        Assert.Equal(["t.yaml:3:37: 'burst' must be at least 1, got 0"], PolicyErrors("  p:", "    rate_limit: { rate: 1/s, burst: 0 }"));
    }

    [Theory]
    [InlineData("jwt:sub")]
    [InlineData("jwt:client_id")]
    [InlineData("consumer")]
    public void Validate_IdentityKeys_Accepted(string key)
    {
        Assert.Empty(PolicyErrors("  p:", $"    rate_limit: {{ key: \"{key}\", rate: 1/s }}"));
    }

    [Fact]
    public void Validate_RedisStoreWithoutBlock_ReportsStorePosition()
    {
        Assert.Equal(["t.yaml:3:37: rate_limit policy 'p' has 'store: redis' but no 'redis' block (e.g. redis: { address: 127.0.0.1:6379, on_error: allow })"],
            PolicyErrors("  p:", "    rate_limit: { rate: 1/s, store: redis }"));
    }

    [Fact]
    public void Validate_MissingRate_ReportsKindPosition()
    {
        Assert.Equal(["t.yaml:3:5: rate_limit policy 'p' is missing required key 'rate' (e.g. rate: 100/s); or give it a 'quota' or 'plans'"],
            PolicyErrors("  p:", "    rate_limit: { burst: 5 }"));
    }

    [Fact]
    public void Validate_UnknownSettingKey_SuggestsNearest()
    {
        Assert.Equal(["t.yaml:3:30: unknown key 'brust' in rate_limit; did you mean 'burst'?"],
            PolicyErrors("  p:", "    rate_limit: { rate: 1/s, brust: 5 }"));
    }

    [Fact]
    public void Validate_UnknownKind_SuggestsNearest()
    {
        Assert.Equal(["t.yaml:3:5: unknown policy kind 'rate_limits' in policy 'p'; did you mean 'rate_limit'?"],
            PolicyErrors("  p:", "    rate_limits: { rate: 1/s }"));
    }

    [Fact]
    public void Validate_BadCidr_ReportsItemPosition()
    {
        var errors = PolicyErrors("  p:", "    ip_filter: { allow: [10.0.0.0/8, 10.0.0.0/33], deny: [nope] }");
        Assert.Equal(2, errors.Length);
        Assert.StartsWith("t.yaml:3:38: invalid CIDR '10.0.0.0/33'", errors[0]);
        Assert.StartsWith("t.yaml:3:59: invalid CIDR 'nope'", errors[1]);
    }

    [Fact]
    public void Validate_AllowCoveredByDeny_CanNeverPass()
    {
        Assert.Equal(["t.yaml:3:18: ip_filter policy 'p' can never pass: every address in its allow list is also in its deny list (deny wins)"],
            PolicyErrors("  p:", "    ip_filter: { allow: [10.1.0.0/16, 10.2.0.0/16], deny: [10.0.0.0/8] }"));
    }

    [Fact]
    public void Validate_UnknownAndDuplicatePolicyReferences_Reported()
    {
        Assert.Equal(
        [
            "t.yaml:5:59: listener 'public' refers to unknown policy 'per-clent'; did you mean 'per-client'?",
            "t.yaml:7:84: route 'r' lists policy 'per-client' twice (first at line 7, column 72)",
        ],
        Errors(
            "policies:",
            "  per-client:",
            "    rate_limit: { rate: 1/s }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\", policies: [per-clent] }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [per-client, per-client] }"));
    }

    [Fact]
    public void Validate_PolicyWithTwoKinds_ReportsShape()
    {
        var errors = PolicyErrors("  p:", "    rate_limit: { rate: 1/s }", "    ip_filter: { allow: [10.0.0.0/8] }");
        Assert.Equal(["t.yaml:3:5: policy 'p' must have exactly one key naming its kind (e.g. rate_limit or ip_filter), got 2"], errors);
    }

    [Fact]
    public void Compile_ListenerDefaultsThenRoutePolicies_InThatOrder()
    {
        var result = ConfigLoader.LoadText(string.Join('\n',
            "policies:",
            "  a: { ip_filter: { allow: [127.0.0.0/8] } }",
            "  b: { rate_limit: { rate: 10/s } }",
            "  c: { rate_limit: { rate: 10/m, key: route } }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\", policies: [b] }",
            "  - { name: other, address: \"127.0.0.1:8081\" }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [c, a, b] }",
            "  - { id: plain, match: { path: /p }, respond: { status: 200 } }") + "\n", "t.yaml");
        Assert.True(result.Success, string.Join("\n", result.Errors));
        var routes = result.Snapshot!.Routes.InMatchOrder.ToDictionary(r => r.Id);
        Assert.Equal(["b", "c", "a"], routes["r"].Filters(0).PolicyNames);
        Assert.Equal(["c", "a", "b"], routes["r"].Filters(1).PolicyNames);
        Assert.Equal(["b"], routes["plain"].Filters(0).PolicyNames);
        Assert.True(routes["plain"].Filters(1).IsEmpty);
        // One filter per policy, shared by every chain that names it.
        Assert.Same(routes["r"].Filters(0).RequestHeaders[0], routes["plain"].Filters(0).RequestHeaders[0]);
    }

    [Fact]
    public void Register_CustomKind_UsableFromConfigAndErrorsReported()
    {
        PolicyKinds.Register("test_require_header", d =>
            d.Settings.TryGetValue("name", out var name) ? new RequireHeader(name) : throw new ArgumentException("'name' is required"));
        Assert.Empty(PolicyErrors("  p:", "    test_require_header: { name: x-tenant }"));
        Assert.Equal(["t.yaml:3:5: policy 'p' (test_require_header): 'name' is required"],
            PolicyErrors("  p:", "    test_require_header: { other: 1 }"));
        Assert.Throws<InvalidOperationException>(() => PolicyKinds.Register("rate_limit", _ => new RequireHeader("x")));
    }

    private sealed class RequireHeader(string name) : IRequestHeadersFilter
    {
        private readonly byte[] _name = System.Text.Encoding.ASCII.GetBytes(name);

        public FilterStatus OnRequestHeaders(RequestContext context)
            => context.TryGetHeader(_name, out _) ? FilterStatus.Continue : context.Respond(400, "missing_header", default, default);
    }
}
