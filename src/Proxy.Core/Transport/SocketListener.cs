using System.Net;
using System.Net.Sockets;
using Proxy.Diagnostics;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Transport.Epoll;
using Proxy.Transport.Tls;

namespace Proxy.Transport;

/// <summary>
/// The accept loop of one listener. Each accepted socket gets an HTTP/1.1 connection whose processing starts inline
/// on the accepting thread until its first read goes pending. With <see cref="SocketPipes.UseEpoll"/> the epoll
/// engines accept (<see cref="EpollAcceptor"/>), so a connection runs on one thread from accept to close; otherwise
/// a loop over the runtime's AcceptAsync.
/// </summary>
internal sealed class SocketListener : IEpollAcceptHandler
{
    private readonly ProxyRuntime _runtime;
    private readonly Socket _socket;
    private Task? _acceptLoop;
    private EpollAcceptor? _acceptor;
    private volatile bool _stopping;
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
        // Linux copies TCP_NODELAY from the listening socket to every accepted one (the child socket is a clone of
        // the listener's): one setsockopt here instead of one per connection (SocketListenerTests checks it).
        _socket.NoDelay = true;
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
            if (value.DeferAccept != _model.DeferAccept && _acceptLoop is not null)
            {
                ApplyDeferAccept(value.DeferAccept); // a listening socket takes the change at once: no rebind
            }
            _model = value;
            EnsureCertificateCheck();
        }
    }

    /// <summary>TCP_DEFER_ACCEPT in seconds (1, as nginx's <c>deferred</c> and HAProxy's <c>defer-accept</c> set it) or 0 (off); Linux only.</summary>
    private void ApplyDeferAccept(bool on)
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }
        const int IPPROTO_TCP = 6, TCP_DEFER_ACCEPT = 9;
        Span<byte> seconds = stackalloc byte[sizeof(int)];
        BitConverter.TryWriteBytes(seconds, on ? 1 : 0);
        _socket.SetRawSocketOption(IPPROTO_TCP, TCP_DEFER_ACCEPT, seconds);
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
        if (Model.DeferAccept)
        {
            ApplyDeferAccept(true);
        }
        _socket.Listen(4096);
        EndPoint = (IPEndPoint)_socket.LocalEndPoint!;
        if (SocketPipes.UseEpoll)
        {
            _acceptor = new EpollAcceptor(_socket, this);
            _acceptLoop = Task.CompletedTask;
            _acceptor.Start();
        }
        else
        {
            _acceptLoop = AcceptLoopAsync();
        }
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
        _stopping = true;
        _certificateCheck?.Dispose();
        // Out of every epoll set before the close: Socket.Close would wait for the engines' references otherwise.
        _acceptor?.Stop();
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
            if (AtConnectionCap)
            {
                model.Metrics?.Refused(); // counts pauses, not connections: nobody is turned away
                while (AtConnectionCap)
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

            if (!OperatingSystem.IsLinux())
            {
                client.NoDelay = true; // inheritance from the listening socket is only checked on Linux
            }
            StartConnection(client);
        }
    }

    /// <summary>Starts a connection on an accepted socket, inline on the accepting thread.</summary>
    private void StartConnection(Socket client)
    {
        ListenerModel model = Model;
        model.Metrics?.Accepted();
        if (model.Tls is not null)
        {
            // The handshake (a key exchange and a signature, plus waiting for the client) runs on the thread
            // pool so that the next accept never waits for it.
            ThreadPool.UnsafeQueueUserWorkItem(static state => _ = TlsTransport.AcceptAsync(state.Runtime, state.Model, state.Client, state.Origin),
                (Runtime: _runtime, Model: model, Client: client, Origin: (object)this), preferLocal: false);
            return;
        }
        RunConnection(model, new SocketTransport(client));
    }

    /// <summary>Runs a plain connection (HTTP/1.1, or h2c by its preface) on its transport, inline up to its first wait.</summary>
    private void RunConnection(ListenerModel model, ClientTransport transport)
    {
        var connection = new Http1ServerConnection(_runtime, model, transport) { Origin = this };
        _ = connection.RunAsync();
    }

    /// <summary>
    /// At <c>server.max_connections</c> open client connections: stop accepting (like nginx and HAProxy) until one
    /// closes. The admin listener is exempt: an operator must be able to look inside a proxy that is full.
    /// </summary>
    private bool AtConnectionCap
        => Model.Handler != ListenerHandler.Admin && _runtime.Registry.Count >= _runtime.Current.Server.MaxConnections;

    bool IEpollAcceptHandler.CanAccept() => !AtConnectionCap;

    /// <summary>
    /// Plain TCP runs on the accepted fd itself (<see cref="EpollSocketTransport"/>); TLS wraps it in a runtime Socket
    /// first, as its handshake path and SslStream's callers expect.
    /// </summary>
    void IEpollAcceptHandler.OnAccepted(in AcceptedSocket socket)
    {
        ListenerModel model = Model;
        if (model.Tls is not null)
        {
            if (socket.ToSocket() is { } wrapped)
            {
                StartConnection(wrapped);
            }
            return;
        }
        model.Metrics?.Accepted();
        RunConnection(model, EpollSocketTransport.Rent(socket.Handle, socket.RemoteEndPoint));
    }

    void IEpollAcceptHandler.OnPaused(int errno)
    {
        if (errno == 0)
        {
            Model.Metrics?.Refused(); // counts pauses, not connections: nobody is turned away
        }
        else
        {
            ProxyLog.Error("accept_failed", ("listener", Model.Name), ("error", $"errno {errno}"));
        }
        _ = ResumeAsync(errno);
    }

    /// <summary>
    /// Off the engine thread: waits until the registry is below the cap (polled, like AcceptLoopAsync: this only runs
    /// while overloaded), or 50 ms after an accept error, then lets the engines accept again.
    /// </summary>
    private async Task ResumeAsync(int errno)
    {
        if (errno != 0)
        {
            await Task.Delay(50).ConfigureAwait(false);
        }
        while (!_stopping && AtConnectionCap)
        {
            await Task.Delay(5).ConfigureAwait(false);
        }
        _acceptor!.Resume();
    }
}
