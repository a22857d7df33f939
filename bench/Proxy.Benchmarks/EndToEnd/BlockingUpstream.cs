using System.Net;
using System.Net.Sockets;

namespace Proxy.Benchmarks.EndToEnd;

/// <summary>
/// What the fixed-response upstreams share: a loopback listener on a free port and one blocking thread per accepted
/// connection (Nagle off), which <see cref="Serve"/> owns until it returns. Linked into tests/Proxy.FunctionalTests with them.
/// </summary>
internal abstract class BlockingUpstream : IDisposable
{
    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);

    protected BlockingUpstream(int backlog)
    {
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(backlog);
        Port = ((IPEndPoint)_listener.LocalEndPoint!).Port;
    }

    public int Port { get; }

    /// <summary>Starts accepting; called by the derived constructor once its own fields are set.</summary>
    protected void Start() => new Thread(AcceptLoop) { IsBackground = true }.Start();

    public void Dispose() => _listener.Dispose();

    /// <summary>Serves one connection on its own thread; disposes it.</summary>
    protected abstract void Serve(Socket connection);

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
}
