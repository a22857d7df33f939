using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Tls;

/// <summary>TLS clients for the tests: HttpClient pinned to a test CA, and a raw SslStream to see what the server sends.</summary>
internal static class TlsClients
{
    /// <summary>
    /// An HttpClient that connects every request to 127.0.0.1:<paramref name="port"/> whatever the URL's host (so the host
    /// is the SNI name), trusts only <paramref name="ca"/>, and presents <paramref name="clientCertificate"/> when given.
    /// </summary>
    public static HttpClient Create(int port, X509Certificate2 ca, X509Certificate2? clientCertificate = null, List<string>? seenSubjects = null)
    {
        var handler = new SocketsHttpHandler
        {
            UseProxy = false,
            AllowAutoRedirect = false,
            ConnectTimeout = TestDefaults.Timeout,
            ConnectCallback = async (_, cancellationToken) =>
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), cancellationToken);
                return new NetworkStream(socket, ownsSocket: true);
            },
        };
        handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
        {
            if (certificate is null)
            {
                return false;
            }
            var leaf = new X509Certificate2(certificate);
            lock (seenSubjects ?? [])
            {
                seenSubjects?.Add(leaf.Subject);
            }
            return (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) == SslPolicyErrors.None && ChainsTo(leaf, ca);
        };
        if (clientCertificate is not null)
        {
            handler.SslOptions.ClientCertificates = [clientCertificate];
        }
        return new HttpClient(handler) { Timeout = TestDefaults.Timeout, DefaultRequestVersion = HttpVersion.Version11 };
    }

    public static bool ChainsTo(X509Certificate2 leaf, X509Certificate2 ca)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(leaf);
    }

    /// <summary>Handshakes with <paramref name="serverName"/> as SNI (null: none), accepting any certificate; returns what the server sent.</summary>
    public static async Task<(SslStream Stream, X509Certificate2 ServerCertificate)> HandshakeAsync(int port, string? serverName,
        X509Certificate2? clientCertificate = null, SslProtocols protocols = SslProtocols.None)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
        var ssl = new SslStream(new NetworkStream(socket, ownsSocket: true));
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            // An IP address as target host sends no SNI (RFC 6066 section 3: literal addresses are not allowed).
            TargetHost = serverName ?? "127.0.0.1",
            RemoteCertificateValidationCallback = static (_, _, _, _) => true,
            ClientCertificates = clientCertificate is null ? null : [clientCertificate],
            EnabledSslProtocols = protocols,
            ApplicationProtocols = [SslApplicationProtocol.Http11],
        }, cts.Token);
        return (ssl, new X509Certificate2(ssl.RemoteCertificate!));
    }

    /// <summary>One GET over an established stream; returns the raw response text (headers and a small body).</summary>
    public static async Task<string> GetAsync(Stream stream, string host, string path = "/hello")
    {
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        var buffer = new byte[16 * 1024];
        int filled = 0;
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        while (true)
        {
            int n = await stream.ReadAsync(buffer.AsMemory(filled), cts.Token);
            if (n == 0)
            {
                return Encoding.ASCII.GetString(buffer, 0, filled);
            }
            filled += n;
            string text = Encoding.ASCII.GetString(buffer, 0, filled);
            int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (end < 0)
            {
                continue;
            }
            var match = System.Text.RegularExpressions.Regex.Match(text, "content-length: *(\\d+)", System.Text.RegularExpressions.RegexOptions.IgnoreCase);
            if (match.Success && filled >= end + 4 + int.Parse(match.Groups[1].Value))
            {
                return text;
            }
        }
    }
}
