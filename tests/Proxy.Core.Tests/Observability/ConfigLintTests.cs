using Proxy.Configuration;

namespace Proxy.Core.Tests.Observability;

public sealed class ConfigLintTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-lint-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private List<string> Lint(string yaml)
    {
        string path = Path.Combine(_directory, "p.yaml");
        File.WriteAllText(path, yaml);
        var (errors, findings) = ConfigLint.Run(path);
        Assert.Empty(errors);
        return findings.Select(f => $"{f.Line}:{f.Code}:{f.Message.Split(' ')[1]}").ToList();
    }

    [Fact]
    public void Lint_UnprotectedCatchAllOnPublicListener_ListsEveryFinding()
    {
        var findings = Lint("""
            listeners:
              - { name: public, address: "0.0.0.0:0" }
              - { name: local, address: "127.0.0.1:0" }
            policies:
              limit: { rate_limit: { rate: 10/s, burst: 20 } }
            routes:
              - { id: open, listeners: [public], match: { path: "/{**rest}" }, cluster: backend }
              - { id: limited, match: { path: /limited }, cluster: backend, policies: [limit] }
              - { id: internal, listeners: [local], match: { path: "/{**rest}" }, respond: { status: 200 } }
            clusters:
              backend: { destinations: ["http://127.0.0.1:1"], connect_timeout: 1s }
            """);
        Assert.Equal(
        [
            "7:no_authentication:'open'", "7:no_rate_limit:'open'", "7:public_catch_all:'open'",
            "8:no_authentication:'limited'",
            "9:no_authentication:'internal'", "9:no_rate_limit:'internal'",
            "11:default_timeouts:'backend'",
        ], findings);
    }

    /// <summary>
    /// "/secret" with an api_key policy and a catch-all to the same cluster without it: "/secret/" and "/secret;x" reach
    /// the upstream unauthenticated, and many upstreams serve them as "/secret". Routing behaves as documented, so lint
    /// is where it is said.
    /// </summary>
    [Fact]
    public void Lint_ExactRouteWithPoliciesBesideCatchAllToSameCluster_WarnsOfTrailingSlashAndParameter()
    {
        var findings = ExactPathFindings("""
            routes:
              - { id: secret, match: { path: /secret }, cluster: up, policies: [keys] }
              - { id: public, match: { path: "/{**rest}" }, cluster: up }
            """);

        Assert.Equal(
            ["10:exact_path_bypass: route 'secret' matches '/secret' exactly, but route 'public' (line 11) takes '/secret/' and '/secret;x' "
             + "(a trailing slash, a ';' parameter) to the same cluster 'up' without its policies [keys]; many upstreams serve those as "
             + "'/secret': put the policies on route 'public' too, or on a route for '/secret/{**rest}' (which leaves ';' parameters)"],
            findings);
    }

    [Theory]
    [InlineData("other cluster", "{ id: public, match: { path: \"/{**rest}\" }, cluster: down }")]
    [InlineData("same policies", "{ id: public, match: { path: \"/{**rest}\" }, cluster: up, policies: [keys] }")]
    [InlineData("answered locally", "{ id: public, match: { path: \"/{**rest}\" }, respond: { status: 404 } }")]
    [InlineData("narrower catch-all", "{ id: public, match: { path: \"/{**rest}\", methods: [POST] }, cluster: up }")]
    [InlineData("variants also protected", "{ id: tree, match: { path: \"/secret/{**rest}\" }, cluster: up, policies: [keys] }\n  - { id: semi, match: { path: \"/{name}\" }, respond: { status: 404 } }")]
    public void Lint_ExactRouteVariantsNotServedUnprotected_NoWarning(string why, string otherRoute)
    {
        var findings = ExactPathFindings($"routes:\n  - {{ id: secret, match: {{ path: /secret }}, cluster: up, policies: [keys] }}\n  - {otherRoute}\n");

        Assert.True(findings.Count == 0, why + ": " + string.Join("\n", findings));
    }

    [Fact]
    public void Lint_ExactRouteOnlySlashVariantUnprotected_NamesOnlyIt()
    {
        var findings = ExactPathFindings("""
            routes:
              - { id: secret, match: { path: /secret }, cluster: up, policies: [keys] }
              - { id: tree, match: { path: "/secret/{**rest}" }, cluster: up }
              - { id: semi, match: { path: "/{name}" }, respond: { status: 404 } }
            """);

        var finding = Assert.Single(findings);
        Assert.Contains("but route 'tree' (line 11) takes '/secret/' (a trailing slash) to the same cluster 'up'", finding, StringComparison.Ordinal);
    }

    /// <summary>The exact_path_bypass findings of a config with a public listener, an api_key policy and two clusters.</summary>
    private List<string> ExactPathFindings(string routes)
    {
        string path = Path.Combine(_directory, "p.yaml");
        File.WriteAllText(path, $$"""
            listeners:
              - { name: public, address: "127.0.0.1:0" }
            policies:
              keys:
                api_key: { keys: [{ sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, consumer: alice }] }
            clusters:
              up: { destinations: ["http://127.0.0.1:1"] }
              down: { destinations: ["http://127.0.0.1:2"] }
            """ + "\n" + routes);
        var (errors, findings) = ConfigLint.Run(path);
        Assert.True(errors.Count == 0, string.Join("\n", errors));
        return findings.Where(f => f.Code == "exact_path_bypass").Select(f => $"{f.Line}:{f.Code}: {f.Message}").ToList();
    }

    [Fact]
    public void Lint_InvalidConfig_ReturnsErrorsOnly()
    {
        string path = Path.Combine(_directory, "bad.yaml");
        File.WriteAllText(path, "listeners: []\n");
        var (errors, findings) = ConfigLint.Run(path);
        Assert.NotEmpty(errors);
        Assert.Empty(findings);
    }
}
