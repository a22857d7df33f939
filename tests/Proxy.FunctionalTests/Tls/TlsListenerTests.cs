using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Proxy.Core.Tests.Diagnostics;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Transport;
using Proxy.Transport.Tls;

namespace Proxy.FunctionalTests.Tls;

/// <summary>TLS listeners with real clients: SNI, ALPN, mTLS, bad handshakes, certificate reload, curl.</summary>
public sealed class TlsListenerTests : IDisposable
{
    private readonly TestPki _pki = new();
    private readonly X509Certificate2 _ca = TestPki.CreateCa();
    private readonly X509Certificate2 _clientCa = TestPki.CreateCa("Proxy Test Client CA");
    private readonly (string Cert, string Key) _example;
    private readonly (string Cert, string Key) _other;
    private readonly string _clientCaPath;

    public TlsListenerTests()
    {
        _example = _pki.Write(TestPki.Issue(_ca, "example.test", ["example.test", "*.example.test"]), "example", _ca);
        _other = _pki.Write(TestPki.Issue(_ca, "other.test", ["other.test"], rsa: true), "other", _ca);
        _clientCaPath = _pki.WriteCa("client-ca", _clientCa);
    }

    private string Certificates => $"[{{ cert: \"{_example.Cert}\", key: \"{_example.Key}\", hosts: [example.test, \"*.example.test\"] }}, "
        + $"{{ cert: \"{_other.Cert}\", key: \"{_other.Key}\", hosts: [other.test] }}]";

    private static Task<TestProxy> StartAsync(string tls, int backendPort = 9) => TestProxy.StartAsync($$"""
        listeners:
          - { name: public, address: 127.0.0.1:0 }
          - { name: secure, address: 127.0.0.1:0, tls: {{tls}} }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n", headers: { content-type: text/plain } } }
          - { id: all, match: { path: "/{**rest}" }, cluster: backend }
        clusters:
          backend:
            destinations: [{ address: "http://127.0.0.1:{{backendPort}}" }]
        """);

    private static int SecurePort(TestProxy proxy) => proxy.Server.GetEndPoint("secure").Port;

    private static TlsListenerModel Model(TestProxy proxy) => proxy.Server.Snapshot.Listeners.Single(l => l.Name == "secure").Tls!;

    [Fact]
    public async Task Get_HttpClientOverTls_ForwardsWithProtoHttps()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync($"{{ certificates: {Certificates} }}", upstream.Port);
        using var client = TlsClients.Create(SecurePort(proxy), _ca);

        using var response = await client.GetAsync($"https://example.test:{SecurePort(proxy)}/api/x");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var request = await upstream.WaitForRequestAsync();
        Assert.Equal("https", request.Header("x-forwarded-proto"));
        // The cleartext listener still says http.
        using var plain = Clients.CreateHttpClient();
        using var _ = await plain.GetAsync($"http://127.0.0.1:{proxy.Public.Port}/api/y");
        Assert.Equal("http", (await upstream.WaitForRequestAsync(2)).Header("x-forwarded-proto"));
    }

    [Theory]
    [InlineData("example.test", "CN=example.test")]
    [InlineData("api.example.test", "CN=example.test")]
    [InlineData("other.test", "CN=other.test")]
    [InlineData("unknown.test", "CN=example.test")]
    [InlineData(null, "CN=example.test")]
    public async Task Handshake_ServerName_SelectsCertificate(string? serverName, string subject)
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates} }}");

        var (stream, certificate) = await TlsClients.HandshakeAsync(SecurePort(proxy), serverName);
        await using var _ = stream;

        Assert.StartsWith(subject + ",", certificate.Subject);
        Assert.Equal(SslApplicationProtocol.Http11, stream.NegotiatedApplicationProtocol);
        Assert.Contains("200 OK", await TlsClients.GetAsync(stream, serverName ?? "127.0.0.1"));
    }

    [Theory]
    [InlineData(SslProtocols.Tls12)]
    [InlineData(SslProtocols.Tls13)]
    public async Task Handshake_Tls12And13_AreAccepted(SslProtocols protocol)
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates} }}");

        var (stream, _) = await TlsClients.HandshakeAsync(SecurePort(proxy), "example.test", protocols: protocol);
        await using var _ = stream;

        Assert.Equal(protocol, stream.SslProtocol);
    }

    [Fact]
    public async Task Curl_WithCaCertAndResolve_GetsAnswer()
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates} }}");
        int port = SecurePort(proxy);
        string ca = _pki.WriteCa("curl-ca", _ca);

        var result = await Curl.RunAsync(["--cacert", ca, "--resolve", $"api.example.test:{port}:127.0.0.1", $"https://api.example.test:{port}/hello"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("hello\n", result.StdoutText);
    }

    [Fact]
    public async Task Curl_UnknownServerName_GetsDefaultCertificateAndRefusesIt()
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates} }}");
        int port = SecurePort(proxy);
        string ca = _pki.WriteCa("curl-ca", _ca);

        var result = await Curl.RunAsync(["--cacert", ca, "--resolve", $"unknown.test:{port}:127.0.0.1", $"https://unknown.test:{port}/hello"]);

        // curl exit 60: the peer certificate (the default one, for example.test) does not name unknown.test.
        Assert.Equal(60, result.ExitCode);
        await WaitForAsync(() => Model(proxy).HandshakeFailures == 1);
    }

    [Fact]
    public async Task Handshake_Garbage_ClosesCleanlyCountsOnceAndKeepsServing()
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates} }}");
        int port = SecurePort(proxy);

        for (int i = 0; i < 20; i++)
        {
            await using var raw = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
            await raw.SendAsync("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            await raw.ReadToCloseAsync();
        }

        await WaitForAsync(() => Model(proxy).HandshakeFailures == 20);
        var (stream, _) = await TlsClients.HandshakeAsync(port, "example.test");
        await using var _ = stream;
        Assert.Contains("200 OK", await TlsClients.GetAsync(stream, "example.test"));
    }

    /// <summary>
    /// Plain HTTP sent to the TLS port gets a short 400 saying to use https (nginx: "The plain HTTP request was sent to
    /// HTTPS port"), not a bare reset; it counts as a handshake failure, and bytes that are neither (here a NUL) are
    /// still just closed.
    /// </summary>
    [Fact]
    public async Task PlainHttp_ToTlsPort_Gets400SayingUseHttps()
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates} }}");
        var endPoint = new IPEndPoint(IPAddress.Loopback, SecurePort(proxy));

        await using (var raw = await RawClient.ConnectAsync(endPoint))
        {
            await raw.SendAsync("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
            var response = await raw.ReadResponseAsync();
            Assert.Equal(400, response.Status);
            Assert.Contains("https://", response.BodyText);
            Assert.True(response.ConnectionHas("close"), response.ToString());
            await raw.AssertClosedAsync();
        }
        await using (var raw = await RawClient.ConnectAsync(endPoint))
        {
            await raw.SendAsync("\0\0\0\0\r\n");
            Assert.Empty((await raw.ReadToCloseAsync()).Bytes);
        }

        await WaitForAsync(() => Model(proxy).HandshakeFailures == 2);
        var (stream, _) = await TlsClients.HandshakeAsync(endPoint.Port, "example.test");
        await using var _ = stream;
        Assert.Contains("200 OK", await TlsClients.GetAsync(stream, "example.test"));
    }

    /// <summary>
    /// The plain-HTTP 400 is observed like a head the parser refuses before routing: a request under route="" with
    /// method OTHER (no request line was parsed), proxy_local_replies_total{details="plain_http_request"}, an access-log
    /// line (no route, no method, the details code as policy, the bytes read), and the insights' status codes and
    /// clients. It had only the rate-limited tls_handshake_failed line and the handshake failure count.
    /// </summary>
    [Fact]
    public async Task PlainHttp_ToTlsPort_CountedLoggedAndInInsightsLikeARefusedHead()
    {
        string directory = Directory.CreateTempSubdirectory("proxy-tls-plain-").FullName;
        try
        {
            string log = Path.Combine(directory, "access.log");
            await using var proxy = await TestProxy.StartAsync($$"""
                admin: { address: "127.0.0.1:0" }
                access_log: { path: "{{log}}" }
                listeners:
                  - { name: secure, address: 127.0.0.1:0, tls: { certificates: {{Certificates}} } }
                routes:
                  - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n" } }
                """);
            const string request = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
            await using (var raw = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, SecurePort(proxy))))
            {
                await raw.SendAsync(request);
                Assert.Equal(400, (await raw.ReadResponseAsync()).Status);
                await raw.AssertClosedAsync();
            }

            using var http = new HttpClient { Timeout = TestDefaults.Timeout };
            string admin = $"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}";
            PrometheusTextParser.Result scrape = PrometheusTextParser.Parse(await http.GetStringAsync($"{admin}/metrics"));
            Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", ""), ("cluster", ""), ("method", "OTHER"), ("status_class", "4xx")));
            Assert.Equal(1, scrape.Find("proxy_requests_total").Sum(x => x.Value));
            Assert.Equal(1, scrape.Value("proxy_request_duration_seconds_count", ("route", ""), ("cluster", "")));
            Assert.Equal(1, scrape.Value("proxy_local_replies_total", ("listener", "secure"), ("status", "400"), ("details", "plain_http_request")));

            using (var insights = JsonDocument.Parse(await http.GetStringAsync($"{admin}/insights")))
            {
                var status = Assert.Single(insights.RootElement.GetProperty("top_status").EnumerateArray());
                Assert.Equal((400, 1L), (status.GetProperty("status").GetInt32(), status.GetProperty("requests").GetInt64()));
                var client = Assert.Single(insights.RootElement.GetProperty("top_clients").EnumerateArray());
                Assert.Equal("127.0.0.1", client.GetProperty("client").GetString());
            }

            string[] lines = [];
            await WaitForAsync(() => (lines = File.Exists(log) ? File.ReadAllLines(log) : []).Length >= 1);
            JsonElement line = JsonDocument.Parse(Assert.Single(lines)).RootElement;
            Assert.Equal(400, line.GetProperty("status").GetInt32());
            Assert.Equal("plain_http_request", line.GetProperty("policy").GetString());
            Assert.Equal("secure", line.GetProperty("listener").GetString());
            Assert.Equal(JsonValueKind.Null, line.GetProperty("route").ValueKind);
            Assert.Equal(JsonValueKind.Null, line.GetProperty("method").ValueKind);
            Assert.Equal("", line.GetProperty("path").GetString());
            Assert.Equal("127.0.0.1", line.GetProperty("client").GetString());
            Assert.Equal(request.Length, line.GetProperty("bytes_in").GetInt64());
            Assert.Equal(0, line.GetProperty("duration_ms").GetDouble());
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task Handshake_ClientSendsNothing_ClosedAfterHandshakeTimeout()
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates}, handshake_timeout: 300ms }}");

        // Timed from before the connect: the proxy's clock starts at accept, which a loaded machine can run well
        // before ConnectAsync returns here (a CI run measured 198 ms from its return).
        var started = Stopwatch.StartNew();
        await using var raw = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, SecurePort(proxy)));
        await raw.ReadToCloseAsync(TimeSpan.FromSeconds(5));

        Assert.InRange(started.Elapsed, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(4));
        await WaitForAsync(() => Model(proxy).HandshakeFailures == 1);
    }

    [Fact]
    public async Task Handshake_SlowClient_DoesNotBlockOtherAccepts()
    {
        await using var proxy = await StartAsync($"{{ certificates: {Certificates}, handshake_timeout: 5s }}");
        int port = SecurePort(proxy);
        var idle = new List<RawClient>();
        for (int i = 0; i < 20; i++)
        {
            idle.Add(await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)));
        }

        using var client = TlsClients.Create(port, _ca);
        using var response = await client.GetAsync($"https://example.test:{port}/hello");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        foreach (var c in idle)
        {
            await c.DisposeAsync();
        }
    }

    [Fact]
    public async Task Handshake_ExpiredServerCertificate_ClientRefusesServerCountsAndStaysUp()
    {
        var expired = _pki.Write(TestPki.Issue(_ca, "expired.test", ["expired.test"],
            notBefore: DateTimeOffset.UtcNow.AddDays(-30), notAfter: DateTimeOffset.UtcNow.AddDays(-1)), "expired", _ca);
        await using var proxy = await StartAsync($"{{ certificates: [{{ cert: \"{expired.Cert}\", key: \"{expired.Key}\" }}] }}");
        int port = SecurePort(proxy);
        using var client = TlsClients.Create(port, _ca);

        await Assert.ThrowsAsync<HttpRequestException>(() => client.GetAsync($"https://expired.test:{port}/hello"));

        await WaitForAsync(() => Model(proxy).HandshakeFailures >= 1);
        var (stream, certificate) = await TlsClients.HandshakeAsync(port, "expired.test");
        await using var _ = stream;
        Assert.True(certificate.NotAfter < DateTime.Now);
    }

    [Fact]
    public async Task MutualTls_Require_ValidCertificateForwardsSubjectAndStripsSpoofedHeader()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync(
            $"{{ certificates: {Certificates}, client_certificates: {{ mode: require, ca: \"{_clientCaPath}\", forward_header: x-client-cert-subject }} }}",
            upstream.Port);
        int port = SecurePort(proxy);
        using var alice = TestPki.Issue(_clientCa, "alice", [], client: true);
        using var client = TlsClients.Create(port, _ca, alice);
        using var message = new HttpRequestMessage(HttpMethod.Get, $"https://example.test:{port}/api");
        message.Headers.Add("X-Client-Cert-Subject", "CN=mallory");

        using var response = await client.SendAsync(message);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var request = await upstream.WaitForRequestAsync();
        Assert.Equal("CN=alice, O=Proxy Tests", request.Header("x-client-cert-subject"));
        Assert.Single(request.Headers, h => h.Key.Equals("x-client-cert-subject", StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>
    /// A client without a certificate on a require listener completes the handshake and gets 400
    /// client_certificate_required with connection: close (nginx's ssl_verify_client on: "No required SSL certificate
    /// was sent"), counted and logged like a head refused before routing; the upstream never hears of it. Before, a
    /// TLS 1.3 client saw its finished handshake closed with no answer (curl failed with a transport error).
    /// </summary>
    [Fact]
    public async Task MutualTls_Require_CurlWithoutCertificate_Gets400AndUpstreamSeesNothing()
    {
        string directory = Directory.CreateTempSubdirectory("proxy-tls-nocert-").FullName;
        try
        {
            string log = Path.Combine(directory, "access.log");
            await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
            await using var proxy = await TestProxy.StartAsync($$"""
                admin: { address: "127.0.0.1:0" }
                access_log: { path: "{{log}}" }
                listeners:
                  - name: secure
                    address: 127.0.0.1:0
                    tls: { certificates: {{Certificates}}, client_certificates: { mode: require, ca: "{{_clientCaPath}}" } }
                routes:
                  - { id: all, match: { path: "/{**rest}" }, cluster: backend }
                clusters:
                  backend:
                    destinations: [{ address: "http://127.0.0.1:{{upstream.Port}}" }]
                """);
            int port = SecurePort(proxy);
            string ca = _pki.WriteCa("curl-ca", _ca);

            var result = await Curl.RunAsync(["-sS", "-i", "--http1.1", "--cacert", ca, "--resolve", $"example.test:{port}:127.0.0.1",
                $"https://example.test:{port}/api/x?token=secret"]);

            Assert.True(result.ExitCode == 0, result.ToString());
            string text = result.StdoutText;
            Assert.StartsWith("HTTP/1.1 400 Bad Request\r\n", text);
            Assert.Contains("\r\nconnection: close\r\n", text);
            Assert.EndsWith("\r\n\r\n400 Bad Request: client_certificate_required\n", text);
            Assert.Equal(0, upstream.ConnectionCount);
            Assert.Equal(0, Model(proxy).HandshakeFailures);

            using var http = new HttpClient { Timeout = TestDefaults.Timeout };
            string admin = $"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}";
            PrometheusTextParser.Result scrape = PrometheusTextParser.Parse(await http.GetStringAsync($"{admin}/metrics"));
            Assert.Equal(1, scrape.Value("proxy_local_replies_total", ("listener", "secure"), ("status", "400"), ("details", "client_certificate_required")));
            Assert.Equal(1, scrape.Value("proxy_requests_total", ("route", ""), ("cluster", ""), ("method", "GET"), ("status_class", "4xx")));

            string[] lines = [];
            await WaitForAsync(() => (lines = File.Exists(log) ? File.ReadAllLines(log) : []).Length >= 1);
            JsonElement line = JsonDocument.Parse(Assert.Single(lines)).RootElement;
            Assert.Equal(400, line.GetProperty("status").GetInt32());
            Assert.Equal("client_certificate_required", line.GetProperty("policy").GetString());
            Assert.Equal(JsonValueKind.Null, line.GetProperty("route").ValueKind);
            Assert.Equal("GET", line.GetProperty("method").GetString());
            Assert.Equal("/api/x", line.GetProperty("path").GetString());
            Assert.Equal(0, upstream.ConnectionCount);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>
    /// Over TLS 1.2 too (where a missing certificate used to fail the handshake itself), a client without a certificate
    /// gets one 400 for the first of two pipelined requests, then the close: the second one is never served.
    /// </summary>
    [Theory]
    [InlineData(SslProtocols.Tls12)]
    [InlineData(SslProtocols.Tls13)]
    public async Task MutualTls_Require_NoCertificatePipelined_OneAnswer400ThenClose(SslProtocols protocol)
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync(
            $"{{ certificates: {Certificates}, client_certificates: {{ mode: require, ca: \"{_clientCaPath}\" }} }}", upstream.Port);

        var (stream, _) = await TlsClients.HandshakeAsync(SecurePort(proxy), "example.test", protocols: protocol);
        await using var _ = stream;
        await stream.WriteAsync("GET /a HTTP/1.1\r\nHost: example.test\r\n\r\nGET /b HTTP/1.1\r\nHost: example.test\r\n\r\n"u8.ToArray());
        using var received = new MemoryStream();
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        var buffer = new byte[4096];
        int n;
        while ((n = await stream.ReadAsync(buffer, cts.Token)) > 0)
        {
            received.Write(buffer, 0, n);
        }

        string text = System.Text.Encoding.ASCII.GetString(received.ToArray());
        Assert.StartsWith("HTTP/1.1 400 Bad Request\r\n", text);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(text, "HTTP/1.1 "));
        Assert.Contains("\r\nconnection: close\r\n", text);
        Assert.EndsWith("400 Bad Request: client_certificate_required\n", text);
        Assert.Equal(0, upstream.ConnectionCount);
    }

    [Fact]
    public async Task MutualTls_Require_CertificateFromOtherCaOrExpiredFails()
    {
        await using var proxy = await StartAsync(
            $"{{ certificates: {Certificates}, client_certificates: {{ mode: require, ca: \"{_clientCaPath}\" }} }}");
        int port = SecurePort(proxy);
        using var stranger = TestPki.Issue(TestPki.CreateCa("Stranger CA"), "mallory", [], client: true);
        using var expired = TestPki.Issue(_clientCa, "old", [], client: true,
            notBefore: DateTimeOffset.UtcNow.AddDays(-10), notAfter: DateTimeOffset.UtcNow.AddDays(-1));

        foreach (var certificate in new[] { stranger, expired })
        {
            using var client = TlsClients.Create(port, _ca, certificate);
            await Assert.ThrowsAsync<HttpRequestException>(() => client.GetAsync($"https://example.test:{port}/hello"));
        }
        await WaitForAsync(() => Model(proxy).HandshakeFailures == 2);
    }

    [Fact]
    public async Task MutualTls_Request_WithoutCertificateServedWithoutSubject()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync(
            $"{{ certificates: {Certificates}, client_certificates: {{ mode: request, ca: \"{_clientCaPath}\", forward_header: x-client-cert-subject }} }}",
            upstream.Port);
        int port = SecurePort(proxy);
        using var anonymous = TlsClients.Create(port, _ca);
        using var bob = TestPki.Issue(_clientCa, "bob", [], client: true);
        using var withCertificate = TlsClients.Create(port, _ca, bob);

        using var first = await anonymous.GetAsync($"https://example.test:{port}/a");
        using var second = await withCertificate.GetAsync($"https://example.test:{port}/b");

        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        Assert.Null((await upstream.WaitForRequestAsync(1)).Header("x-client-cert-subject"));
        Assert.Equal("CN=bob, O=Proxy Tests", (await upstream.WaitForRequestAsync(2)).Header("x-client-cert-subject"));
    }

    [Fact]
    public async Task MutualTls_Curl_PresentsCertificate()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await StartAsync(
            $"{{ certificates: {Certificates}, client_certificates: {{ mode: require, ca: \"{_clientCaPath}\", forward_header: x-client-cert-subject }} }}",
            upstream.Port);
        int port = SecurePort(proxy);
        var carol = _pki.Write(TestPki.Issue(_clientCa, "carol", [], client: true, rsa: true), "carol");
        string ca = _pki.WriteCa("curl-ca", _ca);

        var result = await Curl.RunAsync(["--cacert", ca, "--cert", carol.Cert, "--key", carol.Key,
            "--resolve", $"example.test:{port}:127.0.0.1", $"https://example.test:{port}/api"]);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("CN=carol, O=Proxy Tests", (await upstream.WaitForRequestAsync()).Header("x-client-cert-subject"));
    }

    [Fact]
    public async Task Reload_CertificateFileReplaced_NewHandshakesGetNewCertificateOldConnectionKeepsWorking()
    {
        var files = _pki.Write(TestPki.Issue(_ca, "first", ["example.test"]), "rotating", _ca);
        await using var proxy = await StartAsync($"{{ certificates: [{{ cert: \"{files.Cert}\", key: \"{files.Key}\" }}] }}");
        int port = SecurePort(proxy);
        var (old, before) = await TlsClients.HandshakeAsync(port, "example.test");
        await using var _ = old;
        Assert.StartsWith("CN=first,", before.Subject);

        _pki.Write(TestPki.Issue(_ca, "second", ["example.test"]), "rotating", _ca);

        string subject = "";
        await WaitForAsync(async () =>
        {
            var (stream, certificate) = await TlsClients.HandshakeAsync(port, "example.test");
            await stream.DisposeAsync();
            subject = certificate.Subject;
            return subject.StartsWith("CN=second,", StringComparison.Ordinal);
        });
        Assert.Contains("200 OK", await TlsClients.GetAsync(old, "example.test"));
    }

    [Fact]
    public async Task Reload_BrokenCertificateFile_KeepsServingOldCertificate()
    {
        var files = _pki.Write(TestPki.Issue(_ca, "first", ["example.test"]), "rotating", _ca);
        await using var proxy = await StartAsync($"{{ certificates: [{{ cert: \"{files.Cert}\", key: \"{files.Key}\" }}] }}");
        int port = SecurePort(proxy);

        File.WriteAllText(files.Cert, "not a certificate");
        await Task.Delay(SocketListener.CertificateCheckInterval * 2.5);

        var (stream, certificate) = await TlsClients.HandshakeAsync(port, "example.test");
        await using var _ = stream;
        Assert.StartsWith("CN=first,", certificate.Subject);
    }

    private static async Task WaitForAsync(Func<bool> condition) => await WaitForAsync(() => Task.FromResult(condition()));

    private static async Task WaitForAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow + TestDefaults.Timeout;
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached in time");
            await Task.Delay(50);
        }
    }

    public void Dispose() => _pki.Dispose();
}
