using System.Net;
using System.Security.Cryptography.X509Certificates;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Tls;

/// <summary>
/// <c>limits.max_connections_per_ip</c> on a TLS listener: every accepted connection counts once, whether ALPN turns it
/// into HTTP/2 (which never passes through the HTTP/1.1 entry) or HTTP/1.1.
/// </summary>
public sealed class TlsClientIpLimitTests : IDisposable
{
    private readonly TestPki _pki = new();
    private readonly X509Certificate2 _ca = TestPki.CreateCa();
    private readonly (string Cert, string Key) _example;

    public TlsClientIpLimitTests() => _example = _pki.Write(TestPki.Issue(_ca, "example.test", ["example.test"]), "example", _ca);

    public void Dispose()
    {
        _ca.Dispose();
        _pki.Dispose();
    }

    private Task<TestProxy> StartAsync() => TestProxy.StartAsync($$"""
        limits: { max_connections_per_ip: 1 }
        admin: { address: "127.0.0.1:0" }
        listeners:
          - name: public
            address: 127.0.0.1:0
            tls: { certificates: [{ cert: "{{_example.Cert}}", key: "{{_example.Key}}", hosts: [example.test] }] }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
        """);

    private static async Task<HttpResponseMessage> GetAsync(HttpClient client, int port, Version version)
    {
        using var message = new HttpRequestMessage(HttpMethod.Get, $"https://example.test:{port}/hello")
        {
            Version = version,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        return await client.SendAsync(message);
    }

    private static async Task<string> MetricsAsync(TestProxy proxy)
    {
        using var http = new HttpClient();
        return await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/metrics");
    }

    [Fact]
    public async Task MaxConnectionsPerIp_TlsH2_SecondConnectionRefusedCountedAndAdmittedAfterClose()
    {
        await using var proxy = await StartAsync();
        int port = proxy.Public.Port;

        // Counted once: at a cap of 1, a connection counted twice (accept + HTTP/1.1 entry) would refuse itself.
        using (var http1 = TlsClients.Create(port, _ca))
        using (var response = await GetAsync(http1, port, HttpVersion.Version11))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(HttpVersion.Version11, response.Version);
        }

        // Retried until the proxy has seen the HTTP/1.1 connection above close.
        using var held = await AdmittedH2ClientAsync(port);

        // The pooled HTTP/2 connection of `held` stays open: a second client from the same address is over the cap.
        using (var second = TlsClients.Create(port, _ca))
        {
            await Assert.ThrowsAsync<HttpRequestException>(() => GetAsync(second, port, HttpVersion.Version20));
        }
        string metrics = await MetricsAsync(proxy);
        Assert.Matches(@"proxy_client_ip_refused_total\{kind=""connection""\} [1-9]", metrics);
        Assert.Contains("proxy_client_ip_refused_total{kind=\"request\"} 0", metrics, StringComparison.Ordinal);

        // The held connection still serves; once it closes, the address is admitted again.
        using (var response = await GetAsync(held, port, HttpVersion.Version20))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }
        held.Dispose();
        using var next = await AdmittedH2ClientAsync(port);
    }

    /// <summary>A client whose HTTP/2 connection was admitted (it stays open in the client's pool).</summary>
    private async Task<HttpClient> AdmittedH2ClientAsync(int port)
    {
        var deadline = DateTime.UtcNow + TestDefaults.Timeout;
        while (true)
        {
            var client = TlsClients.Create(port, _ca);
            try
            {
                using var response = await GetAsync(client, port, HttpVersion.Version20);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.Equal(HttpVersion.Version20, response.Version);
                return client;
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline)
            {
                // The proxy has not yet seen the previous connection close.
                client.Dispose();
                await Task.Delay(50);
            }
        }
    }
}
