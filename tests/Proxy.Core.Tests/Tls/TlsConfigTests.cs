using Proxy.Configuration;
using Proxy.Transport.Tls;

namespace Proxy.Core.Tests.Tls;

/// <summary>The tls: blocks through the config loader: every file problem is a FILE:LINE:COL error at the right key.</summary>
public sealed class TlsConfigTests : IDisposable
{
    private readonly TestPki _pki = new();
    private readonly string _cert;
    private readonly string _key;
    private readonly string _ca;

    public TlsConfigTests()
    {
        var ca = TestPki.CreateCa();
        (_cert, _key) = _pki.Write(TestPki.Issue(ca, "example.test", ["example.test", "*.example.test"]), "server", ca);
        _ca = _pki.WriteCa("ca", ca);
    }

    private static ConfigLoadResult Load(params string[] lines) => ConfigLoader.LoadText(string.Join('\n', lines) + "\n", "t.yaml");

    private static string[] Errors(params string[] lines) => Load(lines).Errors.Select(e => e.ToString()).ToArray();

    private string Listener(string certificates, string extra = "")
        => $"  - {{ name: secure, address: \"127.0.0.1:0\", tls: {{ certificates: [{certificates}]{extra} }} }}";

    [Fact]
    public void Load_ValidTls_CompilesCertificatesAndSni()
    {
        var result = Load("listeners:", Listener($"{{ cert: \"{_cert}\", key: \"{_key}\", hosts: [example.test, \"*.example.test\"] }}",
            $", client_certificates: {{ mode: require, ca: \"{_ca}\", forward_header: x-client-cert-subject }}, handshake_timeout: 3s"));

        Assert.True(result.Success, string.Join("\n", result.Errors));
        var tls = result.Snapshot!.Listeners[0].Tls!;
        Assert.Equal(ClientCertificateMode.Require, tls.ClientCertificates);
        Assert.Equal(TimeSpan.FromSeconds(3), tls.HandshakeTimeout);
        Assert.Equal("x-client-cert-subject"u8.ToArray(), tls.ForwardHeader);
        Assert.Contains("CN=example.test", tls.Current.Leaves[0].Subject);
    }

    [Fact]
    public void Load_MissingCertificateFile_ReportsPositionOfCert()
    {
        string missing = Path.Combine(_pki.Directory, "nope.pem");
        var errors = Errors("listeners:", Listener($"{{ cert: \"{missing}\", key: \"{_key}\" }}"));

        var error = Assert.Single(errors);
        Assert.StartsWith("t.yaml:2:", error);
        Assert.Contains($"certificate file '{missing}' not found", error);
    }

    [Fact]
    public void Load_KeyOfAnotherCertificate_ReportsMismatchAtKey()
    {
        var (_, otherKey) = _pki.Write(TestPki.SelfSigned("other", ["other.test"]), "other");
        string line = Listener($"{{ cert: \"{_cert}\", key: \"{otherKey}\" }}");
        var error = Assert.Single(Errors("listeners:", line));

        int column = line.IndexOf(otherKey, StringComparison.Ordinal); // the quote before the path, 1-based
        Assert.StartsWith($"t.yaml:2:{column}:", error);
        Assert.Contains("does not match certificate", error);
    }

    [Fact]
    public void Load_UnreadableKey_ReportsAtKey()
    {
        string garbage = _pki.WriteText("garbage.key", "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n");
        var error = Assert.Single(Errors("listeners:", Listener($"{{ cert: \"{_cert}\", key: \"{garbage}\" }}")));

        Assert.Contains($"key file '{garbage}'", error);
    }

    [Fact]
    public void Load_EncryptedKey_SaysHowToDecrypt()
    {
        string encrypted = _pki.WriteText("enc.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
        var error = Assert.Single(Errors("listeners:", Listener($"{{ cert: \"{_cert}\", key: \"{encrypted}\" }}")));

        Assert.Contains("is encrypted", error);
    }

    [Fact]
    public void Load_BadModeAndMissingCa_ReportEach()
    {
        Assert.Equal(
            [
                "t.yaml:2:121: unknown mode 'requir'; did you mean 'require'? (expected one of: none, request, require)",
            ],
            Errors("listeners:", Listener($"{{ cert: \"{_cert}\", key: \"{_key}\" }}", ", client_certificates: { mode: requir }"))
                .Select(e => System.Text.RegularExpressions.Regex.Replace(e, @":2:\d+:", ":2:121:")).ToArray());

        var missingCa = Assert.Single(Errors("listeners:", Listener($"{{ cert: \"{_cert}\", key: \"{_key}\" }}", ", client_certificates: { mode: require }")));
        Assert.Contains("client_certificates mode 'require' needs 'ca'", missingCa);
    }

    [Fact]
    public void Load_NoCertificates_ReportsTlsBlock()
    {
        var error = Assert.Single(Errors("listeners:", "  - { name: secure, address: \"127.0.0.1:0\", tls: { certificates: [] } }"));

        Assert.Equal("t.yaml:2:50: 'tls' needs at least one entry under 'certificates' ({ cert: FILE.pem, key: FILE.key, hosts: [...] })", error);
    }

    [Fact]
    public void Load_UnknownTlsKey_SuggestsNearest()
    {
        var error = Assert.Single(Errors("listeners:", Listener($"{{ cert: \"{_cert}\", key: \"{_key}\" }}", ", client_certificate: {}")));

        Assert.Contains("unknown key 'client_certificate' in 'tls'; did you mean 'client_certificates'?", error);
    }

    [Fact]
    public void Load_ForwardHeaderWithoutClientCertificates_IsRefused()
    {
        var error = Assert.Single(Errors("listeners:", Listener($"{{ cert: \"{_cert}\", key: \"{_key}\" }}",
            ", client_certificates: { forward_header: x-cert }")));

        Assert.Contains("'forward_header' needs client_certificates mode", error);
    }

    [Fact]
    public void Load_DuplicateHostAcrossCertificates_ReportsSecond()
    {
        var error = Assert.Single(Errors("listeners:",
            Listener($"{{ cert: \"{_cert}\", key: \"{_key}\", hosts: [a.test] }}, {{ cert: \"{_cert}\", key: \"{_key}\", hosts: [A.test] }}")));

        Assert.Contains("host 'A.test' is already served by the certificate at line 2", error);
    }

    [Fact]
    public void Load_UpstreamTls_ValidatesFilesAndPairs()
    {
        string missing = Path.Combine(_pki.Directory, "missing-ca.pem");
        var errors = Errors(
            "listeners:", "  - { name: public, address: \"127.0.0.1:0\" }",
            "clusters:",
            "  a:",
            "    destinations: [\"https://127.0.0.1:9443\"]",
            $"    tls: {{ ca: \"{missing}\", client_cert: \"{_cert}\" }}",
            "  b:",
            "    destinations: [\"http://127.0.0.1:9000\"]",
            "    tls: { insecure_skip_verify: true }");

        Assert.Equal(3, errors.Length);
        Assert.Contains(errors, e => e.StartsWith("t.yaml:6:", StringComparison.Ordinal) && e.Contains($"CA file '{missing}' not found"));
        Assert.Contains(errors, e => e.StartsWith("t.yaml:6:", StringComparison.Ordinal) && e.Contains("'client_cert' and 'client_key' go together"));
        Assert.Contains(errors, e => e.StartsWith("t.yaml:9:10:", StringComparison.Ordinal) && e.Contains("no https:// destination"));
    }

    [Fact]
    public void Load_HttpsDestination_CompilesUpstreamTls()
    {
        var result = Load(
            "listeners:", "  - { name: public, address: \"127.0.0.1:0\" }",
            "clusters:",
            "  a:",
            "    destinations: [\"https://api.example.test\"]",
            $"    tls: {{ sni: backend.example.test, ca: \"{_ca}\", client_cert: \"{_cert}\", client_key: \"{_key}\" }}");

        Assert.True(result.Success, string.Join("\n", result.Errors));
        var cluster = result.Snapshot!.Clusters["a"];
        Assert.Equal(443, cluster.Destinations[0].Port);
        Assert.True(cluster.Destinations[0].Secure);
        Assert.Equal("api.example.test"u8.ToArray(), cluster.Destinations[0].HostHeader);
        Assert.Equal("backend.example.test", cluster.Tls!.ClientOptions("api.example.test").TargetHost);
        Assert.NotNull(cluster.Tls.ClientCertificate);
    }

    public void Dispose() => _pki.Dispose();
}
