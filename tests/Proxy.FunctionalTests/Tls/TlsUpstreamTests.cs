using System.Net;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Tls;

/// <summary>https:// destinations: Kestrel with TLS as the upstream (tests only), the proxy as TLS client.</summary>
public sealed class TlsUpstreamTests : IDisposable
{
    private readonly TestPki _pki = new();
    private readonly X509Certificate2 _ca = TestPki.CreateCa("Upstream CA");
    private readonly string _caPath;

    public TlsUpstreamTests() => _caPath = _pki.WriteCa("upstream-ca", _ca);

    /// <summary>Kestrel over TLS on 127.0.0.1:0 answering "tls:{SNI}|{client certificate subject}|{protocol}".</summary>
    private static async Task<(WebApplication App, int Port)> StartKestrelAsync(X509Certificate2 certificate, bool requireClientCertificate = false,
        X509Certificate2? clientCa = null, RequestDelegate? handler = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(o => o.Listen(IPAddress.Loopback, 0, listen => listen.UseHttps(https =>
        {
            https.ServerCertificate = certificate;
            if (requireClientCertificate)
            {
                https.ClientCertificateMode = ClientCertificateMode.RequireCertificate;
                https.ClientCertificateValidation = (client, _, _) => TlsClients.ChainsTo(new X509Certificate2(client), clientCa!);
            }
        })));
        var app = builder.Build();
        app.Run(handler ?? (async context =>
        {
            string subject = context.Connection.ClientCertificate?.Subject ?? "";
            await context.Response.WriteAsync($"tls:{context.Request.Host.Host}|{subject}|{context.Request.Protocol}|{context.Request.Headers["x-forwarded-proto"]}");
        }));
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await app.StartAsync(cts.Token);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return (app, new Uri(address).Port);
    }

    private static Task<TestProxy> StartProxyAsync(string destination, string tls)
        => ClusterYaml.StartAsync(ClusterYaml.Address(destination), cluster: "connect_timeout: 5s\n" + tls);

    private static async Task<(HttpStatusCode Status, string Body)> GetAsync(TestProxy proxy)
    {
        using var client = Clients.CreateHttpClient();
        using var response = await client.GetAsync(new Uri(proxy.PublicUri, "/x"));
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Forward_HttpsDestinationTrustedByCa_Returns200OverTls()
    {
        var (app, port) = await StartKestrelAsync(TestPki.Issue(_ca, "localhost", ["localhost", "127.0.0.1"]));
        await using var _ = app;
        await using var proxy = await StartProxyAsync($"https://127.0.0.1:{port}", $"tls: {{ ca: \"{_caPath}\" }}");

        var (status, body) = await GetAsync(proxy);

        Assert.Equal(HttpStatusCode.OK, status);
        Assert.StartsWith("tls:127.0.0.1||HTTP/1.1|http", body);
        // The pooled connection is reused for the next request. That request comes on a new client connection (a new
        // HttpClient), which can arrive before the first exchange has handed its upstream connection back: wait for it.
        var pool = proxy.Server.Snapshot.Clusters["backend"].Destinations[0].Pool!;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (pool.IdleConnections != 1)
        {
            Assert.True(clock.Elapsed < TestDefaults.Timeout, "the upstream connection never went back to the pool");
            await Task.Delay(10);
        }
        Assert.Equal(HttpStatusCode.OK, (await GetAsync(proxy)).Status);
        Assert.Equal(1, pool.OpenConnections);
    }

    /// <summary>
    /// The early answer over TLS (see UpstreamFailureTests' plain-TCP test): Kestrel answers an upload 401 at once and
    /// stops reading (its handler never returns, so the body is not drained). The watch reads through the TLS stream,
    /// so the answer is relayed within about a second with <c>connection: close</c>, where it used to wait for
    /// body_timeout and then be lost with the aborted connections.
    /// </summary>
    [Fact]
    public async Task Upload_TlsUpstreamAnswersEarlyAndStopsReading_ClientGetsTheAnswerPromptly()
    {
        var (app, port) = await StartKestrelAsync(TestPki.Issue(_ca, "localhost", ["localhost", "127.0.0.1"]), handler: async context =>
        {
            context.Response.StatusCode = 401;
            context.Response.ContentLength = 6;
            await context.Response.WriteAsync("denied");
            await context.Response.CompleteAsync();
            await Task.Delay(Timeout.Infinite, context.RequestAborted);
        });
        await using var _ = app;
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"https://127.0.0.1:{port}"),
            cluster: $"connect_timeout: 5s\ntls: {{ ca: \"{_caPath}\" }}", top: "limits: { max_body_bytes: 64MiB }");
        await using var client = await proxy.ConnectAsync();
        const long size = 32L * 1024 * 1024;
        await client.SendAsync($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: {size}\r\n\r\n");
        var upload = client.StartGeneratedUpload(size);

        var response = await client.ReadResponseAsync("POST");

        Assert.Equal(401, response.Status);
        Assert.Equal("denied", response.BodyText);
        Assert.True(response.ConnectionHas("close"), response.ToString());
        Assert.True((await client.ReadToCloseAsync()).Closed, "The client connection must close after the early answer.");
        await upload;
    }

    [Fact]
    public async Task Forward_UntrustedUpstreamCertificate_Returns502()
    {
        var (app, port) = await StartKestrelAsync(TestPki.Issue(TestPki.CreateCa("Stranger"), "localhost", ["localhost", "127.0.0.1"]));
        await using var _ = app;
        await using var proxy = await StartProxyAsync($"https://127.0.0.1:{port}", $"tls: {{ ca: \"{_caPath}\" }}");

        Assert.Equal(HttpStatusCode.BadGateway, (await GetAsync(proxy)).Status);
    }

    [Fact]
    public async Task Forward_NoTlsBlock_VerifiesAgainstSystemStoreAndRefusesTestCa()
    {
        var (app, port) = await StartKestrelAsync(TestPki.Issue(_ca, "localhost", ["localhost", "127.0.0.1"]));
        await using var _ = app;
        await using var proxy = await StartProxyAsync($"https://127.0.0.1:{port}", "");

        Assert.Equal(HttpStatusCode.BadGateway, (await GetAsync(proxy)).Status);
    }

    [Fact]
    public async Task Forward_InsecureSkipVerify_AcceptsAnyCertificate()
    {
        var (app, port) = await StartKestrelAsync(TestPki.SelfSigned("whatever", ["whatever.test"]));
        await using var _ = app;
        await using var proxy = await StartProxyAsync($"https://127.0.0.1:{port}", "tls: { insecure_skip_verify: true }");

        Assert.Equal(HttpStatusCode.OK, (await GetAsync(proxy)).Status);
    }

    [Fact]
    public async Task Forward_ExpiredUpstreamCertificate_Returns502()
    {
        var expired = TestPki.Issue(_ca, "localhost", ["localhost", "127.0.0.1"],
            notBefore: DateTimeOffset.UtcNow.AddDays(-10), notAfter: DateTimeOffset.UtcNow.AddDays(-1));
        var (app, port) = await StartKestrelAsync(expired);
        await using var _ = app;
        await using var proxy = await StartProxyAsync($"https://127.0.0.1:{port}", $"tls: {{ ca: \"{_caPath}\" }}");

        Assert.Equal(HttpStatusCode.BadGateway, (await GetAsync(proxy)).Status);
    }

    [Fact]
    public async Task Forward_SniSetting_IsSentAndVerified()
    {
        var (app, port) = await StartKestrelAsync(TestPki.Issue(_ca, "backend.internal", ["backend.internal"]));
        await using var _ = app;
        await using var right = await StartProxyAsync($"https://127.0.0.1:{port}", $"tls: {{ ca: \"{_caPath}\", sni: backend.internal }}");
        await using var wrong = await StartProxyAsync($"https://127.0.0.1:{port}", $"tls: {{ ca: \"{_caPath}\", sni: other.internal }}");

        Assert.Equal(HttpStatusCode.OK, (await GetAsync(right)).Status);
        // The certificate names backend.internal only: with another SNI the name check fails.
        Assert.Equal(HttpStatusCode.BadGateway, (await GetAsync(wrong)).Status);
    }

    [Fact]
    public async Task Forward_UpstreamRequiresClientCertificate_ProxyPresentsConfiguredOne()
    {
        var clientCa = TestPki.CreateCa("Client CA");
        var client = _pki.Write(TestPki.Issue(clientCa, "proxy-client", [], client: true), "proxy-client", clientCa);
        var (app, port) = await StartKestrelAsync(TestPki.Issue(_ca, "localhost", ["localhost", "127.0.0.1"]), requireClientCertificate: true, clientCa);
        await using var _ = app;
        await using var with = await StartProxyAsync($"https://127.0.0.1:{port}",
            $"tls: {{ ca: \"{_caPath}\", client_cert: \"{client.Cert}\", client_key: \"{client.Key}\" }}");
        await using var without = await StartProxyAsync($"https://127.0.0.1:{port}", $"tls: {{ ca: \"{_caPath}\" }}");

        var (status, body) = await GetAsync(with);

        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Contains("|CN=proxy-client, O=Proxy Tests|", body);
        Assert.NotEqual(HttpStatusCode.OK, (await GetAsync(without)).Status);
    }

    public void Dispose() => _pki.Dispose();
}
