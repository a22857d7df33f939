using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Proxy.Diagnostics;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Transport.Epoll;
using Proxy.Transport.Tls;

namespace Proxy.Transport;

/// <summary>
/// A listener's settings in one config snapshot, with that snapshot: what a request on the listener is served with.
/// Swapped as one object, so a request never pairs one snapshot's route table with another's listener index.
/// </summary>
internal sealed class ListenerSnapshot(ListenerModel model, ProxySnapshot snapshot)
{
    public ListenerModel Model { get; } = model;
    public ProxySnapshot Snapshot { get; } = snapshot;
}

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
    /// <summary>Set once, by the first <see cref="StopAsync"/>: from then on connections close after their current request.</summary>
    private volatile bool _retired;
    /// <summary>Set when the socket is about to close: the pause loop (<see cref="ResumeAsync"/>) gives up.</summary>
    private volatile bool _stopping;
    /// <summary>Checks the TLS certificate files for changes (stat only) once per <see cref="CertificateCheckInterval"/>.</summary>
    private Timer? _certificateCheck;
    /// <summary>Written by the reload (under its gate), read by every accept and every request.</summary>
    private volatile ListenerSnapshot _serving;

    /// <summary>How often TLS listeners look at their certificate files' modification times.</summary>
    internal static TimeSpan CertificateCheckInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How long a closing listener keeps accepting after it stopped taking new handshakes: those already under way (SYN
    /// received, final ACK not yet) complete within a round trip and join the accept queue, to be served, not reset.
    /// </summary>
    private const int HandshakeGraceMilliseconds = 50;

    /// <summary>The longest a closing listener waits for its accept queue to empty (at the connection cap it cannot).</summary>
    private const int AcceptQueueDrainMilliseconds = 1000;

    public SocketListener(ProxyRuntime runtime, ListenerModel model, ProxySnapshot snapshot)
    {
        _runtime = runtime;
        _serving = new ListenerSnapshot(model, snapshot);
        _socket = new Socket(model.EndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        if (model.EndPoint.AddressFamily == AddressFamily.InterNetworkV6 && model.EndPoint.Address.Equals(IPAddress.IPv6Any))
        {
            _socket.DualMode = true;
        }
        SetReuseAddress(_socket);
        // Linux copies TCP_NODELAY from the listening socket to every accepted one (the child socket is a clone of
        // the listener's): one setsockopt here instead of one per connection (SocketListenerTests checks it).
        _socket.NoDelay = true;
    }

    /// <summary>
    /// SO_REUSEADDR alone, so that a restarted proxy binds its port past the previous process's TIME_WAIT connections.
    /// Not SocketOptionName.ReuseAddress: on Linux and macOS the runtime sets SO_REUSEPORT with it, and then a second
    /// process (or a second listener of this one) binds the same address without an error and the kernel splits the
    /// connections between them, where a port in use must fail (exit code 1; Kestrel leaves the option alone for the
    /// same reason). Windows needs neither: TIME_WAIT does not block a bind there, and its SO_REUSEADDR lets another
    /// socket take the port.
    /// </summary>
    private static void SetReuseAddress(Socket socket)
    {
        int level, name;
        if (OperatingSystem.IsLinux())
        {
            (level, name) = (1, 2); // SOL_SOCKET, SO_REUSEADDR (<asm-generic/socket.h>)
        }
        else if (OperatingSystem.IsMacOS() || OperatingSystem.IsFreeBSD())
        {
            (level, name) = (0xffff, 4); // SOL_SOCKET, SO_REUSEADDR (<sys/socket.h>)
        }
        else
        {
            return;
        }
        Span<byte> on = stackalloc byte[sizeof(int)];
        BitConverter.TryWriteBytes(on, 1);
        socket.SetRawSocketOption(level, name, on);
    }

    /// <summary>The listener's settings (those of <see cref="Serving"/>).</summary>
    public ListenerModel Model => _serving.Model;

    /// <summary>
    /// What this listener's connections serve their next request with, and what its accepts start a connection with.
    /// A reload that keeps the listener's address calls <see cref="Serve"/> once the new snapshot is published; a
    /// removed listener keeps the pair of the last snapshot that had it, so the connections it still accepts while it
    /// closes are routed with the routes they were sent for.
    /// </summary>
    public ListenerSnapshot Serving => _serving;

    /// <summary>True once the listener stops accepting (removed by a reload, a drain, a stop): its connections close after their current request.</summary>
    public bool Retired => _retired;

    /// <summary>A reload kept this listener's address: its requests use <paramref name="model"/> and <paramref name="snapshot"/> from now on.</summary>
    public void Serve(ListenerModel model, ProxySnapshot snapshot)
    {
        if (model.DeferAccept != Model.DeferAccept)
        {
            ApplyDeferAccept(model.DeferAccept); // a listening socket takes the change at once: no rebind
        }
        if (model.QuickAck != Model.QuickAck)
        {
            ApplyQuickAck(model.QuickAck);
        }
        _serving = new ListenerSnapshot(model, snapshot);
        EnsureCertificateCheck();
    }

    /// <summary>TCP_DEFER_ACCEPT in seconds (1, as nginx's <c>deferred</c> and HAProxy's <c>defer-accept</c> set it) or 0 (off); Linux only.</summary>
    private void ApplyDeferAccept(bool on) => LinuxTcp.Set(_socket, LinuxTcp.DeferAccept, on ? 1 : 0);

    /// <summary>
    /// TCP_QUICKACK on the listening socket, which the sockets it accepts inherit (Linux only; see
    /// <see cref="ListenerModel.QuickAck"/>). Off: a new connection is in delayed-ACK mode from its first request, so
    /// the answer carries the ACK; the kernel leaves that mode by itself once its delayed-ACK timer has fired.
    /// </summary>
    private void ApplyQuickAck(bool on) => LinuxTcp.Set(_socket, LinuxTcp.QuickAck, on ? 1 : 0);

    /// <summary>Starts the certificate check once the listener serves TLS (at start, or when a reload turns TLS on).</summary>
    private void EnsureCertificateCheck()
    {
        if (Model.Tls is not null && _certificateCheck is null && _acceptLoop is not null)
        {
            _certificateCheck = new Timer(static state => ((SocketListener)state!).CheckCertificates(), this, CertificateCheckInterval, CertificateCheckInterval);
        }
    }

    /// <summary>The bound address (kept after the socket closes, so a drained listener can still be described).</summary>
    public IPEndPoint EndPoint { get; private set; } = null!;

    /// <summary>
    /// Binds and listens, without accepting yet: the kernel completes handshakes and queues the connections until
    /// <see cref="StartAccepting"/>. Throws when the address is in use.
    /// </summary>
    public void Bind()
    {
        _socket.Bind(Model.EndPoint);
        if (Model.DeferAccept)
        {
            ApplyDeferAccept(true);
        }
        _socket.Listen(4096);
        ApplyQuickAck(Model.QuickAck); // after listen(), which clears the socket's ACK state
        EndPoint = (IPEndPoint)_socket.LocalEndPoint!;
    }

    public void StartAccepting()
    {
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

    /// <summary>
    /// Stops accepting and closes the socket. Closing a listening socket resets every connection still in its accept
    /// queue, and each of those clients was already told it is connected; so, with <paramref name="acceptQueued"/> (a
    /// reload, a drain, a graceful stop), new handshakes are refused first (<see cref="TryRefuseNewHandshakes"/>) and
    /// the listener goes on accepting until its queue is empty, then closes. Those connections are served, with
    /// connection: close (<see cref="Retired"/>). Without it (a stop with no time left) the socket closes at once.
    /// </summary>
    public Task StopAsync(bool acceptQueued = true)
    {
        // Once: a drain stops the listeners, and the stop that follows it (or races it) waits for the same close.
        lock (_stopLock)
        {
            return _stop ??= StopCoreAsync(acceptQueued);
        }
    }

    private readonly Lock _stopLock = new();
    private Task? _stop;

    private async Task StopCoreAsync(bool acceptQueued)
    {
        _retired = true;
        _certificateCheck?.Dispose();
        if (acceptQueued && _acceptLoop is not null)
        {
            await AcceptQueuedAsync().ConfigureAwait(false);
        }
        _stopping = true;
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

    /// <summary>
    /// Lets the accept loop take what is in the accept queue, with no new handshake joining it: until the queue is
    /// empty and <see cref="HandshakeGraceMilliseconds"/> passed. Linux only (elsewhere the socket closes at once, as before).
    /// </summary>
    private async Task AcceptQueuedAsync()
    {
        if (!OperatingSystem.IsLinux() || !TryRefuseNewHandshakes())
        {
            return;
        }
        long started = Environment.TickCount64;
        while (true)
        {
            long waited = Environment.TickCount64 - started;
            if (waited >= AcceptQueueDrainMilliseconds || (waited >= HandshakeGraceMilliseconds && AcceptQueueLength() == 0)
                || AtConnectionCap)
            {
                return;
            }
            await Task.Delay(5).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Attaches a classic BPF socket filter (SO_ATTACH_FILTER) that drops every segment with SYN set: no handshake
    /// starts any more, while those under way complete (their final ACK passes) and join the accept queue. A client
    /// whose SYN is dropped retransmits it a second later, finds the port closed and is refused: it never believed it
    /// was connected. A socket filter on a TCP socket sees the TCP header at offset 0; the flags are its byte 13
    /// (RFC 9293 section 3.1), SYN is 0x02.
    /// </summary>
    private unsafe bool TryRefuseNewHandshakes()
    {
        // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; } (<linux/filter.h>), one ulong each on a little-endian host.
        static ulong Instruction(ushort code, byte jt, byte jf, uint k) => code | ((ulong)jt << 16) | ((ulong)jf << 24) | ((ulong)k << 32);
        if (!BitConverter.IsLittleEndian)
        {
            return false;
        }
        ulong* program = stackalloc ulong[4];
        program[0] = Instruction(0x30, 0, 0, 13);            // ldb [13]               BPF_LD | BPF_B | BPF_ABS
        program[1] = Instruction(0x45, 0, 1, 0x02);          // jset #SYN, drop, keep  BPF_JMP | BPF_JSET | BPF_K
        program[2] = Instruction(0x06, 0, 0, 0);             // drop: ret #0           BPF_RET | BPF_K
        program[3] = Instruction(0x06, 0, 0, uint.MaxValue); // keep: ret #-1 (the whole segment)
        // struct sock_fprog { u16 len; struct sock_filter* filter; }: the pointer aligned after the length. The kernel
        // copies the program during the call.
        Span<byte> fprog = stackalloc byte[2 * IntPtr.Size];
        fprog.Clear();
        BitConverter.TryWriteBytes(fprog, (ushort)4);
        System.Runtime.InteropServices.MemoryMarshal.Write(fprog[IntPtr.Size..], (nint)program);
        const int SOL_SOCKET = 1, SO_ATTACH_FILTER = 26;
        try
        {
            _socket.SetRawSocketOption(SOL_SOCKET, SO_ATTACH_FILTER, fprog);
            return true;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return false;
        }
    }

    /// <summary>Connections waiting in the accept queue: TCP_INFO of a listening socket reports them as tcpi_unacked (offset 24 of struct tcp_info).</summary>
    private int AcceptQueueLength()
    {
        Span<byte> info = stackalloc byte[32];
        try
        {
            int length = _socket.GetRawSocketOption(LinuxTcp.Level, LinuxTcp.Info, info);
            return length >= 28 ? BitConverter.ToInt32(info[24..]) : 0;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return 0;
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

            if (AtAdminCap)
            {
                RefuseAdmin();
                client.Dispose();
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
                (Runtime: _runtime, Model: model, Client: client, Origin: this), preferLocal: false);
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
        => Model.Handler != ListenerHandler.Admin && _runtime.Registry.DataPlaneCount >= _runtime.Current.Server.MaxConnections;

    /// <summary>
    /// An admin listener with <see cref="AdminModel.MaxConnections"/> open: the connection just accepted is closed
    /// at once (pausing instead would let idle admin clients lock the operator out until they leave).
    /// </summary>
    private bool AtAdminCap
        => Model.Handler == ListenerHandler.Admin && _runtime.Registry.AdminCount >= AdminModel.MaxConnections;

    /// <summary>Counted as the admin listener's <c>proxy_accept_paused_total</c>; logged at debug only, a flood must not flood the log.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RefuseAdmin()
    {
        Model.Metrics?.Refused();
        ProxyLog.Write(ProxyLogLevel.Debug, "admin_connection_refused", ("max_connections", AdminModel.MaxConnections));
    }

    bool IEpollAcceptHandler.CanAccept() => !AtConnectionCap;

    /// <summary>
    /// Plain TCP runs on the accepted fd itself (<see cref="EpollSocketTransport"/>); TLS wraps it in a runtime Socket
    /// first, as its handshake path and SslStream's callers expect.
    /// </summary>
    void IEpollAcceptHandler.OnAccepted(in AcceptedSocket socket)
    {
        ListenerModel model = Model;
        if (AtAdminCap)
        {
            RefuseAdmin();
            socket.Handle.Dispose();
            return;
        }
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
