using System.Net;
using System.Security.Cryptography.X509Certificates;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Tls;

/// <summary>HTTP/2 over TLS, negotiated by ALPN on a TLS listener, with real clients.</summary>
public sealed class TlsHttp2Tests : IDisposable
{
    private readonly TestPki _pki = new();
    private readonly X509Certificate2 _ca = TestPki.CreateCa();
    private readonly X509Certificate2 _clientCa = TestPki.CreateCa("Proxy Test Client CA");
    private readonly (string Cert, string Key) _example;
    private readonly string _clientCaPath;

    public TlsHttp2Tests()
    {
        _example = _pki.Write(TestPki.Issue(_ca, "example.test", ["example.test"]), "example", _ca);
        _clientCaPath = _pki.WriteCa("client-ca", _clientCa);
    }

    public void Dispose()
    {
        _ca.Dispose();
        _clientCa.Dispose();
        _pki.Dispose();
    }

    private Task<TestProxy> StartAsync(int backendPort, string clientCertificates = "") => TestProxy.StartAsync($$"""
        listeners:
          - { name: public, address: 127.0.0.1:0 }
          - name: secure
            address: 127.0.0.1:0
            tls: { certificates: [{ cert: "{{_example.Cert}}", key: "{{_example.Key}}", hosts: [example.test] }]{{clientCertificates}} }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n", headers: { content-type: text/plain } } }
          - { id: all, match: { path: "/{**rest}" }, cluster: backend }
        clusters:
          backend:
            destinations: [{ address: "http://127.0.0.1:{{backendPort}}" }]
        """);

    private static int SecurePort(TestProxy proxy) => proxy.Server.GetEndPoint("secure").Port;

    [Fact]
    public async Task HttpClientVersion2_OverTls_NegotiatesH2AndForwardsWithProtoHttps()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync(upstream.Port);
        int port = SecurePort(proxy);
        using var client = TlsClients.Create(port, _ca);
        using var message = new HttpRequestMessage(HttpMethod.Get, $"https://example.test:{port}/api/x")
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

        using var response = await client.SendAsync(message);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(HttpVersion.Version20, response.Version);
        var request = await upstream.WaitForRequestAsync();
        Assert.Equal("GET", request.Method);
        Assert.Equal("/api/x", request.Target);
        Assert.Equal("https", request.Header("x-forwarded-proto"));
    }

    [Fact]
    public async Task CurlHttp2_OverTls_GetsHttp2Answer()
    {
        await using var proxy = await StartAsync(backendPort: 9);
        int port = SecurePort(proxy);
        string ca = _pki.WriteCa("curl-ca", _ca);

        var result = await Curl.RunAsync(["--http2", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
            "--cacert", ca, "--resolve", $"example.test:{port}:127.0.0.1", $"https://example.test:{port}/hello"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("2 200", result.StdoutText);
    }

    [Fact]
    public async Task HttpClientVersion11_OverTls_StaysOnHttp11()
    {
        await using var proxy = await StartAsync(backendPort: 9);
        int port = SecurePort(proxy);
        using var client = TlsClients.Create(port, _ca);

        using var response = await client.GetAsync($"https://example.test:{port}/hello");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(HttpVersion.Version11, response.Version);
    }

    /// <summary>
    /// An HTTP/2 client without the certificate a require listener asks for gets 400 client_certificate_required on
    /// every stream of its connection, and no stream reaches the upstream. Before, its connection was closed right
    /// after the handshake and the request failed with no answer.
    /// </summary>
    [Fact]
    public async Task MutualTlsOverH2_NoCertificate_EveryStreamGets400()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync(upstream.Port, $", client_certificates: {{ mode: require, ca: \"{_clientCaPath}\" }}");
        int port = SecurePort(proxy);
        using var client = TlsClients.Create(port, _ca);

        for (int i = 1; i <= 2; i++)
        {
            using var message = new HttpRequestMessage(i == 1 ? HttpMethod.Get : HttpMethod.Post, $"https://example.test:{port}/api/{i}")
            {
                Version = HttpVersion.Version20,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
                Content = i == 1 ? null : new StringContent("payload"),
            };
            using var response = await client.SendAsync(message);
            Assert.Equal(HttpVersion.Version20, response.Version);
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            Assert.Equal("400 Bad Request: client_certificate_required\n", await response.Content.ReadAsStringAsync());
        }
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task MutualTlsOverH2_SubjectForwardedOnEveryStream()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync(upstream.Port,
            $", client_certificates: {{ mode: require, ca: \"{_clientCaPath}\", forward_header: x-client-cert-subject }}");
        int port = SecurePort(proxy);
        using var alice = TestPki.Issue(_clientCa, "alice", [], client: true);
        using var client = TlsClients.Create(port, _ca, alice);

        for (int i = 1; i <= 2; i++)
        {
            using var message = new HttpRequestMessage(HttpMethod.Get, $"https://example.test:{port}/api/{i}")
            {
                Version = HttpVersion.Version20,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            };
            message.Headers.Add("x-client-cert-subject", "CN=mallory");
            using var response = await client.SendAsync(message);
            Assert.Equal(HttpVersion.Version20, response.Version);
            var request = await upstream.WaitForRequestAsync(i);
            Assert.Equal("CN=alice, O=Proxy Tests", request.Header("x-client-cert-subject"));
        }
    }
}
