using System.Security.Cryptography;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

public sealed partial class CliTests
{
    [Fact]
    public async Task HashKey_Argument_PrintsSha256Hex()
    {
        var result = await RunProxyAsync("hash-key", "alice-secret");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData("alice-secret"u8)), result.StdoutText.Trim());
    }

    [Fact]
    public async Task HashKey_StandardInput_PrintsSha256HexWithoutNewline()
    {
        var proxyDll = ProxyDll();
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var result = await ProcessRunner.RunAsync(dotnet, [proxyDll, "hash-key", "-"], stdin: Encoding.UTF8.GetBytes("bob-secret\n"), timeout: TimeSpan.FromSeconds(30));

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData("bob-secret"u8)), result.StdoutText.Trim());
    }
}

public sealed partial class CliTests
{
    [Fact]
    public async Task Validate_PolicyConflicts_Exits2WithEachProblemPositioned()
    {
        var path = Write("conflicts.yaml", """
            policies:
              nobody: { ip_filter: { allow: [] } }
              keys: { api_key: { keys: [] } }
              reads: { deny: { methods: [GET] } }
            listeners:
              - { name: edge, address: "127.0.0.1:0", public: true }
            routes:
              - { id: open, match: { path: /open, methods: [POST] }, respond: { status: 200 }, policies: [reads, missing] }
            """);

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        string output = result.StdoutText;
        Assert.Contains("conflicts.yaml:2:26: ip_filter policy 'nobody' has an empty 'allow' list", output);
        Assert.Contains("conflicts.yaml:3:11: api_key policy 'keys' can never pass: it has no keys", output);
        Assert.Contains("route 'open' refers to unknown policy 'missing'", output);
        Assert.Contains("route 'open' can never pass: it matches only POST, and policy 'reads' lets through only GET", output);
        Assert.Contains("route 'open' has no authentication policy (jwt, api_key or introspection) on public listener 'edge'", output);
    }
}
