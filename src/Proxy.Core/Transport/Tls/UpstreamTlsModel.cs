using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace Proxy.Transport.Tls;

/// <summary>
/// TLS to a cluster's https:// destinations: SNI, which CAs to trust (the system store, or a configured bundle), an
/// optional client certificate. ALPN follows the cluster's <c>protocol</c>: http/1.1 only, h2 only, or both (auto).
/// </summary>
internal sealed class UpstreamTlsModel
{
    private static readonly List<SslApplicationProtocol> s_alpn = [SslApplicationProtocol.Http11];
    private static readonly List<SslApplicationProtocol> s_alpnH2 = [SslApplicationProtocol.Http2];
    // RFC 7301 section 3.1: in order of preference; auto prefers h2.
    private static readonly List<SslApplicationProtocol> s_alpnAuto = [SslApplicationProtocol.Http2, SslApplicationProtocol.Http11];
    private static readonly RemoteCertificateValidationCallback s_acceptAny = static (_, _, _, _) => true;

    /// <summary>An https:// destination in a cluster without a <c>tls:</c> block: SNI from the address, system trust.</summary>
    public static UpstreamTlsModel Default { get; } = new();

    /// <summary><c>sni</c>: the name sent and verified instead of the destination's host.</summary>
    public string? ServerName { get; init; }
    /// <summary><c>ca</c>: trust exactly these roots instead of the system store.</summary>
    public X509Certificate2Collection? TrustedRoots { get; init; }
    /// <summary><c>insecure_skip_verify</c>: accept any server certificate (tests and labs only).</summary>
    public bool InsecureSkipVerify { get; init; }
    /// <summary><c>client_cert</c> + <c>client_key</c>, with the chain from the certificate file.</summary>
    public SslStreamCertificateContext? ClientCertificate { get; init; }
    /// <summary>What the cluster's change detection compares (paths and file stamps).</summary>
    public string Description { get; init; } = "";

    /// <summary>Options for one destination, built once per connection pool and shared by its handshakes (SslStream copies them).</summary>
    public SslClientAuthenticationOptions ClientOptions(string host, Proxy.Upstream.UpstreamProtocol protocol = Proxy.Upstream.UpstreamProtocol.Http1)
    {
        // IPv6 hosts keep their brackets in the model (for the Host header); the certificate names the bare address.
        string target = ServerName ?? (host.StartsWith('[') ? host[1..^1] : host);
        var options = new SslClientAuthenticationOptions
        {
            TargetHost = target,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ApplicationProtocols = protocol switch
            {
                Proxy.Upstream.UpstreamProtocol.H2 => s_alpnH2,
                Proxy.Upstream.UpstreamProtocol.Auto => s_alpnAuto,
                _ => s_alpn,
            },
            AllowRenegotiation = false,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            ClientCertificateContext = ClientCertificate,
        };
        if (InsecureSkipVerify)
        {
            options.RemoteCertificateValidationCallback = s_acceptAny;
        }
        else if (TrustedRoots is not null)
        {
            var policy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            policy.CustomTrustStore.AddRange(TrustedRoots);
            options.CertificateChainPolicy = policy;
        }
        return options;
    }
}
