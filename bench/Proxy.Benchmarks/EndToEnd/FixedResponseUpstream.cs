using System.Net;
using System.Net.Sockets;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// The upstream of the round-trip benchmarks and of the functional tests' steady-state allocation tests (linked into
/// tests/Proxy.FunctionalTests as Infrastructure/FixedResponseUpstream.cs, so both measure against one server):
/// answers every request head with the same pre-encoded response, one blocking thread per connection with its own
/// buffer (health probes open their own). It allocates nothing per request, so the measured allocation is the proxy's.
/// A request body is not parsed: it stays in the buffer until the next head's CRLFCRLF, so a body must not contain
/// CRLFCRLF, and one body plus one head must fit the 16 KiB buffer.
/// </summary>
internal sealed class FixedResponseUpstream : IDisposable
{
    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    private readonly byte[] _response;

    public FixedResponseUpstream(byte[] response)
    {
        _response = response;
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        // Room for a pool's worth of connections opened at once (the tests' sixteen busy client connections).
        _listener.Listen(64);
        Port = ((IPEndPoint)_listener.LocalEndPoint!).Port;
        new Thread(AcceptLoop) { IsBackground = true }.Start();
    }

    public int Port { get; }

    public void Dispose() => _listener.Dispose();

    private void AcceptLoop()
    {
        while (true)
        {
            Socket connection;
            try
            {
                connection = _listener.Accept();
            }
            catch (Exception)
            {
                return;
            }
            connection.NoDelay = true;
            new Thread(() => Serve(connection)) { IsBackground = true }.Start();
        }
    }

    private void Serve(Socket connection)
    {
        var buffer = new byte[16 * 1024];
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
                while ((end = buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) >= 0)
                {
                    connection.Send(_response);
                    int rest = filled - (end + 4);
                    buffer.AsSpan(end + 4, rest).CopyTo(buffer);
                    filled = rest;
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
    }
}
