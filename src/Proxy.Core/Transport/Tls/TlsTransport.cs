using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Diagnostics.AccessLog;
using Proxy.Http1;
using Proxy.Http2.Server;
using Proxy.Model;

namespace Proxy.Transport.Tls;

/// <summary>
/// TLS over an accepted socket: pipes over an <see cref="SslStream"/> (same pipe options as plain TCP; SslStream
/// supports zero-byte reads, so an idle TLS connection holds no pipe buffer either). Built only after a completed
/// handshake, so everything here describes a verified session.
/// </summary>
internal sealed class TlsTransport : ClientTransport
{
    private readonly Socket _socket;
    private readonly Stream _network;
    private readonly SslStream _ssl;

    private TlsTransport(Socket socket, Stream network, SslStream ssl, ClientCertificateMode clientCertificates)
        : base(socket.RemoteEndPoint as IPEndPoint)
    {
        _socket = socket;
        _network = network;
        _ssl = ssl;
        (Input, Output) = SocketPipes.CreateTls(ssl, network);
        NegotiatedProtocol = ssl.NegotiatedApplicationProtocol;
        ServerName = ssl.TargetHostName;
        // Only a certificate that passed validation gets here (the validation callback refuses the others), so the
        // subject is a verified one. Read once per connection: requests reuse the string and its bytes.
        if (ssl.RemoteCertificate is { } certificate)
        {
            string subject = certificate.Subject;
            ClientCertificateSubject = subject;
            ClientCertificateSubjectBytes = FieldValue(subject);
            certificate.Dispose();
        }
        else
        {
            // The validation callback lets a client without a certificate finish the handshake in both modes that
            // ask for one; under require its requests are answered 400 instead of served.
            ClientCertificateMissing = clientCertificates == ClientCertificateMode.Require;
        }
    }

    public override PipeReader Input { get; }
    public override PipeWriter Output { get; }
    public override bool IsSecure => true;

    /// <summary>The protocol ALPN selected (empty when the client offered none).</summary>
    public SslApplicationProtocol NegotiatedProtocol { get; }

    /// <summary>The SNI name the client sent ("" when none).</summary>
    public string ServerName { get; }

    public override string? ClientCertificateSubject { get; }
    public override byte[]? ClientCertificateSubjectBytes { get; }

    /// <summary>Sends close_notify, then FIN, while the connection keeps reading (the lingering close).</summary>
    public override void ShutdownSend() => _ = ShutdownSendAsync();

    private async Task ShutdownSendAsync()
    {
        try
        {
            await _ssl.ShutdownAsync().ConfigureAwait(false);
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception)
        {
            // The peer is gone or the connection was disposed meanwhile: nothing left to say.
        }
    }

    public override void Abort() => SocketPipes.Abort(_socket, _network);

    /// <summary>At the TCP level: a client's close_notify waits unread ahead of its FIN, which is what poll reports.</summary>
    public override bool PeerHungUp() => HasHungUp(_socket.SafeHandle);

    public override bool PeerReset() => HasReset(_socket.SafeHandle);

    public override void Dispose()
    {
        try
        {
            _ssl.Dispose();
        }
        catch (Exception)
        {
        }
        SocketPipes.Close(_socket, _network);
    }

    /// <summary>
    /// Runs the handshake for an accepted socket and then the connection. Called on the thread pool, never on the
    /// accept loop: a slow or hostile client hello only costs its own connection, bounded by the handshake timeout.
    /// Every failure (garbage, timeout, unknown CA) ends in a clean close and one log line, rate-limited, never an
    /// exception out of here. A missing client certificate under <c>require</c> is not one: the connection runs, and
    /// answers each request 400 (<see cref="ClientTransport.ClientCertificateMissing"/>).
    /// </summary>
    public static async Task AcceptAsync(ProxyRuntime runtime, ListenerModel model, Socket socket, SocketListener origin)
    {
        // limits.max_connections_per_ip counts every accepted connection once, whatever ALPN makes of it (an HTTP/2
        // connection never passes through the HTTP/1.1 entry that counts cleartext ones), and is checked before the
        // handshake: a client over its cap costs no key exchange.
        int cap = model.Handler == ListenerHandler.Admin ? 0 : model.Limits.MaxConnectionsPerIp;
        if (cap <= 0)
        {
            await HandshakeAndRunAsync(runtime, model, socket, origin, counted: false).ConfigureAwait(false);
            return;
        }
        IPAddress address = (socket.RemoteEndPoint as IPEndPoint)?.Address ?? IPAddress.None;
        ClientIpSlots slots = ClientIpLimiter.Slots(address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address);
        if (!runtime.ConnectionsPerIp.TryEnter(slots, cap))
        {
            ProxyLog.Write(ProxyLogLevel.Debug, "client_connection_refused", ("client", ProxyLog.Format(socket.RemoteEndPoint as IPEndPoint)),
                ("details", "client_ip_connection_limit"));
            try
            {
                socket.Shutdown(SocketShutdown.Both);
            }
            catch (Exception)
            {
            }
            socket.Dispose();
            return;
        }
        try
        {
            await HandshakeAndRunAsync(runtime, model, socket, origin, counted: true).ConfigureAwait(false);
        }
        finally
        {
            runtime.ConnectionsPerIp.Exit(slots);
        }
    }

    private static async Task HandshakeAndRunAsync(ProxyRuntime runtime, ListenerModel model, Socket socket, SocketListener origin, bool counted)
    {
        TlsListenerModel tls = model.Tls!;
        Stream network = SocketPipes.OpenStream(socket);
        var ssl = new SslStream(network, leaveInnerStreamOpen: true);
        TlsTransport transport;
        try
        {
            using (var timeout = new CancellationTokenSource(tls.HandshakeTimeout))
            {
                if (await PlainHttpArrivedAsync(network, socket, timeout.Token).ConfigureAwait(false))
                {
                    await AnswerPlainHttpAsync(runtime, model, socket, network).ConfigureAwait(false);
                    ssl.Dispose();
                    return;
                }
                await ssl.AuthenticateAsServerAsync(s_selectOptions, tls, timeout.Token).ConfigureAwait(false);
            }
            transport = new TlsTransport(socket, network, ssl, tls.ClientCertificates) { ClientIpCounted = counted };
        }
        catch (Exception e)
        {
            tls.CountHandshakeFailure();
            TlsLog.HandshakeFailed(tls.ListenerName, socket, SafeServerName(ssl), e);
            Close(socket, network, ssl);
            return;
        }

        // In TLS 1.3 the server's handshake ends before the client has checked our certificate (RFC 8446 section
        // 4.4.4: its Finished comes after ours); a client that refuses it (unknown name, expired, untrusted) answers
        // with an alert or just closes. Waiting here for the first bytes (what the connection does next anyway; the
        // pipe reads with a zero-byte read, so no buffer is held) turns that into a handshake failure with its log line
        // instead of a silent close. Nothing is consumed: the connection reads the same bytes again.
        try
        {
            using var firstBytes = new CancellationTokenSource(model.Limits.HeaderTimeout);
            ReadResult first = await transport.Input.ReadAsync(firstBytes.Token).ConfigureAwait(false);
            transport.Input.AdvanceTo(first.Buffer.Start);
            if (first.IsCompleted && first.Buffer.IsEmpty)
            {
                throw new IOException("the client closed the connection right after the handshake (did it refuse the certificate?)");
            }
        }
        catch (OperationCanceledException)
        {
            // Silence until the header timeout: the same quiet close as an idle cleartext client.
            transport.Release();
            return;
        }
        catch (Exception e)
        {
            tls.CountHandshakeFailure();
            TlsLog.HandshakeFailed(tls.ListenerName, socket, transport.ServerName, e);
            transport.Release();
            return;
        }

        if (transport.NegotiatedProtocol == SslApplicationProtocol.Http2)
        {
            await new Http2ServerConnection(runtime, model, transport) { Origin = origin }.RunAsync().ConfigureAwait(false);
            return;
        }
        var connection = new Http1ServerConnection(runtime, model, transport) { Origin = origin };
        await connection.RunAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Waits for the client's first bytes (a zero-byte read: nothing is consumed, no buffer held) and peeks at the first
    /// one. A TLS connection starts with a handshake record (content type 0x16, RFC 8446 section 5.1); an upper-case
    /// letter is the first byte of an HTTP method: plain HTTP sent to the TLS port. One peek per connection, before
    /// the handshake's own reads.
    /// </summary>
    private static async ValueTask<bool> PlainHttpArrivedAsync(Stream network, Socket socket, CancellationToken cancellationToken)
    {
        await network.ReadAsync(Memory<byte>.Empty, cancellationToken).ConfigureAwait(false);
        return FirstByteIsUpperCaseLetter(socket);
    }

    private static bool FirstByteIsUpperCaseLetter(Socket socket)
    {
        Span<byte> first = stackalloc byte[1];
        try
        {
            int received = socket.Receive(first, SocketFlags.Peek, out SocketError error);
            return error == SocketError.Success && received == 1 && first[0] is >= (byte)'A' and <= (byte)'Z';
        }
        catch (Exception)
        {
            return false; // the handshake then fails with its usual log line
        }
    }

    private static readonly byte[] s_plainHttpAnswer = PlainHttpAnswer("A plain HTTP request was sent to this TLS port: use https://.\n");

    private static byte[] PlainHttpAnswer(string body) => Encoding.ASCII.GetBytes(
        $"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {body.Length}\r\nconnection: close\r\n\r\n{body}");

    /// <summary>The details code of the plain-HTTP answer (metrics, access log), as the log line's reason.</summary>
    internal const string PlainHttpDetails = "plain_http_request";

    /// <summary>
    /// Plain HTTP on a TLS port: a short 400 saying to use https (nginx: "The plain HTTP request was sent to HTTPS
    /// port") instead of a reset, one rate-limited log line, then FIN. What the client sent is read and dropped for a
    /// moment first, so the close does not turn into a reset that destroys the answer. It is observed like a head the
    /// parser refuses: counted before the answer goes out, its access-log line written once the drain has counted the
    /// bytes read.
    /// </summary>
    private static async Task AnswerPlainHttpAsync(ProxyRuntime runtime, ListenerModel model, Socket socket, Stream network)
    {
        TlsListenerModel tls = model.Tls!;
        tls.CountHandshakeFailure();
        TlsLog.PlainHttpRequest(tls.ListenerName, socket);
        IPAddress? client = ClientAddressOf(socket);
        long startUtcTicks = DateTime.UtcNow.Ticks;
        CountPlainHttp(runtime, model, client);
        long drained = 0;
        byte[] scratch = ArrayPool<byte>.Shared.Rent(4096);
        try
        {
            using var linger = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await network.WriteAsync(s_plainHttpAnswer, linger.Token).ConfigureAwait(false);
            socket.Shutdown(SocketShutdown.Send);
            while (drained < 64 * 1024)
            {
                int read = await network.ReadAsync(scratch, linger.Token).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }
                drained += read;
            }
        }
        catch (Exception)
        {
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
        LogPlainHttp(runtime, model, client, startUtcTicks, drained);
        SocketPipes.Close(socket, network);
    }

    /// <summary>The peer's address as the connections report it (IPv4-mapped made IPv4); null once the socket is gone.</summary>
    private static IPAddress? ClientAddressOf(Socket socket)
    {
        try
        {
            IPAddress? address = (socket.RemoteEndPoint as IPEndPoint)?.Address;
            return address is { IsIPv4MappedToIPv6: true } ? address.MapToIPv4() : address;
        }
        catch (Exception)
        {
            return null;
        }
    }

    /// <summary>
    /// The plain-HTTP 400 in the metrics and insights, as <c>Http1ServerConnection.RejectHeadAsync</c> counts a head the
    /// parser refuses: <c>proxy_local_replies_total{details="plain_http_request"}</c>, a request under the unrouted labels
    /// with method OTHER (no request line was parsed), and the insights' status codes and clients.
    /// </summary>
    private static void CountPlainHttp(ProxyRuntime runtime, ListenerModel model, IPAddress? client)
    {
        runtime.Metrics.LocalReply(model, 400, PlainHttpDetails);
        runtime.Metrics.HeadRejected(model, Http.HttpMethod.Custom, 400);
        if (model.Handler == ListenerHandler.Proxy && client is not null && runtime.Current.Observability.Insights.Enabled)
        {
            runtime.Observability.Insights.Record(client, 400, 0);
        }
    }

    /// <summary>
    /// The access-log line of a plain-HTTP 400, as for a refused head whose request line was not parsed: no route, no
    /// method, an empty path, the details code as <c>policy</c>, duration 0; no request id (the answer carries none).
    /// </summary>
    private static void LogPlainHttp(ProxyRuntime runtime, ListenerModel model, IPAddress? client, long startUtcTicks, long bytesIn)
    {
        if (model.Handler != ListenerHandler.Proxy || runtime.Current.Observability.AccessLog is null
            || runtime.Observability.AccessLog is not { } log || !log.TryClaim(out long position))
        {
            return;
        }
        log.RecordAt(position).SetRefused(startUtcTicks, bytesIn, model.Name, PlainHttpDetails, method: null, client, 400,
            path: default, requestId: default);
        log.Publish(position);
    }

    /// <summary>Completes both pipes and closes (before any connection owned them).</summary>
    private void Release()
    {
        try
        {
            Input.Complete();
            Output.Complete();
        }
        catch (Exception)
        {
        }
        Dispose();
    }

    private static void Close(Socket socket, Stream network, SslStream ssl)
    {
        try
        {
            ssl.Dispose();
            SocketPipes.Abort(socket, network);
        }
        catch (Exception)
        {
        }
    }

    private static readonly ServerOptionsSelectionCallback s_selectOptions =
        static (_, hello, state, _) => ValueTask.FromResult(((TlsListenerModel)state!).Select(hello.ServerName));

    private static string SafeServerName(SslStream ssl)
    {
        try
        {
            return ssl.TargetHostName;
        }
        catch (Exception)
        {
            return "";
        }
    }

    /// <summary>The subject as a field value: control characters would break the header block, so they become '?'.</summary>
    private static byte[] FieldValue(string subject)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(subject);
        for (int i = 0; i < bytes.Length; i++)
        {
            if (bytes[i] < 0x20 || bytes[i] == 0x7F)
            {
                bytes[i] = (byte)'?';
            }
        }
        return bytes;
    }
}

/// <summary>
/// Log lines for failed handshakes, client side and upstream side: at most <see cref="LinesPerSecond"/> a second
/// process-wide, the rest counted and reported in the next line written (a scan or a flood of garbage must not become
/// a log flood). Each failure is otherwise exactly one line.
/// </summary>
internal static class TlsLog
{
    public const int LinesPerSecond = 10;

    private static readonly LogRateLimiter s_limiter = new(LinesPerSecond);

    public static void HandshakeFailed(string listener, Socket socket, string serverName, Exception e)
    {
        if (!s_limiter.TryTake(Environment.TickCount64, out long suppressed))
        {
            return;
        }
        string client = ClientOf(socket);
        var (reason, detail) = Classify(e);
        ProxyLog.Write(ProxyLogLevel.Info, "tls_handshake_failed", ("listener", listener), ("client", client), ("sni", serverName),
            ("reason", reason), ("error", detail), ("suppressed", suppressed));
    }

    /// <summary>The peer's address for a log line; empty once the socket is gone.</summary>
    private static string ClientOf(Socket socket)
    {
        try
        {
            return ProxyLog.Format(socket.RemoteEndPoint as IPEndPoint);
        }
        catch (Exception)
        {
            return "";
        }
    }

    /// <summary>A plain HTTP request on a TLS listener (answered 400): same limiter as handshake failures.</summary>
    public static void PlainHttpRequest(string listener, Socket socket)
    {
        if (!s_limiter.TryTake(Environment.TickCount64, out long suppressed))
        {
            return;
        }
        string client = ClientOf(socket);
        ProxyLog.Write(ProxyLogLevel.Info, "tls_handshake_failed", ("listener", listener), ("client", client), ("sni", ""),
            ("reason", TlsTransport.PlainHttpDetails), ("error", "a plain HTTP request was sent to the TLS port (answered 400)"),
            ("suppressed", suppressed));
    }

    public static void UpstreamHandshakeFailed(string destination, string serverName, Exception e)
    {
        if (!s_limiter.TryTake(Environment.TickCount64, out long suppressed))
        {
            return;
        }
        var (reason, detail) = Classify(e);
        ProxyLog.Write(ProxyLogLevel.Warn, "upstream_tls_handshake_failed", ("destination", destination), ("sni", serverName),
            ("reason", reason), ("error", detail), ("suppressed", suppressed));
    }

    /// <summary>A stable reason code plus the innermost message (OpenSSL's words: "unknown ca", "certificate expired").</summary>
    internal static (string Reason, string Detail) Classify(Exception e)
    {
        Exception inner = e;
        while (inner.InnerException is not null)
        {
            inner = inner.InnerException;
        }
        string reason = e switch
        {
            OperationCanceledException => "handshake_timeout",
            AuthenticationException when e.Message.Contains("remote certificate", StringComparison.OrdinalIgnoreCase) => "certificate_rejected",
            AuthenticationException => "handshake_failed",
            IOException => "connection_closed",
            _ => "handshake_error",
        };
        return (reason, inner.Message);
    }
}

/// <summary>
/// Allows at most <c>perSecond</c> events in any 1000 ms (a sliding window: the times of the last <c>perSecond</c>
/// events are kept, and an event passes only if the oldest of them is a second old) and counts the rest; the count is
/// handed to the next allowed event. A window fixed to wall-clock seconds let twice the rate through around a second's
/// boundary (10 lines just before it, 10 just after). Only failures take it, so a lock is cheap enough.
/// </summary>
internal sealed class LogRateLimiter(int perSecond)
{
    private readonly Lock _lock = new();
    /// <summary>The times of the last events allowed, oldest at <see cref="_next"/> (a ring); long.MinValue: none yet.</summary>
    private readonly long[] _times = NewTimes(perSecond);
    private int _next;
    private long _suppressed;

    private static long[] NewTimes(int count)
    {
        var times = new long[Math.Max(1, count)];
        Array.Fill(times, long.MinValue);
        return times;
    }

    public bool TryTake(long nowMilliseconds, out long suppressed)
    {
        lock (_lock)
        {
            long oldest = _times[_next];
            if (oldest != long.MinValue && nowMilliseconds - oldest < 1000)
            {
                _suppressed++;
                suppressed = 0;
                return false;
            }
            _times[_next] = nowMilliseconds;
            _next = (_next + 1) % _times.Length;
            suppressed = _suppressed;
            _suppressed = 0;
            return true;
        }
    }
}
