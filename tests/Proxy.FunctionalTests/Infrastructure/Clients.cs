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
        // Below the kernel's ephemeral range: a port the kernel hands out for "port 0" would soon be reused by
        // another test's listener or client socket running in parallel (seen: a "closed" port answered by another
        // test's upstream). Ports here are only ever taken by tests that ask for them explicitly.
        int low = EphemeralLow();
        for (int attempt = 0; attempt < 200; attempt++)
        {
            int port = Random.Shared.Next(Math.Max(1024, low - 12000), low);
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                socket.Bind(new IPEndPoint(IPAddress.Loopback, port));
                return port;
            }
            catch (SocketException)
            {
            }
        }
        throw new InvalidOperationException("no free port below the ephemeral range");
    }

    private static int EphemeralLow()
    {
        try
        {
            string range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range");
            return int.Parse(range.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[0], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return 32768;
        }
    }
}
