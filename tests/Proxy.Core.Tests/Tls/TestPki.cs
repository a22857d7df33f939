using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Proxy.Core.Tests.Tls;

/// <summary>
/// Certificates made at test time (CertificateRequest): a CA, leaves it signs (server or client), self-signed and
/// expired ones, written as PEM into a temporary directory deleted at the end. Shared with the functional tests.
/// </summary>
internal sealed class TestPki : IDisposable
{
    public TestPki() => Directory = System.IO.Directory.CreateTempSubdirectory("proxy-tls-tests-").FullName;

    public string Directory { get; }

    public static X509Certificate2 CreateCa(string name = "Proxy Test CA")
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now.AddDays(-30), now.AddYears(5));
    }

    /// <summary>A leaf signed by <paramref name="ca"/>; server leaves carry <paramref name="hosts"/> in their SAN.</summary>
    public static X509Certificate2 Issue(X509Certificate2 ca, string commonName, string[] hosts, bool client = false, bool rsa = false,
        DateTimeOffset? notBefore = null, DateTimeOffset? notAfter = null)
    {
        var now = DateTimeOffset.UtcNow;
        using AsymmetricAlgorithm key = rsa ? RSA.Create(2048) : ECDsa.Create(ECCurve.NamedCurves.nistP256);
        CertificateRequest request = key is RSA r
            ? new CertificateRequest($"CN={commonName}, O=Proxy Tests", r, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1)
            : new CertificateRequest($"CN={commonName}, O=Proxy Tests", (ECDsa)key, HashAlgorithmName.SHA256);
        AddLeafExtensions(request, hosts, client);
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        byte[] serial = new byte[12];
        RandomNumberGenerator.Fill(serial);
        serial[0] &= 0x7F;
        // The CA key is ECDSA whatever the leaf's key: sign through a generator so RSA leaves work too.
        using ECDsa caKey = ca.GetECDsaPrivateKey()!;
        using X509Certificate2 issued = request.Create(ca.SubjectName, X509SignatureGenerator.CreateForECDsa(caKey),
            notBefore ?? now.AddDays(-1), notAfter ?? now.AddDays(30), serial);
        return key is RSA rsaKey ? issued.CopyWithPrivateKey(rsaKey) : issued.CopyWithPrivateKey((ECDsa)key);
    }

    public static X509Certificate2 SelfSigned(string commonName, string[] hosts, DateTimeOffset? notBefore = null, DateTimeOffset? notAfter = null)
    {
        var now = DateTimeOffset.UtcNow;
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={commonName}", key, HashAlgorithmName.SHA256);
        AddLeafExtensions(request, hosts, client: false);
        return request.CreateSelfSigned(notBefore ?? now.AddDays(-1), notAfter ?? now.AddDays(30));
    }

    /// <summary>Writes NAME.pem (the leaf, then <paramref name="chain"/>) and NAME.key; returns their paths.</summary>
    public (string Cert, string Key) Write(X509Certificate2 certificate, string name, params X509Certificate2[] chain)
    {
        string certPath = Path.Combine(Directory, name + ".pem");
        string keyPath = Path.Combine(Directory, name + ".key");
        string pem = certificate.ExportCertificatePem() + "\n";
        foreach (var c in chain)
        {
            pem += c.ExportCertificatePem() + "\n";
        }
        WriteAtomically(certPath, pem);
        AsymmetricAlgorithm key = (AsymmetricAlgorithm?)certificate.GetECDsaPrivateKey() ?? certificate.GetRSAPrivateKey()!;
        using (key)
        {
            WriteAtomically(keyPath, key.ExportPkcs8PrivateKeyPem() + "\n");
        }
        return (certPath, keyPath);
    }

    /// <summary>Writes a CA bundle (certificates only).</summary>
    public string WriteCa(string name, params X509Certificate2[] cas)
    {
        string path = Path.Combine(Directory, name + ".pem");
        File.WriteAllText(path, string.Concat(cas.Select(c => c.ExportCertificatePem() + "\n")));
        return path;
    }

    public string WriteText(string name, string text)
    {
        string path = Path.Combine(Directory, name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>Replace by rename, as deployment tools do: a reader never sees a half-written file.</summary>
    private void WriteAtomically(string path, string text)
    {
        string temp = path + ".tmp";
        File.WriteAllText(temp, text);
        File.Move(temp, path, overwrite: true);
    }

    private static void AddLeafExtensions(CertificateRequest request, string[] hosts, bool client)
    {
        if (hosts.Length > 0)
        {
            var san = new SubjectAlternativeNameBuilder();
            foreach (string host in hosts)
            {
                if (IPAddress.TryParse(host, out var address))
                {
                    san.AddIpAddress(address);
                }
                else
                {
                    san.AddDnsName(host);
                }
            }
            request.CertificateExtensions.Add(san.Build());
        }
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid(client ? "1.3.6.1.5.5.7.3.2" : "1.3.6.1.5.5.7.3.1")], false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
    }

    public void Dispose()
    {
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
