using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Proxy.Transport.Tls;

/// <summary>
/// A self-signed certificate for local development (<c>proxy dev-cert</c>): ECDSA P-256, valid for a year, its host
/// names and addresses in the subject alternative name (what clients check, RFC 6125), marked for server auth.
/// </summary>
internal static class DevCertificate
{
    public static X509Certificate2 Create(IReadOnlyList<string> hosts, DateTimeOffset notBefore, DateTimeOffset notAfter)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={(hosts.Count > 0 ? hosts[0] : "localhost")}, O=proxy dev-cert", key, HashAlgorithmName.SHA256);
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
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(notBefore, notAfter);
    }

    /// <summary>Writes <c>NAME.pem</c> (certificate) and <c>NAME.key</c> (PKCS#8 key, mode 600 where supported); returns both paths.</summary>
    public static (string CertPath, string KeyPath) WritePem(X509Certificate2 certificate, string directory, string name)
    {
        Directory.CreateDirectory(directory);
        string certPath = Path.Combine(directory, name + ".pem");
        string keyPath = Path.Combine(directory, name + ".key");
        File.WriteAllText(certPath, certificate.ExportCertificatePem() + "\n");
        AsymmetricAlgorithm key = (AsymmetricAlgorithm?)certificate.GetECDsaPrivateKey() ?? certificate.GetRSAPrivateKey()
            ?? throw new InvalidOperationException("the certificate has no private key");
        using (key)
        {
            File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem() + "\n");
        }
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(keyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
        return (certPath, keyPath);
    }
}
