using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Text;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Tls;

/// <summary>
/// How a TLS client connection's bytes reach the HTTP parser when records arrive split, batched or half-way. On the
/// epoll engine the reader waits on the socket whenever it believes the SslStream holds nothing (it asks the SslStream
/// directly after a read that filled its buffer): a wrong belief would leave a request that already arrived unread
/// until the client sends again, which these clients never do. The same tests run on the runtime's engine.
/// </summary>
public sealed class TlsReaderTests
{
    private const string Body = "tls-reader-ok\n";

    private static async Task<(TestProxy Proxy, TestPki Pki)> StartAsync(string limits = "")
    {
        var pki = new TestPki();
        var ca = TestPki.CreateCa();
        var (cert, key) = pki.Write(TestPki.Issue(ca, "example.test", ["example.test"]), "server", ca);
        var proxy = await TestProxy.StartAsync($$"""
            server: { watch_config: false }
            {{limits}}
            listeners:
              - { name: public, address: 127.0.0.1:0, tls: { certificates: [{ cert: "{{cert}}", key: "{{key}}" }] } }
            routes:
              - { id: hello, match: { path: "/{**rest}" }, respond: { status: 200, body: "{{Body.Replace("\n", "\\n")}}" } }
            """);
        return (proxy, pki);
    }

    /// <summary>
    /// Pipelined requests of uneven sizes, each in its own TLS record, written back to back: one recv() can hold many
    /// records, and a record can be larger than what is left of the reader's block, so some reads fill the buffer and
    /// leave decrypted bytes in the SslStream while others end exactly at a record. Every request must be answered
    /// without the client sending anything more.
    /// </summary>
    [Theory]
    [InlineData(30, 0)]
    [InlineData(30, 700)]
    [InlineData(12, 3000)]
    public async Task PipelinedRequests_EachInItsOwnRecord_AllAnswered(int count, int padding)
    {
        var (proxy, pki) = await StartAsync();
        await using var _ = proxy;
        using var __ = pki;
        var (ssl, _) = await TlsClients.HandshakeAsync(proxy.Public.Port, "example.test");
        using var stream = ssl;
        var burst = new MemoryStream();
        for (int i = 0; i < count; i++)
        {
            // Uneven sizes: padding, plus a little more for every request.
            string filler = new('a', padding + i * 37);
            byte[] request = Encoding.ASCII.GetBytes($"GET /r/{i} HTTP/1.1\r\nHost: example.test\r\nX-Filler: {filler}\r\n\r\n");
            await stream.WriteAsync(request); // one record each (a record holds up to 16 KiB)
        }

        int answered = await ReadAnswersAsync(stream, count);
        Assert.Equal(count, answered);
    }

    /// <summary>
    /// Only part of a TLS record arrives and the client goes quiet: the read waiting for the rest is taken back when the
    /// connection's timeout ends (keepalive_timeout here: no byte of the request reached the parser) and the connection
    /// closes, as on a cleartext connection. On the epoll engine that wait sits inside
    /// the SslStream, which the reader wakes through a cancellation token (an interrupted socket read would hand the
    /// SslStream a result no socket gives).
    /// </summary>
    [Fact]
    public async Task PartialRecord_ClientGoesQuiet_ClosedAtTimeout()
    {
        var (proxy, pki) = await StartAsync("limits: { header_timeout: 1s, keepalive_timeout: 1s }");
        await using var _ = proxy;
        using var __ = pki;
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, proxy.Public.Port));
        var holding = new HoldingStream(new NetworkStream(socket, ownsSocket: false));
        using var ssl = new SslStream(holding);
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "example.test",
            RemoteCertificateValidationCallback = static (_, _, _, _) => true,
            ApplicationProtocols = [SslApplicationProtocol.Http11],
        });
        // One complete request first: the connection is established and the reader has waited on it at least once.
        Assert.Contains(Body, await TlsClients.GetAsync(ssl, "example.test"));

        holding.Hold = true;
        await ssl.WriteAsync(Encoding.ASCII.GetBytes("GET /slow HTTP/1.1\r\nHost: example.test\r\n\r\n"));
        byte[] record = holding.TakeHeld();
        Assert.True(record.Length > 40, $"the request's record is {record.Length} bytes");
        await socket.SendAsync(record.AsMemory(0, record.Length / 2)); // half a record, then silence

        var clock = Stopwatch.StartNew();
        var buffer = new byte[4096];
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        int n;
        try
        {
            n = await ssl.ReadAsync(buffer, cts.Token);
        }
        catch (IOException)
        {
            n = 0; // closed with RST or without close_notify: closed all the same
        }
        // No byte of the request reached the parser: the quiet close of an idle keep-alive connection, no answer.
        Assert.True(n == 0, $"expected the connection closed, got {Encoding.ASCII.GetString(buffer, 0, n)}");
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.5), TimeSpan.FromSeconds(8));

        // The proxy is fine: a new connection is served.
        var (again, _) = await TlsClients.HandshakeAsync(proxy.Public.Port, "example.test");
        using (again)
        {
            Assert.Contains(Body, await TlsClients.GetAsync(again, "example.test"));
        }
    }

    /// <summary>Reads responses until <paramref name="count"/> bodies arrived or the stream ends; returns how many arrived.</summary>
    private static async Task<int> ReadAnswersAsync(Stream stream, int count)
    {
        var received = new StringBuilder();
        var buffer = new byte[16 * 1024];
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        int answered = 0;
        while (answered < count)
        {
            int n;
            try
            {
                n = await stream.ReadAsync(buffer, cts.Token);
            }
            catch (OperationCanceledException)
            {
                break; // a request left unread: the count below says how many were answered
            }
            if (n == 0)
            {
                break;
            }
            received.Append(Encoding.ASCII.GetString(buffer, 0, n));
            answered = CountOf(received.ToString(), "\r\n\r\n" + Body);
        }
        Assert.Equal(answered, CountOf(received.ToString(), "HTTP/1.1 200 "));
        return answered;
    }

    private static int CountOf(string text, string value)
    {
        int count = 0;
        for (int at = text.IndexOf(value, StringComparison.Ordinal); at >= 0; at = text.IndexOf(value, at + value.Length, StringComparison.Ordinal))
        {
            count++;
        }
        return count;
    }
}
