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
internal sealed class FixedResponseUpstream : BlockingUpstream
{
    private readonly byte[] _response;

    // Room for a pool's worth of connections opened at once (the tests' sixteen busy client connections).
    public FixedResponseUpstream(byte[] response) : base(backlog: 64)
    {
        _response = response;
        Start();
    }

    protected override void Serve(Socket connection)
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
