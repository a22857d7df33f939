using System.Net;
using System.Net.Sockets;
using Proxy.Diagnostics;
using Proxy.Http1;
using Proxy.Model;

namespace Proxy.Transport;

/// <summary>
/// The accept loop of one listener. Each accepted socket gets TCP_NODELAY and an HTTP/1.1 connection whose
/// processing starts inline on the accepting thread until its first read goes pending.
/// </summary>
internal sealed class SocketListener
{
    private readonly ProxyRuntime _runtime;
    private readonly Socket _socket;
    private Task? _acceptLoop;

    public SocketListener(ProxyRuntime runtime, ListenerModel model)
    {
        _runtime = runtime;
        _model = model;
        _socket = new Socket(model.EndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        if (model.EndPoint.AddressFamily == AddressFamily.InterNetworkV6 && model.EndPoint.Address.Equals(IPAddress.IPv6Any))
        {
            _socket.DualMode = true;
        }
        _socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
    }

    private volatile ListenerModel _model;

    /// <summary>
    /// The listener's settings; a reload that keeps the listener's address swaps in the new model, which
    /// connections accepted from then on start with (existing ones re-read it by name on each request).
    /// </summary>
    public ListenerModel Model
    {
        get => _model;
        set => _model = value;
    }

    /// <summary>The bound address (kept after the socket closes, so a drained listener can still be described).</summary>
    public IPEndPoint EndPoint { get; private set; } = null!;

    public void Start()
    {
        _socket.Bind(Model.EndPoint);
        _socket.Listen(4096);
        EndPoint = (IPEndPoint)_socket.LocalEndPoint!;
        _acceptLoop = AcceptLoopAsync();
        ProxyLog.Info("listener_started", ("listener", Model.Name), ("address", EndPoint.ToString()), ("handler", Model.Handler.ToString().ToLowerInvariant()));
    }

    public async Task StopAsync()
    {
        try
        {
            _socket.Close();
        }
        catch (Exception)
        {
        }
        if (_acceptLoop is not null)
        {
            await _acceptLoop.ConfigureAwait(false);
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (true)
        {
            ListenerModel model = Model;
            // At the connection cap, stop accepting (like nginx and HAProxy): new connections wait in the kernel's
            // backlog until one closes, instead of being accepted and dropped. Polled: only runs while overloaded.
            // The admin listener is exempt: an operator must be able to look inside a proxy that is full.
            if (model.Handler != ListenerHandler.Admin && _runtime.Registry.Count >= _runtime.Current.Server.MaxConnections)
            {
                model.Metrics?.Refused(); // counts pauses, not connections: nobody is turned away
                while (_runtime.Registry.Count >= _runtime.Current.Server.MaxConnections)
                {
                    await Task.Delay(5).ConfigureAwait(false);
                }
            }

            Socket client;
            try
            {
                client = await _socket.AcceptAsync().ConfigureAwait(false);
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.OperationAborted or SocketError.Interrupted or SocketError.InvalidArgument)
            {
                return;
            }
            catch (SocketException e)
            {
                // EMFILE and friends: log, back off briefly, keep accepting.
                ProxyLog.Error("accept_failed", ("listener", Model.Name), ("error", e.SocketErrorCode.ToString()));
                await Task.Delay(50).ConfigureAwait(false);
                continue;
            }

            client.NoDelay = true;
            model = Model;
            model.Metrics?.Accepted();
            var connection = new Http1ServerConnection(_runtime, model, new SocketTransport(client)) { Origin = this };
            _ = connection.RunAsync();
        }
    }
}
