using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Tls;

/// <summary>
/// Large responses to a TLS client: the proxy's writer hands blocks to the SslStream, and when the client stops reading
/// the socket fills and a flush waits inside the SslStream's write. Every byte must still arrive in order once the
/// client reads again, and a client that resets while a flush waits must cost the proxy nothing but that connection.
/// </summary>
public sealed class TlsResponseStreamingTests : IDisposable
{
    private const long Size = 16L * 1024 * 1024;
    private static readonly TimeSpan s_transferTimeout = TimeSpan.FromSeconds(60);
    private static readonly Lazy<string> s_hash = new(() => BodyGenerator.ExpectedHash(Size));

    private readonly TestPki _pki = new();
    private readonly System.Security.Cryptography.X509Certificates.X509Certificate2 _ca = TestPki.CreateCa();
    private readonly (string Cert, string Key) _example;

    public TlsResponseStreamingTests()
    {
        _example = _pki.Write(TestPki.Issue(_ca, "example.test", ["example.test"]), "example", _ca);
    }

    public void Dispose() => _pki.Dispose();

    private Task<TestProxy> StartAsync(int backendPort) => TestProxy.StartAsync($$"""
        server: { watch_config: false }
        limits: { max_body_bytes: 64MiB }
        listeners:
          - { name: public, address: 127.0.0.1:0, tls: { certificates: [{ cert: "{{_example.Cert}}", key: "{{_example.Key}}" }] } }
        routes:
          - { id: all, match: { path: "/{**rest}" }, cluster: backend }
        clusters:
          backend:
            request_timeout: 60s
            destinations: [{ address: "http://127.0.0.1:{{backendPort}}" }]
        """);

    [Fact]
    public async Task Download_ClientPausesThenReads_EveryByteArrivesInOrder()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Download(Size));
        await using var proxy = await StartAsync(upstream.Port);
        using var client = TlsClients.Create(proxy.Public.Port, _ca);
        client.Timeout = s_transferTimeout;

        using var response = await client.GetAsync($"https://example.test:{proxy.Public.Port}/download", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        await using var body = await response.Content.ReadAsStreamAsync();
        await Task.Delay(700); // not reading: the socket buffers fill and the proxy's flush waits inside the SslStream

        using var sink = new HashSink();
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = await body.ReadAsync(buffer)) > 0)
        {
            sink.Write(buffer.AsSpan(0, n));
        }
        Assert.Equal(Size, sink.Count);
        Assert.Equal(s_hash.Value, sink.Finish());
    }

    [Fact]
    public async Task Download_ClientResetsWhileFlushWaits_ProxyKeepsServing()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Download(Size));
        await using var proxy = await StartAsync(upstream.Port);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveBufferSize = 16 * 1024 };
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, proxy.Public.Port));
        using (var ssl = new SslStream(new NetworkStream(socket, ownsSocket: false)))
        {
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = "example.test",
                RemoteCertificateValidationCallback = static (_, _, _, _) => true,
                ApplicationProtocols = [SslApplicationProtocol.Http11],
            });
            await ssl.WriteAsync("GET /download HTTP/1.1\r\nHost: example.test\r\n\r\n"u8.ToArray());
            var buffer = new byte[16 * 1024];
            Assert.True(await ssl.ReadAsync(buffer) > 0);
            await Task.Delay(500); // the proxy's flush now waits for the socket
            socket.LingerState = new LingerOption(true, 0);
            socket.Close(); // RST
        }

        // The next client is served in full: the failed flush gave back what it held and broke nothing shared.
        using var client = TlsClients.Create(proxy.Public.Port, _ca);
        client.Timeout = s_transferTimeout;
        using var response = await client.GetAsync($"https://example.test:{proxy.Public.Port}/download");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(Size, (await response.Content.ReadAsByteArrayAsync()).LongLength);
    }
}
