using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Proxy.Transport.Tls;

/// <summary>Where a certificate problem lies, so the config error can point at the right key.</summary>
internal enum TlsFileProblem : byte
{
    None = 0,
    Certificate,
    Key,
}

/// <summary>
/// PEM loading for certificates, keys and CA bundles (control plane). Every failure comes back as a message, never
/// as an exception, so the validator can report it with the config position and the reload check can log it.
/// </summary>
internal static class TlsCertificates
{
    /// <summary>
    /// Loads a leaf certificate with its private key (RSA or ECDSA, PKCS#1, SEC1 or PKCS#8 PEM) and the rest of the
    /// chain from the same certificate file. The leaf is the first certificate in the file.
    /// </summary>
    public static bool TryLoad(string certPath, string keyPath, out X509Certificate2? leaf, out X509Certificate2Collection chain,
        out string error, out TlsFileProblem problem)
    {
        leaf = null;
        chain = [];
        if (!TryReadable(certPath, "certificate", out error))
        {
            problem = TlsFileProblem.Certificate;
            return false;
        }
        if (!TryReadable(keyPath, "key", out error))
        {
            problem = TlsFileProblem.Key;
            return false;
        }
        var all = new X509Certificate2Collection();
        try
        {
            all.ImportFromPemFile(certPath);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException)
        {
            error = $"certificate file '{certPath}' cannot be read as PEM: {e.Message}";
            problem = TlsFileProblem.Certificate;
            return false;
        }
        if (all.Count == 0)
        {
            error = $"certificate file '{certPath}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)";
            problem = TlsFileProblem.Certificate;
            return false;
        }
        string keyText;
        try
        {
            keyText = File.ReadAllText(keyPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            error = $"key file '{keyPath}' cannot be read: {e.Message}";
            problem = TlsFileProblem.Key;
            return false;
        }
        if (keyText.Contains("ENCRYPTED PRIVATE KEY", StringComparison.Ordinal))
        {
            error = $"key file '{keyPath}' is encrypted; give an unencrypted PEM key (e.g. openssl pkey -in {Path.GetFileName(keyPath)} -out plain.key)";
            problem = TlsFileProblem.Key;
            return false;
        }
        try
        {
            // CreateFromPem pairs the first certificate with the key and fails when they do not belong together.
            var certText = File.ReadAllText(certPath);
            X509Certificate2 withKey = X509Certificate2.CreateFromPem(certText, keyText);
            if (OperatingSystem.IsWindows())
            {
                // SChannel cannot use an ephemeral key: round-trip through PKCS#12 (Linux and macOS do not need it).
                using X509Certificate2 ephemeral = withKey;
                withKey = X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pkcs12), null);
            }
            leaf = withKey;
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            // ArgumentException: a well-formed key of another certificate; CryptographicException: no usable key.
            bool mismatch = e is ArgumentException;
            error = mismatch
                ? $"key file '{keyPath}' does not match certificate '{certPath}' (the key's public key differs from the certificate's)"
                : $"key file '{keyPath}' holds no usable private key (RSA or ECDSA PEM expected): {e.Message}";
            problem = TlsFileProblem.Key;
            return false;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            error = $"certificate '{certPath}' or key '{keyPath}' cannot be read: {e.Message}";
            problem = TlsFileProblem.Certificate;
            return false;
        }
        for (int i = 1; i < all.Count; i++)
        {
            chain.Add(all[i]);
        }
        all[0].Dispose();
        error = "";
        problem = TlsFileProblem.None;
        return true;
    }

    /// <summary>Loads every certificate of a PEM bundle (a CA file).</summary>
    public static bool TryLoadBundle(string path, out X509Certificate2Collection bundle, out string error)
    {
        bundle = [];
        if (!TryReadable(path, "CA", out error))
        {
            return false;
        }
        try
        {
            bundle.ImportFromPemFile(path);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException)
        {
            error = $"CA file '{path}' cannot be read as PEM: {e.Message}";
            return false;
        }
        if (bundle.Count == 0)
        {
            error = $"CA file '{path}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)";
            return false;
        }
        return true;
    }

    /// <summary>The DNS names of a certificate's subject alternative name extension (lower case).</summary>
    public static List<string> DnsNames(X509Certificate2 certificate)
    {
        var names = new List<string>();
        foreach (X509Extension extension in certificate.Extensions)
        {
            if (extension is X509SubjectAlternativeNameExtension san)
            {
                foreach (string name in san.EnumerateDnsNames())
                {
                    names.Add(name.ToLowerInvariant());
                }
            }
        }
        return names;
    }

    /// <summary>A cheap change detector for a file: last write time and length (stat only).</summary>
    public static long Stamp(string path)
    {
        try
        {
            var info = new FileInfo(path);
            return info.Exists ? info.LastWriteTimeUtc.Ticks ^ (info.Length * 1_000_003L) : 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return 0;
        }
    }

    private static bool TryReadable(string path, string what, out string error)
    {
        if (!File.Exists(path))
        {
            error = Directory.Exists(path) ? $"{what} path '{path}' is a directory, not a file" : $"{what} file '{path}' not found";
            return false;
        }
        error = "";
        return true;
    }
}
