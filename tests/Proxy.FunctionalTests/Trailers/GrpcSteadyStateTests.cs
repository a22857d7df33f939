using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Trailers;

/// <summary>
/// A gRPC-shaped exchange (chunked request with a trailer section and grpc-timeout, chunked response with
/// grpc-status trailers) allocates nothing per request once warm: the trailer buffers are pooled and returned.
/// Blocking sockets with pre-encoded messages on both sides, so the allocation delta is the proxy's.
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class GrpcSteadyStateTests
{
    private static readonly byte[] s_request = Encoding.ASCII.GetBytes(
        "POST /pkg.Svc/Call HTTP/1.1\r\nHost: example.test\r\ncontent-type: application/grpc\r\nte: trailers\r\ngrpc-timeout: 5S\r\n"
        + "transfer-encoding: chunked\r\n\r\n5\r\n\0\0\0\0\0\r\n0\r\nx-checksum: abc\r\n\r\n");
    private static readonly byte[] s_response = Encoding.ASCII.GetBytes(
        "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
        + "5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: OK\r\n\r\n");
    private static ReadOnlySpan<byte> RequestEnd => "x-checksum: abc\r\n\r\n"u8;
    private static ReadOnlySpan<byte> ResponseEnd => "grpc-message: OK\r\n\r\n"u8;

    [Fact]
    public async Task GrpcExchangeWithTrailers_WarmKeepAliveConnection_AllocateUnder100BytesEach()
    {
        using var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        upstream.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        upstream.Listen(4);
        new Thread(() => Serve(upstream)) { IsBackground = true }.Start();
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = ((IPEndPoint)upstream.LocalEndPoint!).Port });

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.ReceiveTimeout = 5000;
        client.Connect(proxy.Public);
        byte[] receive = new byte[16 * 1024];
        int length = RoundTrip(client, receive);
        Assert.EndsWith("0\r\ngrpc-status: 0\r\ngrpc-message: OK\r\n\r\n", Encoding.ASCII.GetString(receive, 0, length), StringComparison.Ordinal);

        for (int i = 0; i < 3000; i++)
        {
            RoundTrip(client, receive);
        }
        const int Requests = 5000;
        long before = GC.GetTotalAllocatedBytes(precise: true);
        for (int i = 0; i < Requests; i++)
        {
            RoundTrip(client, receive);
        }
        long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / Requests;

        Assert.True(perRequest < 100, $"{perRequest} bytes allocated per proxied gRPC-shaped request in steady state");
    }

    private static int RoundTrip(Socket client, byte[] receive)
    {
        client.Send(s_request);
        int total = 0;
        while (true)
        {
            int n = client.Receive(receive.AsSpan(total));
            Assert.True(n > 0, "the proxy closed the connection");
            total += n;
            if (receive.AsSpan(0, total).EndsWith(ResponseEnd))
            {
                return total;
            }
        }
    }

    private static void Serve(Socket listener)
    {
        while (true)
        {
            Socket connection;
            try
            {
                connection = listener.Accept();
            }
            catch (Exception)
            {
                return;
            }
            new Thread(() =>
            {
                byte[] buffer = new byte[64 * 1024];
                int filled = 0;
                try
                {
                    while (true)
                    {
                        int n = connection.Receive(buffer.AsSpan(filled));
                        if (n == 0)
                        {
                            return;
                        }
                        filled += n;
                        int end;
                        while ((end = buffer.AsSpan(0, filled).IndexOf(RequestEnd)) >= 0)
                        {
                            connection.Send(s_response);
                            int consumed = end + RequestEnd.Length;
                            buffer.AsSpan(consumed, filled - consumed).CopyTo(buffer);
                            filled -= consumed;
                        }
                    }
                }
                catch (Exception)
                {
                }
                finally
                {
                    connection.Dispose();
                }
            }) { IsBackground = true }.Start();
        }
    }
}
