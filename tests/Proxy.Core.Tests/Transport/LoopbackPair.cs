using System.Net;
using System.Net.Sockets;

namespace Proxy.Core.Tests.Transport;

internal static class LoopbackPair
{
    /// <summary>A connected TCP pair on loopback, Nagle off on both ends; the client side is a plain blocking Socket.</summary>
    public static (Socket Server, Socket Client) Create()
    {
        using var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var client = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.Connect(listener.LocalEndPoint!);
        Socket server = listener.Accept();
        server.NoDelay = true;
        return (server, client);
    }

    /// <summary>A payload whose bytes depend on their offset, so a byte lost, repeated or reordered shows.</summary>
    public static byte[] Payload(int length)
    {
        var bytes = new byte[length];
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i * 31 + (i >> 8));
        }
        return bytes;
    }
}
