using System.Text.RegularExpressions;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>The <c>proxy</c> command-line host (proxy.dll, copied next to the tests by the project reference).</summary>
public sealed partial class CliTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-cli-tests-").FullName;

    [Fact]
    public async Task Validate_InvalidConfig_Exits2WithPositionedErrors()
    {
        var path = Write("bad.yaml", """
            listeners:
              - { name: public, address: not-an-address }
            routes:
              - { id: r1, match: { path: /a }, cluster: missing_cluster }
            clusters:
              backend:
                destinations: [{ address: "nota url" }]
            """);

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        var lines = (result.StdoutText + "\n" + result.Stderr).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var positioned = lines.Where(l => PositionedError().IsMatch(l)).ToList();
        Assert.True(positioned.Count > 0, "No file:line:column: error lines in:\n" + result);
        Assert.All(positioned, l => Assert.Contains("bad.yaml", l, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Validate_YamlSyntaxError_Exits2WithPosition()
    {
        var path = Write("broken.yaml", "listeners:\n  - { name: public, address: 127.0.0.1:0\nroutes: [\n");

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains((result.StdoutText + "\n" + result.Stderr).Split('\n'), l => PositionedError().IsMatch(l.Trim()));
    }

    [Fact]
    public async Task Validate_ValidConfig_Exits0()
    {
        var path = Write("good.yaml", new ProxyConfig { BackendPort = 8080 }.Render());

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 0, result.ToString());
    }

    [Fact]
    public async Task Version_Flag_Exits0AndPrintsVersion()
    {
        var result = await RunProxyAsync("--version");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Matches(@"\d+\.\d+", result.StdoutText);
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [GeneratedRegex(@"^.+:\d+:\d+: ")]
    private static partial Regex PositionedError();

    private string Write(string name, string content)
    {
        var path = Path.Combine(_directory, name);
        File.WriteAllText(path, content);
        return path;
    }

    private static Task<ProcessResult> RunProxyAsync(params string[] arguments)
    {
        var proxyDll = Path.Combine(AppContext.BaseDirectory, "proxy.dll");
        Assert.True(File.Exists(proxyDll), "proxy.dll not found next to the tests: " + proxyDll);
        // The dotnet CLI tells child processes which host runs them; fall back to PATH.
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        return ProcessRunner.RunAsync(dotnet, [proxyDll, .. arguments], timeout: TimeSpan.FromSeconds(30));
    }
}
