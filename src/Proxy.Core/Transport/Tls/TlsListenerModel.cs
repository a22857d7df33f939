using System.Net;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Proxy.Diagnostics;

namespace Proxy.Transport.Tls;

/// <summary><c>client_certificates.mode</c>: whether the listener asks for a client certificate (mTLS).</summary>
internal enum ClientCertificateMode : byte
{
    /// <summary>No certificate is requested.</summary>
    None = 0,
    /// <summary>Requested; a client without one is served, a client with an invalid one is refused.</summary>
    Request,
    /// <summary>
    /// Required: an invalid certificate fails the handshake; a client without one completes it and every request it
    /// sends is answered 400 <c>client_certificate_required</c>, never routed.
    /// </summary>
    Require,
}

/// <summary>One <c>certificates:</c> entry as configured (absolute paths) with the host names it serves.</summary>
internal sealed record TlsCertificateSource(string CertPath, string KeyPath, string[] Hosts);

/// <summary>
/// The TLS settings of one listener: its certificates chosen by SNI, the client-certificate policy and the
/// handshake timeout. The certificates live in an immutable <see cref="TlsCertificateSet"/> swapped as a whole when
/// the files change (<see cref="RefreshIfChanged"/>, driven by the listener): handshakes in flight keep the set they
/// started with, new ones get the new set, established connections are untouched.
/// </summary>
internal sealed class TlsListenerModel
{
    /// <summary>
    /// ALPN, offered in preference order. The HTTP/2 server lands with the h2 branch: at merge this becomes
    /// <c>[SslApplicationProtocol.Http2, SslApplicationProtocol.Http11]</c> (one line; see TlsConnection.RunAsync).
    /// </summary>
    internal static readonly List<SslApplicationProtocol> s_alpn = [SslApplicationProtocol.Http2, SslApplicationProtocol.Http11];

    private volatile TlsCertificateSet _set;
    private long _handshakeFailures;
    private long _failedStamp;

    private TlsListenerModel(string listenerName, TlsCertificateSource[] sources, ClientCertificateMode mode, string? caPath,
        byte[]? forwardHeader, TimeSpan handshakeTimeout, TlsCertificateSet set)
    {
        ListenerName = listenerName;
        Sources = sources;
        ClientCertificates = mode;
        CaPath = caPath;
        ForwardHeader = forwardHeader;
        HandshakeTimeout = handshakeTimeout;
        _set = set;
    }

    public string ListenerName { get; }
    public TlsCertificateSource[] Sources { get; }
    public ClientCertificateMode ClientCertificates { get; }
    public string? CaPath { get; }
    /// <summary><c>client_certificates.forward_header</c>, lower case; null when the subject is not forwarded.</summary>
    public byte[]? ForwardHeader { get; }
    public TimeSpan HandshakeTimeout { get; }

    /// <summary>The certificates new handshakes use.</summary>
    public TlsCertificateSet Current => _set;

    /// <summary>Handshakes that failed (bad client hello, timeout, refused client certificate) on this model.</summary>
    public long HandshakeFailures => Interlocked.Read(ref _handshakeFailures);

    public static readonly TimeSpan DefaultHandshakeTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Loads every file; throws <see cref="InvalidOperationException"/> with the first problem (the validator ran first).</summary>
    public static TlsListenerModel Create(string listenerName, TlsCertificateSource[] sources, ClientCertificateMode mode, string? caPath,
        string? forwardHeader, TimeSpan? handshakeTimeout)
    {
        var set = TlsCertificateSet.Load(sources, mode, caPath, out string error)
            ?? throw new InvalidOperationException($"listener '{listenerName}': {error}");
        return new TlsListenerModel(listenerName, sources, mode, caPath,
            forwardHeader is null ? null : System.Text.Encoding.ASCII.GetBytes(forwardHeader.ToLowerInvariant()),
            handshakeTimeout ?? DefaultHandshakeTimeout, set);
    }

    /// <summary>The options for a client hello naming <paramref name="serverName"/> (null or unknown: the first certificate).</summary>
    public SslServerAuthenticationOptions Select(string? serverName) => _set.Select(serverName);

    /// <summary>
    /// Reloads the certificates when any of their files changed since they were loaded (a stat per file). A set that
    /// fails to load (a key written before its certificate) is logged once per file state and the old set kept.
    /// </summary>
    public bool RefreshIfChanged()
    {
        TlsCertificateSet current = _set;
        long stamp = current.ReadStamp();
        if (stamp == current.Stamp || stamp == Interlocked.Read(ref _failedStamp))
        {
            return false;
        }
        TlsCertificateSet? next = TlsCertificateSet.Load(Sources, ClientCertificates, CaPath, out string error);
        if (next is null)
        {
            Interlocked.Exchange(ref _failedStamp, stamp);
            ProxyLog.Error("tls_certificate_reload_failed", ("listener", ListenerName), ("error", error));
            return false;
        }
        _set = next;
        ProxyLog.Info("tls_certificates_reloaded", ("listener", ListenerName), ("certificates", Sources.Length));
        return true;
    }

    internal void CountHandshakeFailure() => Interlocked.Increment(ref _handshakeFailures);
}

/// <summary>
/// An immutable set of server certificates with a compiled SNI lookup: exact names, then one-label wildcards
/// (<c>*.example.test</c> matches <c>a.example.test</c>, not <c>a.b.example.test</c>, RFC 6125 section 6.4.3), then the
/// first certificate. Each certificate's <see cref="SslServerAuthenticationOptions"/> (with its
/// <see cref="SslStreamCertificateContext"/>, chain included) is built once here and shared by every handshake: SslStream
/// copies the options it is given.
/// </summary>
internal sealed class TlsCertificateSet
{
    /// <summary>
    /// <c>request</c> and <c>require</c> alike: a certificate the client sends must chain to the configured CA (else a
    /// TLS alert such as unknown_ca), and a client that sends none completes the handshake. For <c>require</c> that
    /// client is answered by the HTTP layer instead, 400 <c>client_certificate_required</c> on every request
    /// (<see cref="ClientTransport.ClientCertificateMissing"/>), as nginx's <c>ssl_verify_client on</c> does: refusing
    /// it here failed a TLS 1.3 handshake only after the client had finished its side, so it saw a bare close.
    /// </summary>
    private static readonly RemoteCertificateValidationCallback s_clientCertificate =
        static (_, certificate, _, errors) => certificate is null || errors == SslPolicyErrors.None;

    private readonly Dictionary<string, SslServerAuthenticationOptions> _exact;
    private readonly Dictionary<string, SslServerAuthenticationOptions>.AlternateLookup<ReadOnlySpan<char>> _wildcard;
    private readonly SslServerAuthenticationOptions _default;
    private readonly string[] _files;

    private TlsCertificateSet(Dictionary<string, SslServerAuthenticationOptions> exact, Dictionary<string, SslServerAuthenticationOptions> wildcard,
        SslServerAuthenticationOptions fallback, string[] files, long stamp, X509Certificate2[] leaves)
    {
        _exact = exact;
        _wildcard = wildcard.GetAlternateLookup<ReadOnlySpan<char>>();
        _default = fallback;
        _files = files;
        Stamp = stamp;
        Leaves = leaves;
    }

    /// <summary>The combined file stamps this set was loaded from.</summary>
    public long Stamp { get; }

    /// <summary>The leaf certificates, in configuration order (admin, tests).</summary>
    public X509Certificate2[] Leaves { get; }

    public SslServerAuthenticationOptions Select(string? serverName)
    {
        if (string.IsNullOrEmpty(serverName))
        {
            return _default;
        }
        if (_exact.TryGetValue(serverName, out var options))
        {
            return options;
        }
        int dot = serverName.IndexOf('.');
        if (dot > 0 && _wildcard.TryGetValue(serverName.AsSpan(dot + 1), out options))
        {
            return options;
        }
        return _default;
    }

    public long ReadStamp()
    {
        long stamp = 17;
        foreach (string file in _files)
        {
            stamp = stamp * 31 + TlsCertificates.Stamp(file);
        }
        return stamp;
    }

    public static TlsCertificateSet? Load(TlsCertificateSource[] sources, ClientCertificateMode mode, string? caPath, out string error)
    {
        var files = new List<string>();
        foreach (var s in sources)
        {
            files.Add(s.CertPath);
            files.Add(s.KeyPath);
        }
        if (caPath is not null)
        {
            files.Add(caPath);
        }
        // Stamped before reading: a file changed while loading is seen as changed again at the next check.
        long stamp = 17;
        foreach (string file in files)
        {
            stamp = stamp * 31 + TlsCertificates.Stamp(file);
        }

        X509ChainPolicy? policy = null;
        SslCertificateTrust? trust = null;
        if (mode != ClientCertificateMode.None)
        {
            if (!TlsCertificates.TryLoadBundle(caPath!, out var bundle, out error))
            {
                return null;
            }
            policy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            policy.CustomTrustStore.AddRange(bundle);
            try
            {
                // Names the acceptable CAs in the CertificateRequest, so clients with several certificates pick the right one.
                trust = SslCertificateTrust.CreateForX509Collection(bundle, sendTrustInHandshake: true);
            }
            catch (PlatformNotSupportedException)
            {
            }
        }

        var exact = new Dictionary<string, SslServerAuthenticationOptions>(StringComparer.OrdinalIgnoreCase);
        var wildcard = new Dictionary<string, SslServerAuthenticationOptions>(StringComparer.OrdinalIgnoreCase);
        SslServerAuthenticationOptions? fallback = null;
        var leaves = new X509Certificate2[sources.Length];
        for (int i = 0; i < sources.Length; i++)
        {
            var source = sources[i];
            if (!TlsCertificates.TryLoad(source.CertPath, source.KeyPath, out var leaf, out var chain, out error, out _))
            {
                return null;
            }
            leaves[i] = leaf!;
            if (leaf!.NotAfter < DateTime.Now)
            {
                ProxyLog.Write(ProxyLogLevel.Warn, "tls_certificate_expired", ("certificate", source.CertPath), ("not_after", leaf.NotAfter.ToUniversalTime().ToString("O")));
            }
            var options = new SslServerAuthenticationOptions
            {
                // offline: never fetch missing intermediates or OCSP at load; the file must hold the chain.
                ServerCertificateContext = SslStreamCertificateContext.Create(leaf, chain, offline: true, trust),
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                ApplicationProtocols = TlsListenerModel.s_alpn,
                AllowRenegotiation = false,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                ClientCertificateRequired = mode != ClientCertificateMode.None,
                CertificateChainPolicy = policy,
                RemoteCertificateValidationCallback = mode == ClientCertificateMode.None ? null : s_clientCertificate,
            };
            fallback ??= options;
            string[] hosts = source.Hosts.Length > 0 ? source.Hosts : [.. TlsCertificates.DnsNames(leaf)];
            foreach (string host in hosts)
            {
                if (host.StartsWith("*.", StringComparison.Ordinal))
                {
                    wildcard.TryAdd(host[2..], options);
                }
                else
                {
                    exact.TryAdd(host, options);
                }
            }
        }
        error = "";
        return new TlsCertificateSet(exact, wildcard, fallback!, [.. files], stamp, leaves);
    }
}
