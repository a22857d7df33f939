using Proxy.Configuration;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The introspection policy's <c>client_secret_file</c>: read at load, trimmed, exclusive with <c>client_secret</c>, and reread on reload.</summary>
public sealed class IntrospectionSecretFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-secretfile-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string ConfigPath => Path.Combine(_dir, "proxy.yaml");

    private ConfigLoadResult Load(params string[] secretLines)
    {
        File.WriteAllText(ConfigPath, string.Join('\n', [
            "policies:", "  opaque:", "    introspection:", "      url: http://127.0.0.1:9000/introspect", "      client_id: gw", .. secretLines,
            "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:", "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [opaque] }"]) + "\n");
        return ConfigLoader.LoadFile(ConfigPath);
    }

    private string[] Errors(params string[] secretLines)
        => Load(secretLines).Errors.Select(e => $"{Path.GetFileName(e.File)}:{e.Line}:{e.Column}: {e.Message}").ToArray();

    private static IntrospectionFilter Filter(ConfigLoadResult result)
    {
        Assert.True(result.Success, string.Join("\n", result.Errors));
        return Assert.IsType<IntrospectionFilter>(Assert.Single(result.Snapshot!.Policies).Value);
    }

    [Fact]
    public void Load_SecretFileRelativeToConfig_ReadAndTrimmed()
    {
        Directory.CreateDirectory(Path.Combine(_dir, "secrets"));
        File.WriteAllText(Path.Combine(_dir, "secrets", "gw"), "  s3cret-from-file\r\n\n");
        Assert.Equal("s3cret-from-file", Filter(Load("      client_secret_file: secrets/gw")).Options.ClientSecret);
    }

    [Fact]
    public void Validate_BothInlineAndFile_ReportsSecondKeyPosition()
    {
        File.WriteAllText(Path.Combine(_dir, "gw.secret"), "x");
        Assert.Equal(["proxy.yaml:7:27: introspection policy 'opaque' has both 'client_secret' and 'client_secret_file'; choose one"],
            Errors("      client_secret: s3cret", "      client_secret_file: gw.secret"));
        Assert.Equal(["proxy.yaml:7:22: introspection policy 'opaque' has both 'client_secret' and 'client_secret_file'; choose one"],
            Errors("      client_secret_file: gw.secret", "      client_secret: s3cret"));
    }

    [Fact]
    public void Validate_MissingFile_ReportsFileLineColumn()
    {
        string error = Assert.Single(Errors("      client_secret_file: nowhere/gw.secret"));
        Assert.StartsWith("proxy.yaml:6:27: cannot read client_secret_file 'nowhere/gw.secret': ", error);
    }

    [Fact]
    public void Validate_BlankFile_ReportedWithoutContent()
    {
        File.WriteAllText(Path.Combine(_dir, "blank"), " \n\t\n");
        Assert.Equal(["proxy.yaml:6:27: client_secret_file 'blank' is empty"], Errors("      client_secret_file: blank"));
    }

    [Fact]
    public void Validate_NeitherSecretNorFile_ReportsBothNames()
    {
        string error = Assert.Single(Errors());
        Assert.Contains("missing required key 'client_secret' or 'client_secret_file'", error);
    }

    [Fact]
    public void Reload_OnlySecretFileChanged_NewVersionAndNewSecret()
    {
        string file = Path.Combine(_dir, "gw.secret");
        File.WriteAllText(file, "old-secret\n");
        var first = Load("      client_secret_file: gw.secret");
        Assert.Equal("old-secret", Filter(first).Options.ClientSecret);

        // The YAML text is the same: without the file in the version, a reload would be taken for "unchanged".
        File.WriteAllText(file, "new-secret\n");
        var second = ConfigLoader.LoadFile(ConfigPath);
        Assert.Equal("new-secret", Filter(second).Options.ClientSecret);
        Assert.NotEqual(first.Snapshot!.Version, second.Snapshot!.Version);

        // Same text, same file: same version (a reload with nothing changed stays a no-op).
        Assert.Equal(second.Snapshot.Version, ConfigLoader.LoadFile(ConfigPath).Snapshot!.Version);
    }
}
