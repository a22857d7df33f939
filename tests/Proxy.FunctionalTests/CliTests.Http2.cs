namespace Proxy.FunctionalTests;

public sealed partial class CliTests
{
    [Fact]
    public async Task Validate_Http2ProtocolSchemeMismatch_Exits2WithPositionedErrors()
    {
        var path = Write("h2.yaml", """
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: r1, match: { path: "/{**rest}" }, cluster: tls_only }
            clusters:
              tls_only:
                protocol: h2
                destinations: [{ address: "http://127.0.0.1:50051" }]
              clear_only:
                protocol: h2c
                destinations: [{ address: "https://127.0.0.1:50052" }]
            """);

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        string output = result.StdoutText + "\n" + result.Stderr;
        Assert.Contains("h2.yaml:8:31: cluster 'tls_only' has protocol h2", output, StringComparison.Ordinal);
        Assert.Contains("h2.yaml:11:31: cluster 'clear_only' has protocol h2c", output, StringComparison.Ordinal);
    }
}
