using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http1;
using Proxy.Transport;

namespace Proxy.FunctionalTests;

/// <summary>
/// On the epoll engine a connection that ends cleanly hands its transport (stream, operations, pipes) to the next
/// connection accepted on the same engine thread. The next client must find it as new: its own peer address, no bytes
/// or flags of the last connection, and no late timeout, drain or abort aimed at the old connection reaching it.
/// </summary>
public sealed class TransportReuseTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Connections from three loopback addresses in turn, each closed after its request (by the proxy for
    /// <c>Connection: close</c>, by the client otherwise): every request reaches the upstream with its own client's
    /// address in X-Forwarded-For, though most of them ran on a transport another address used just before.
    /// </summary>
    [Fact]
    public async Task SequentialConnections_FromDifferentAddresses_EachForwardedWithItsOwnAddress()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Respond(static (request, _) =>
            Wire.Response(200, request.Header("x-forwarded-for") ?? "none")));
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        var transports = new HashSet<ClientTransport>(ReferenceEqualityComparer.Instance);

        string[] addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
        const int Connections = 30;
        for (int i = 0; i < Connections; i++)
        {
            string address = addresses[i % addresses.Length];
            bool proxyCloses = i % 2 == 0;
            await using RawClient client = await RawClient.ConnectAsync(proxy.Public, localAddress: IPAddress.Parse(address));
            transports.Add((await FindConnectionAsync(proxy, client.Socket)).Transport);
            await client.SendAsync(proxyCloses ? Wire.Get($"/r{i}", "example.test", "Connection: close") : Wire.Get($"/r{i}"));
            HttpMessage response = await client.ReadResponseAsync();
            Assert.Equal(200, response.Status);
            Assert.Equal(address, Encoding.ASCII.GetString(response.Body));
            if (!proxyCloses)
            {
                client.ShutdownSend();
            }
            await client.ReadToCloseAsync();
            await WaitForNoClientConnectionsAsync(proxy);
        }
        Assert.Equal(Connections, upstream.Requests.Length);
        // Each engine makes one transport and then reuses it (a connection that arrives before the last one's transport
        // was handed back gets a new one: hence at most half, not one per engine).
        Assert.True(transports.Count <= Connections / 2, $"{transports.Count} transports for {Connections} connections");
    }

    /// <summary>
    /// The first connection leaves bytes behind: the start of a pipelined request after a <c>Connection: close</c>
    /// one, which the proxy never reads. The next connection on the same transport starts with an empty buffer: its
    /// request is answered as sent (a leftover prefix would make it another request, or a 400).
    /// </summary>
    [Fact]
    public async Task ReusedTransport_AfterUnreadBytes_StartsWithAnEmptyBuffer()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        Http1ServerConnection first;
        await using (RawClient client = await RawClient.ConnectAsync(proxy.Public))
        {
            first = await FindConnectionAsync(proxy, client.Socket);
            await client.SendAsync(Wire.Get("/first", "example.test", "Connection: close") + "GET /lef");
            HttpMessage response = await client.ReadResponseAsync();
            Assert.Equal(200, response.Status);
            await client.ReadToCloseAsync();
        }
        await WaitForNoClientConnectionsAsync(proxy);

        (RawClient next, Http1ServerConnection second) = await ConnectOnTransportAsync(proxy, first.Transport);
        await using (next)
        {
            await next.SendAsync(Wire.Get("/second"));
            HttpMessage response = await next.ReadResponseAsync();
            Assert.Equal(200, response.Status);
            Assert.Equal("GET /second", Encoding.ASCII.GetString(response.Body));
            Assert.NotSame(first, second);
        }
        Assert.Equal(["/first", "/second"], upstream.Requests.Select(r => r.Target));
    }

    /// <summary>
    /// The old connection's heartbeat, drain and abort arrive late, while the next client uploads a body on the
    /// transport the old one used: they must do nothing. Without the guard they act on the transport, which is the
    /// new client's now: its connection is closed before the answer.
    /// </summary>
    [Fact]
    public async Task LateTimeoutDrainAndAbort_OfAClosedConnection_DoNotReachTheNextOne()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.CountBody());
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = upstream.Port });
        Http1ServerConnection first;
        await using (RawClient client = await RawClient.ConnectAsync(proxy.Public))
        {
            await client.SendAsync(Wire.Get("/first"));
            Assert.Equal(200, (await client.ReadResponseAsync()).Status);
            first = await FindConnectionAsync(proxy, client.Socket);
            client.ShutdownSend(); // a clean close: the proxy sees the end of the stream and closes too
            await client.ReadToCloseAsync();
        }
        await WaitForNoClientConnectionsAsync(proxy);

        (RawClient next, Http1ServerConnection second) = await ConnectOnTransportAsync(proxy, first.Transport);
        await using (next)
        {
            await next.SendAsync("POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 10\r\n\r\n01234");
            await upstream.WaitForConnectionAsync();
            await Task.Delay(200); // the body pump is reading the client's pipe now

            first.Heartbeat(long.MaxValue); // every deadline of the old connection is past
            first.BeginDrain();
            first.Abort();

            await Task.Delay(200);
            await next.SendAsync("56789");
            HttpMessage response = await next.ReadResponseAsync("POST");
            Assert.Equal(200, response.Status);
            Assert.StartsWith("10 ", Encoding.ASCII.GetString(response.Body));
            // Still open and still served: a drain would have closed it after the answer.
            await next.SendAsync(Wire.Get("/again"));
            Assert.Equal(200, (await next.ReadResponseAsync()).Status);
            Assert.NotSame(first, second);
        }
    }

    /// <summary>The proxy's HTTP/1.1 connection for <paramref name="client"/>'s socket (found by the client's port).</summary>
    private static async Task<Http1ServerConnection> FindConnectionAsync(TestProxy proxy, Socket client)
    {
        int port = ((IPEndPoint)client.LocalEndPoint!).Port;
        for (int i = 0; i < 200; i++)
        {
            foreach (var connection in proxy.Server.Runtime.Registry.Connections)
            {
                if (connection is Http1ServerConnection http && http.RemoteEndPoint?.Port == port)
                {
                    return http;
                }
            }
            await Task.Delay(10);
        }
        throw new TimeoutException($"no connection from port {port} in the registry");
    }

    /// <summary>
    /// Connects until the proxy runs the new connection on <paramref name="transport"/>: each engine thread keeps its
    /// own free list, so a connection accepted on another engine gets another transport (closed and tried again).
    /// Tried for a while, not a number of times: while the suite's other tests keep one engine busy, the other one
    /// accepts every connection (50 quick tries once all went to the wrong engine).
    /// </summary>
    private static async Task<(RawClient Client, Http1ServerConnection Connection)> ConnectOnTransportAsync(TestProxy proxy, ClientTransport transport)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int attempt = 0; clock.Elapsed < TestDefaults.Timeout; attempt++)
        {
            if (attempt >= 20)
            {
                await Task.Delay(20);
            }
            RawClient client = await RawClient.ConnectAsync(proxy.Public);
            Http1ServerConnection connection = await FindConnectionAsync(proxy, client.Socket);
            if (ReferenceEquals(connection.Transport, transport))
            {
                return (client, connection);
            }
            client.ShutdownSend();
            await client.ReadToCloseAsync();
            await client.DisposeAsync();
            await WaitForNoClientConnectionsAsync(proxy);
        }
        throw new InvalidOperationException($"no connection was accepted on the recycled transport in {TestDefaults.Timeout}");
    }

    /// <summary>Waits until the public listener has no connection left (the last one finished its close).</summary>
    private static async Task WaitForNoClientConnectionsAsync(TestProxy proxy)
    {
        for (int i = 0; i < 500; i++)
        {
            if (!proxy.Server.Runtime.Registry.Connections.OfType<Http1ServerConnection>().Any(c => c.Listener.Name == "public"))
            {
                return;
            }
            await Task.Delay(10);
        }
        throw new TimeoutException("a client connection is still open");
    }
}
