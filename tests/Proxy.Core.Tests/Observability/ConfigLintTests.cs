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
