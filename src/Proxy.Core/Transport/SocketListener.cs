using System.Net;
using System.Net.Sockets;
using Proxy.Diagnostics;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Transport.Tls;

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
    /// <summary>Checks the TLS certificate files for changes (stat only) once per <see cref="CertificateCheckInterval"/>.</summary>
    private Timer? _certificateCheck;

    /// <summary>How often TLS listeners look at their certificate files' modification times.</summary>
    internal static TimeSpan CertificateCheckInterval { get; set; } = TimeSpan.FromSeconds(1);

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
        set
        {
            _model = value;
            EnsureCertificateCheck();
        }
    }

    /// <summary>Starts the certificate check once the listener serves TLS (at start, or when a reload turns TLS on).</summary>
    private void EnsureCertificateCheck()
    {
        if (_model.Tls is not null && _certificateCheck is null && _acceptLoop is not null)
        {
            _certificateCheck = new Timer(static state => ((SocketListener)state!).CheckCertificates(), this, CertificateCheckInterval, CertificateCheckInterval);
        }
    }

    /// <summary>The bound address (kept after the socket closes, so a drained listener can still be described).</summary>
    public IPEndPoint EndPoint { get; private set; } = null!;

    public void Start()
    {
        _socket.Bind(Model.EndPoint);
        _socket.Listen(4096);
        EndPoint = (IPEndPoint)_socket.LocalEndPoint!;
        _acceptLoop = AcceptLoopAsync();
        EnsureCertificateCheck();
        ProxyLog.Info("listener_started", ("listener", Model.Name), ("address", EndPoint.ToString()), ("handler", Model.Handler.ToString().ToLowerInvariant()));
    }

    private void CheckCertificates()
    {
        try
        {
            Model.Tls?.RefreshIfChanged();
        }
        catch (Exception e)
        {
            ProxyLog.Error("tls_certificate_reload_failed", ("listener", Model.Name), ("error", e.ToString()));
        }
    }

    public async Task StopAsync()
    {
        _certificateCheck?.Dispose();
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
            if (model.Tls is not null)
            {
                // The handshake (a key exchange and a signature, plus waiting for the client) runs on the thread
                // pool so that the next accept never waits for it.
                ThreadPool.UnsafeQueueUserWorkItem(static state => _ = TlsTransport.AcceptAsync(state.Runtime, state.Model, state.Client, state.Origin),
                    (Runtime: _runtime, Model: model, Client: client, Origin: (object)this), preferLocal: false);
                continue;
            }
            var connection = new Http1ServerConnection(_runtime, model, new SocketTransport(client)) { Origin = this };
            _ = connection.RunAsync();
        }
    }
}
