using System.Net;
using System.Net.Sockets;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Hosting;
using Proxy.Transport.Tls;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// One proxied request over real loopback sockets: client -> proxy -> upstream -> proxy -> client, on a warm
/// keep-alive connection. The client and the upstream are blocking sockets with pre-encoded messages that
/// allocate nothing, so the Allocated column (all threads) is what the proxy allocates per request. The socket engine is
/// chosen once per process: compare engines out of process (without <c>--inProcess</c>, every row then uses the first).
/// </summary>
[MemoryDiagnoser]
public class ProxyRoundTripBenchmarks
{
    private static readonly byte[] s_response = Encoding.ASCII.GetBytes(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + new string('x', 99) + "\n");

    private static readonly byte[] s_closeRequest = Encoding.ASCII.GetBytes(
        "GET /api/items?page=2 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n");

    private ProxyServer? _proxy;
    private FixedResponseUpstream? _upstream;
    private RoundTripClient? _client;
    private RoundTripClient? _tlsClient;
    private string? _certificateDirectory;
    private IPEndPoint? _endPoint;
    private readonly byte[] _receive = new byte[4096];

    /// <summary>Run socket continuations on the epoll thread instead of hopping to the thread pool.</summary>
    [Params(false, true)]
    public bool InlineCompletions { get; set; }

    /// <summary>"epoll": our edge-triggered engine (PROXY_SOCKET_ENGINE=epoll) drives the proxy's sockets.</summary>
    [Params("dotnet", "epoll")]
    public string SocketEngine { get; set; } = "dotnet";

    [GlobalSetup]
    public void Setup()
    {
        // Read once by the socket engine at its first use; each parameter value runs in its own process.
        Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", InlineCompletions ? "1" : "0");
        Environment.SetEnvironmentVariable("PROXY_SOCKET_ENGINE", SocketEngine);
        _upstream = new FixedResponseUpstream(s_response);
        int upstreamPort = _upstream.Port;

        // A TLS listener too (ProxiedRequestOverTls): a dev certificate written for this run.
        _certificateDirectory = Directory.CreateTempSubdirectory("proxy-bench-tls-").FullName;
        using var certificate = DevCertificate.Create(["bench.example"], DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        var (certPath, keyPath) = DevCertificate.WritePem(certificate, _certificateDirectory, "bench");

        string yaml = $$"""
            listeners:
              - { name: bench, address: 127.0.0.1:0 }
              - { name: secure, address: 127.0.0.1:0, tls: { certificates: [{ cert: "{{certPath}}", key: "{{keyPath}}" }] } }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: origin }
            clusters:
              origin:
                destinations: [{ address: "http://127.0.0.1:{{upstreamPort}}" }]
            """;
        _proxy = ProxyServer.FromYaml(yaml);
        _proxy.StartAsync().GetAwaiter().GetResult();
        IPEndPoint endPoint = _endPoint = _proxy.GetEndPoint("bench");

        byte[] request = Encoding.ASCII.GetBytes(
            "GET /api/items?page=2 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n");
        _client = new RoundTripClient(endPoint, request);
        _tlsClient = new RoundTripClient(_proxy.GetEndPoint("secure"), request, tlsHost: "bench.example");
    }

    [Benchmark]
    public int ProxiedRequest()
    {
        return _client!.RoundTrip();
    }

    /// <summary>
    /// The same request on a warm TLS 1.3 connection (the load benchmark's T1): the proxy decrypts it with its reader
    /// and encrypts the response through its writer over the SslStream. Allocated includes the client's SslStream,
    /// which allocates nothing per synchronous read or write.
    /// </summary>
    [Benchmark]
    public int ProxiedRequestOverTls() => _tlsClient!.RoundTrip();

    /// <summary>
    /// A new connection per request (the load benchmark's S5): connect, one request with <c>Connection: close</c>, read
    /// to the proxy's close. The client is libc sockets (<see cref="LibcClient"/>, no allocation), so Allocated is what
    /// accepting, serving and closing one connection costs the proxy.
    /// </summary>
    [Benchmark]
    public int ProxiedRequestOnNewConnection() => LibcClient.Exchange(_endPoint!, s_closeRequest, _receive);

    [GlobalCleanup]
    public void Cleanup()
    {
        _client?.Dispose();
        _tlsClient?.Dispose();
        _proxy?.StopAsync(TimeSpan.FromSeconds(1)).GetAwaiter().GetResult();
        _upstream?.Dispose();
        if (_certificateDirectory is not null)
        {
            Directory.Delete(_certificateDirectory, recursive: true);
        }
    }
}
