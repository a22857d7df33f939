using System.IO.Pipelines;
using System.Net.Sockets;
using Proxy.Http;
using Proxy.Transport;

namespace Proxy.Upstream;

/// <summary>One keep-alive HTTP/1.1 connection to a destination, owned by one request at a time.</summary>
internal sealed class UpstreamConnection
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private int _disposed;

    public UpstreamConnection(Socket socket, DestinationState destination)
    {
        _socket = socket;
        Destination = destination;
        (_stream, Input, Output) = SocketPipes.Create(socket, upstream: true);
    }

    public DestinationState Destination { get; }
    public PipeReader Input { get; }
    public PipeWriter Output { get; }
    public ResponseHead Response { get; } = new();

    /// <summary>Requests completed on this connection; greater than zero means it came from the pool.</summary>
    public int RequestCount { get; set; }
    public long IdleSince { get; set; }

    /// <summary>
    /// True when the peer has closed (or sent unsolicited bytes on) an idle connection. A non-blocking poll,
    /// made only for connections idle for more than a second: peers close idle connections after seconds, and
    /// under load a connection is back in use within microseconds, where the poll would be a wasted syscall.
    /// </summary>
    public bool LooksDead()
    {
        if (Environment.TickCount64 - IdleSince < 1000)
        {
            return false;
        }
        try
        {
            return _socket.Poll(0, SelectMode.SelectRead) || !_socket.Connected;
        }
        catch (Exception)
        {
            return true;
        }
    }

    /// <summary>Forcibly closes the socket; pending reads and writes fail. Safe from any thread.</summary>
    public void Abort()
    {
        try
        {
            _socket.Close(0);
        }
        catch (Exception)
        {
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        Abort();
        // Completing a StreamPipeWriter flushes what is buffered; on an aborted socket that throws, and the
        // bytes are meant to be dropped anyway.
        try
        {
            Output.Complete();
        }
        catch (Exception)
        {
        }
        try
        {
            Input.Complete();
        }
        catch (Exception)
        {
        }
        _stream.Dispose();
        Destination.Pool?.OnConnectionClosed();
    }
}
