using System.Net;
using System.Net.Security;
using System.Net.Sockets;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// The client side of the round-trip benchmarks: one blocking keep-alive connection that sends a pre-encoded request
/// and reads one response with a 100-byte body into a reused buffer, so it allocates nothing per request and the
/// measured allocation is the proxy's. The first exchange learns the exact response length. Over TLS
/// (<paramref name="tlsHost"/>) the same exchange goes through a client SslStream's synchronous Read and Write, which
/// allocate nothing per call once the session is up.
/// </summary>
internal sealed class RoundTripClient : IDisposable
{
    private readonly Socket _socket;
    private readonly Stream _stream;
    private readonly byte[] _request;
    private readonly byte[] _receive = new byte[64 * 1024];
    private readonly int _responseLength;

    public RoundTripClient(EndPoint proxy, byte[] request, string? tlsHost = null)
    {
        _request = request;
        _socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        _socket.Connect(proxy);
        _stream = new NetworkStream(_socket, ownsSocket: false);
        if (tlsHost is not null)
        {
            var ssl = new SslStream(_stream);
            ssl.AuthenticateAsClient(new SslClientAuthenticationOptions
            {
                TargetHost = tlsHost,
                RemoteCertificateValidationCallback = static (_, _, _, _) => true,
                ApplicationProtocols = [SslApplicationProtocol.Http11],
            });
            _stream = ssl;
        }
        _stream.Write(_request);
        _responseLength = ReadResponse(0);
    }

    /// <summary>One request and its whole response; returns the response's length.</summary>
    public int RoundTrip()
    {
        _stream.Write(_request);
        return ReadResponse(_responseLength);
    }

    private int ReadResponse(int expected)
    {
        int total = 0;
        while (true)
        {
            int n = _stream.Read(_receive.AsSpan(total));
            if (n == 0)
            {
                throw new InvalidOperationException("proxy closed the connection");
            }
            total += n;
            if (expected > 0 ? total >= expected : HeadAndBodyComplete(total))
            {
                return total;
            }
        }
    }

    private bool HeadAndBodyComplete(int total)
    {
        int headEnd = _receive.AsSpan(0, total).IndexOf("\r\n\r\n"u8);
        return headEnd >= 0 && total >= headEnd + 4 + 100;
    }

    public void Dispose()
    {
        _stream.Dispose();
        _socket.Dispose();
    }
}
