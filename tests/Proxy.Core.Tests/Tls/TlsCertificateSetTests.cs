using Proxy.Transport.Tls;

namespace Proxy.Core.Tests.Tls;

public sealed class TlsCertificateSetTests : IDisposable
{
    private readonly TestPki _pki = new();

    private TlsCertificateSet Load(params (string Name, string[] Hosts, string[] San)[] certificates)
    {
        var sources = certificates.Select(c =>
        {
            var (cert, key) = _pki.Write(TestPki.SelfSigned(c.Name, c.San), c.Name);
            return new TlsCertificateSource(cert, key, c.Hosts);
        }).ToArray();
        return TlsCertificateSet.Load(sources, ClientCertificateMode.None, null, out var error) ?? throw new InvalidOperationException(error);
    }

    private static string Subject(TlsCertificateSet set, string? serverName)
        => set.Select(serverName).ServerCertificateContext!.TargetCertificate.Subject;

    [Theory]
    [InlineData("first.test", "CN=first")]
    [InlineData("FIRST.test", "CN=first")]
    [InlineData("second.test", "CN=second")]
    [InlineData("a.wild.test", "CN=second")]
    [InlineData("a.b.wild.test", "CN=first")]
    [InlineData("wild.test", "CN=first")]
    [InlineData("unknown.test", "CN=first")]
    [InlineData("", "CN=first")]
    [InlineData(null, "CN=first")]
    public void Select_ByServerName_ExactThenWildcardThenFirst(string? serverName, string subject)
    {
        var set = Load(("first", ["first.test"], []), ("second", ["second.test", "*.wild.test"], []));

        Assert.Equal(subject, Subject(set, serverName));
    }

    [Fact]
    public void Select_NoHostsConfigured_UsesCertificateDnsNames()
    {
        var set = Load(("first", [], ["first.test"]), ("second", [], ["second.test", "*.san.test"]));

        Assert.Equal("CN=second", Subject(set, "x.san.test"));
        Assert.Equal("CN=second", Subject(set, "second.test"));
    }

    [Fact]
    public void Load_OffersOnlyTls12And13()
    {
        var set = Load(("first", ["first.test"], []));

        Assert.Equal(System.Security.Authentication.SslProtocols.Tls12 | System.Security.Authentication.SslProtocols.Tls13,
            set.Select("first.test").EnabledSslProtocols);
    }

    public void Dispose() => _pki.Dispose();
}
