using Proxy.FunctionalTests.Infrastructure;
using Proxy.Transport.Tls;

namespace Proxy.FunctionalTests.Tls;

/// <summary><c>proxy dev-cert</c>: the files it writes load as a listener certificate that curl accepts.</summary>
public sealed class TlsCliTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-devcert-tests-").FullName;

    [Fact]
    public async Task DevCert_WritesPemPairThatServesTlsToCurl()
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var result = await ProcessRunner.RunAsync(dotnet, [ProxyBinary.DllPath(), "dev-cert", "--out", _directory, "--hosts", "localhost,127.0.0.1"],
            timeout: TimeSpan.FromSeconds(30));

        Assert.True(result.ExitCode == 0, result.ToString());
        string cert = Path.Combine(_directory, "dev-cert.pem"), key = Path.Combine(_directory, "dev-cert.key");
        Assert.True(TlsCertificates.TryLoad(cert, key, out var leaf, out _, out var error, out _), error);
        Assert.Equal(["localhost"], TlsCertificates.DnsNames(leaf!));
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
        }

        await using var proxy = await TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0, tls: { certificates: [{ cert: "{{cert}}", key: "{{key}}" }] } }
            routes:
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
            """);
        int port = proxy.Public.Port;
        var curl = await Curl.RunAsync(["--cacert", cert, "--resolve", $"localhost:{port}:127.0.0.1", $"https://localhost:{port}/hello"]);
        Assert.True(curl.ExitCode == 0, curl.ToString());
        Assert.Equal("hello\n", curl.StdoutText);
    }

    [Fact]
    public async Task DevCert_UnknownArgument_Exits2()
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var result = await ProcessRunner.RunAsync(dotnet, [ProxyBinary.DllPath(), "dev-cert", "--bogus"], timeout: TimeSpan.FromSeconds(30));

        Assert.Equal(2, result.ExitCode);
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}
