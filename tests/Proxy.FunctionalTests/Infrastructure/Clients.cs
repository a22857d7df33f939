using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>Real clients, configured so nothing from the environment (proxies) gets in the way.</summary>
internal static class Clients
{
    public static HttpClient CreateHttpClient() =>
        new(new SocketsHttpHandler { UseProxy = false, AllowAutoRedirect = false, ConnectTimeout = TestDefaults.Timeout })
        {
            Timeout = TestDefaults.Timeout,
            DefaultRequestVersion = HttpVersion.Version11,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

    public static ClientWebSocket CreateWebSocket()
    {
        var ws = new ClientWebSocket();
        // Null means no proxy for ClientWebSocket (the default is the environment's proxy).
        ws.Options.Proxy = null;
        return ws;
    }

    /// <summary>Receives one whole message (all its frames).</summary>
    public static async Task<(WebSocketMessageType Type, byte[] Payload)> ReceiveMessageAsync(WebSocket ws, CancellationToken cancellationToken)
    {
        var buffer = new byte[64 * 1024];
        using var message = new MemoryStream();
        while (true)
        {
            var result = await ws.ReceiveAsync(buffer, cancellationToken);
            message.Write(buffer, 0, result.Count);
            if (result.EndOfMessage)
            {
                return (result.MessageType, message.ToArray());
            }
        }
    }
}

internal static class Ports
{
    /// <summary>A loopback port that was just free: bound, then released, so connecting to it is refused.</summary>
    public static int ClosedPort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }
}
