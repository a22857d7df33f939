using System.Security.Cryptography.X509Certificates;
using Proxy.Configuration;

namespace Proxy.Transport.Tls;

/// <summary>
/// Validation and compilation of the <c>tls:</c> blocks (listeners and clusters), kept here so the shared config
/// classes each call in with one line. Validation loads every file (missing files, unreadable or encrypted keys,
/// certificate/key mismatch, empty CA bundles are all config errors with a position); compilation loads them again
/// into the runtime models.
/// </summary>
internal static class TlsConfigCompiler
{
    public static string Resolve(string baseDirectory, string path)
        => Path.GetFullPath(Path.Combine(baseDirectory.Length == 0 ? Directory.GetCurrentDirectory() : baseDirectory, path));

    public static void ValidateListener(ListenerTlsConfig tls, string baseDirectory, ConfigErrorList errors)
    {
        if (tls.Certificates.Count == 0)
        {
            errors.Add(tls.Mark, "'tls' needs at least one entry under 'certificates' ({ cert: FILE.pem, key: FILE.key, hosts: [...] })");
        }
        var hosts = new Dictionary<string, int>(StringComparer.OrdinalIgnoreCase);
        foreach (var certificate in tls.Certificates)
        {
            if (certificate.Cert is { } cert && certificate.Key is { } key)
            {
                if (!TlsCertificates.TryLoad(Resolve(baseDirectory, cert.Value), Resolve(baseDirectory, key.Value), out var leaf, out _, out var error, out var problem))
                {
                    errors.Add(problem == TlsFileProblem.Key ? key.Mark : cert.Mark, error);
                }
                leaf?.Dispose();
            }
            foreach (var host in certificate.Hosts)
            {
                if (ConfigSyntax.CheckHostPattern(host.Value) is { } hostError)
                {
                    errors.Add(host.Mark, hostError);
                }
                else if (hosts.TryGetValue(host.Value, out int line))
                {
                    errors.Add(host.Mark, $"host '{host.Value}' is already served by the certificate at line {line}");
                }
                else
                {
                    hosts.Add(host.Value, certificate.Mark.Line);
                }
            }
        }
        if (tls.ClientCertificates is { } clients)
        {
            var mode = clients.Mode?.Value ?? ClientCertificateMode.None;
            if (mode != ClientCertificateMode.None && clients.Ca is null)
            {
                errors.Add(clients.Mode?.Mark ?? clients.Mark,
                    $"client_certificates mode '{(mode == ClientCertificateMode.Require ? "require" : "request")}' needs 'ca' (a PEM bundle of the CAs that sign client certificates)");
            }
            if (clients.Ca is { } ca && !TlsCertificates.TryLoadBundle(Resolve(baseDirectory, ca.Value), out _, out var caError))
            {
                errors.Add(ca.Mark, caError);
            }
            if (clients.ForwardHeader is { } header)
            {
                if (!ConfigSyntax.IsToken(header.Value))
                {
                    errors.Add(header.Mark, $"invalid header name '{header.Value}': a field name is a token (letters, digits and !#$%&'*+-.^_`|~)");
                }
                else if (mode == ClientCertificateMode.None)
                {
                    errors.Add(header.Mark, "'forward_header' needs client_certificates mode 'request' or 'require' (with 'none' there is no certificate to forward)");
                }
            }
        }
    }

    public static void ValidateCluster(ClusterConfig cluster, string baseDirectory, ConfigErrorList errors)
    {
        bool anySecure = false;
        foreach (var destination in cluster.Destinations)
        {
            anySecure |= ConfigSyntax.IsSecureDestination(destination.Address.Value);
        }
        // health_check probes on https:// destinations connect as the pools do (TLS, ALPN): ActiveHealthChecker.
        if (cluster.Tls is not { } tls)
        {
            return;
        }
        if (!anySecure)
        {
            errors.Add(tls.Mark, $"cluster '{cluster.Name.Value}' has a 'tls' block but no https:// destination");
        }
        if (tls.Sni is { } sni && (sni.Value.StartsWith('*') || ConfigSyntax.CheckHostPattern(sni.Value) is not null))
        {
            errors.Add(sni.Mark, $"'sni' must be a host name, got '{sni.Value}'");
        }
        if (tls.Ca is { } ca && !TlsCertificates.TryLoadBundle(Resolve(baseDirectory, ca.Value), out _, out var caError))
        {
            errors.Add(ca.Mark, caError);
        }
        if (tls.ClientCert is null != tls.ClientKey is null)
        {
            errors.Add((tls.ClientCert ?? tls.ClientKey)!.Value.Mark, "'client_cert' and 'client_key' go together: give both or neither");
        }
        else if (tls.ClientCert is { } cert && tls.ClientKey is { } key)
        {
            if (!TlsCertificates.TryLoad(Resolve(baseDirectory, cert.Value), Resolve(baseDirectory, key.Value), out var leaf, out _, out var error, out var problem))
            {
                errors.Add(problem == TlsFileProblem.Key ? key.Mark : cert.Mark, error);
            }
            leaf?.Dispose();
        }
    }

    public static TlsListenerModel BuildListener(string listenerName, ListenerTlsConfig tls, string baseDirectory)
    {
        var sources = new TlsCertificateSource[tls.Certificates.Count];
        for (int i = 0; i < sources.Length; i++)
        {
            var c = tls.Certificates[i];
            sources[i] = new TlsCertificateSource(Resolve(baseDirectory, c.Cert!.Value.Value), Resolve(baseDirectory, c.Key!.Value.Value),
                c.Hosts.Select(h => h.Value.ToLowerInvariant()).ToArray());
        }
        var clients = tls.ClientCertificates;
        var mode = clients?.Mode?.Value ?? ClientCertificateMode.None;
        string? ca = clients?.Ca is { } caPath ? Resolve(baseDirectory, caPath.Value) : null;
        return TlsListenerModel.Create(listenerName, sources, mode, mode == ClientCertificateMode.None ? null : ca,
            clients?.ForwardHeader?.Value, tls.HandshakeTimeout);
    }

    /// <summary>The cluster's upstream TLS model; null when it has no https:// destination.</summary>
    public static UpstreamTlsModel? BuildCluster(ClusterConfig cluster, string baseDirectory)
    {
        if (!cluster.Destinations.Any(d => ConfigSyntax.IsSecureDestination(d.Address.Value)))
        {
            return null;
        }
        if (cluster.Tls is not { } tls)
        {
            return UpstreamTlsModel.Default;
        }
        X509Certificate2Collection? roots = null;
        string description = $"sni={tls.Sni?.Value};skip={tls.InsecureSkipVerify}";
        if (tls.Ca is { } ca)
        {
            string path = Resolve(baseDirectory, ca.Value);
            if (!TlsCertificates.TryLoadBundle(path, out roots, out var error))
            {
                throw new InvalidOperationException($"cluster '{cluster.Name.Value}': {error}");
            }
            description += $";ca={path}@{TlsCertificates.Stamp(path)}";
        }
        System.Net.Security.SslStreamCertificateContext? client = null;
        if (tls.ClientCert is { } cert && tls.ClientKey is { } key)
        {
            string certPath = Resolve(baseDirectory, cert.Value), keyPath = Resolve(baseDirectory, key.Value);
            if (!TlsCertificates.TryLoad(certPath, keyPath, out var leaf, out var chain, out var error, out _))
            {
                throw new InvalidOperationException($"cluster '{cluster.Name.Value}': {error}");
            }
            client = System.Net.Security.SslStreamCertificateContext.Create(leaf!, chain, offline: true);
            description += $";client={certPath}@{TlsCertificates.Stamp(certPath)},{keyPath}@{TlsCertificates.Stamp(keyPath)}";
        }
        return new UpstreamTlsModel
        {
            ServerName = tls.Sni?.Value,
            TrustedRoots = roots,
            InsecureSkipVerify = tls.InsecureSkipVerify ?? false,
            ClientCertificate = client,
            Description = description,
        };
    }
}
