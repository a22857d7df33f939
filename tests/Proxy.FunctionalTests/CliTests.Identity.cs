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
