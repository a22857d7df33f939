using Proxy.Configuration;
using Proxy.Upstream;

namespace Proxy.Core.Tests.Http2.Client;

/// <summary>Cluster keys <c>protocol</c> and <c>http2</c>: reading, validation against destination schemes, compilation.</summary>
public class Http2UpstreamConfigTests
{
    private static string Config(string protocol, string address, string extra = "") => $$"""
        listeners:
          - { name: public, address: "127.0.0.1:8080" }
        routes:
          - { id: r, match: { path: "/{**rest}" }, cluster: c }
        clusters:
          c:
            protocol: {{protocol}}
            destinations: [{ address: "{{address}}" }]
        {{extra}}
        """;

    private static string[] Errors(string yaml) => ConfigLoader.LoadText(yaml, "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    [Theory]
    [InlineData("http1", "http://127.0.0.1:1")]
    [InlineData("h2c", "http://127.0.0.1:1")]
    [InlineData("h2", "https://127.0.0.1:1")]
    [InlineData("auto", "http://127.0.0.1:1")]
    [InlineData("auto", "https://127.0.0.1:1")]
    public void Load_ProtocolMatchingScheme_HasNoErrors(string protocol, string address)
    {
        Assert.Empty(Errors(Config(protocol, address)));
    }

    [Fact]
    public void Load_H2WithHttpDestination_ReportsDestinationPosition()
    {
        Assert.Equal(
            ["t.yaml:8:31: cluster 'c' has protocol h2 (HTTP/2 over TLS) but destination 'http://127.0.0.1:1' is not https://; use protocol h2c for cleartext HTTP/2"],
            Errors(Config("h2", "http://127.0.0.1:1")));
    }

    [Fact]
    public void Load_H2cWithHttpsDestination_ReportsDestinationPosition()
    {
        Assert.Equal(
            ["t.yaml:8:31: cluster 'c' has protocol h2c (cleartext HTTP/2) but destination 'https://127.0.0.1:1' is https://; use protocol h2 for HTTP/2 over TLS"],
            Errors(Config("h2c", "https://127.0.0.1:1")));
    }

    [Fact]
    public void Load_UnknownProtocol_SuggestsNearest()
    {
        string[] errors = Errors(Config("h3", "http://127.0.0.1:1"));
        Assert.Single(errors);
        Assert.StartsWith("t.yaml:7:15: ", errors[0], StringComparison.Ordinal);
    }

    [Fact]
    public void Compile_ProtocolAndStreamCap_ReachClusterModel()
    {
        var result = ConfigLoader.LoadText(Config("h2c", "http://127.0.0.1:1", "    http2: { max_streams_per_connection: 7 }"), "t.yaml");
        Assert.Empty(result.Errors);
        var cluster = result.Snapshot!.Clusters["c"];
        Assert.Equal(UpstreamProtocol.H2c, cluster.Protocol);
        Assert.Equal(7, cluster.Http2MaxStreams);
    }

    [Fact]
    public void Compile_NoProtocol_DefaultsToHttp1With100Streams()
    {
        var result = ConfigLoader.LoadText(Config("http1", "http://127.0.0.1:1"), "t.yaml");
        var cluster = result.Snapshot!.Clusters["c"];
        Assert.Equal(UpstreamProtocol.Http1, cluster.Protocol);
        Assert.Equal(100, cluster.Http2MaxStreams);
    }
}
