using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Http2.Client;
using Proxy.Model;

namespace Proxy.Upstream;

/// <summary>
/// The active health check of one cluster: one loop (one <see cref="PeriodicTimer"/>) that every interval sends
/// <c>GET {path}</c> to each destination in parallel, each on a fresh connection of its own (never a pooled
/// one: a probe must see what a new connection sees, and must not disturb request traffic), closed after the answer.
/// The probe speaks the cluster's protocol: HTTP/1.1 on a raw socket for cleartext <c>http1</c> (and cleartext
/// <c>auto</c>, which is HTTP/1.1); otherwise (<c>h2c</c>, <c>h2</c>, <c>auto</c> over TLS, https <c>http1</c>) it
/// connects exactly as the request pools do (TLS, ALPN, HTTP/2 preface) through a private one-connection
/// <see cref="ConnectionPool"/> and asks on one stream of an <see cref="Http2ClientConnection"/>, or in HTTP/1.1 when
/// ALPN picked it. A status in <c>expected_statuses</c> within the timeout passes; anything else fails. Consecutive
/// passes and failures move the destination's verdict through <see cref="ClusterHealth.SetCheckHealthy"/>. Control
/// plane: allocates freely. Concurrency: each destination's streak counters are touched only by this loop's probe of
/// that destination.
/// </summary>
internal sealed class ActiveHealthChecker : IAsyncDisposable
{
    private readonly ClusterModel _cluster;
    private readonly HealthCheckModel _model;
    private readonly CancellationTokenSource _stop = new();
    private Task _loop = Task.CompletedTask;

    public ActiveHealthChecker(ClusterModel cluster)
    {
        _cluster = cluster;
        _model = cluster.HealthCheck ?? throw new ArgumentException("The cluster has no health_check block.", nameof(cluster));
    }

    public void Start() => _loop = RunAsync();

    private async Task RunAsync()
    {
        using var timer = new PeriodicTimer(_model.Interval);
        try
        {
            // The first round runs at once, so a destination that is down at start-up is found within one timeout.
            do
            {
                var probes = new Task[_cluster.Destinations.Length];
                for (int i = 0; i < probes.Length; i++)
                {
                    probes[i] = CheckAsync(_cluster.Destinations[i]);
                }
                await Task.WhenAll(probes).ConfigureAwait(false);
            }
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false));
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e)
        {
            ProxyLog.Error("health_check_failed", ("cluster", _cluster.Name), ("error", e.ToString()));
        }
    }

    private async Task CheckAsync(DestinationState destination)
    {
        var (passed, reason) = await ProbeAsync(destination, _cluster, _model, _stop.Token).ConfigureAwait(false);
        if (_stop.IsCancellationRequested)
        {
            return;
        }
        if (Observe(destination, passed, _model) is bool verdict)
        {
            _cluster.Health.SetCheckHealthy(destination, verdict, reason);
        }
    }

    /// <summary>
    /// Moves the destination's probe streaks; returns the new verdict when the streak crossed its threshold and the
    /// verdict changes, null otherwise.
    /// </summary>
    public static bool? Observe(DestinationState destination, bool passed, HealthCheckModel model)
    {
        if (passed)
        {
            destination.CheckFailures = 0;
            destination.CheckPasses++;
            return !destination.CheckHealthy && destination.CheckPasses >= model.HealthyThreshold ? true : null;
        }
        destination.CheckPasses = 0;
        destination.CheckFailures++;
        return destination.CheckHealthy && destination.CheckFailures >= model.UnhealthyThreshold ? false : null;
    }

    /// <summary>One probe in the cluster's protocol (see the class summary), all within the timeout.</summary>
    public static Task<(bool Passed, string Reason)> ProbeAsync(DestinationState destination, ClusterModel cluster, HealthCheckModel model,
        CancellationToken stop)
    {
        bool cleartextHttp1 = !destination.Secure && cluster.Protocol is UpstreamProtocol.Http1 or UpstreamProtocol.Auto;
        return cleartextHttp1 ? ProbeAsync(destination, model, stop) : ProbeLikePoolsAsync(destination, cluster, model, stop);
    }

    /// <summary>
    /// A probe that connects as the request pools do, through a pool of its own (one connection, no metrics, no
    /// breaker) over a copy of the destination, so nothing is counted against the real pool's slots or gauges.
    /// </summary>
    private static async Task<(bool Passed, string Reason)> ProbeLikePoolsAsync(DestinationState destination, ClusterModel cluster,
        HealthCheckModel model, CancellationToken stop)
    {
        var own = new DestinationState(destination.Address, destination.Host, destination.Port, destination.Weight, destination.Secure);
        var probeCluster = new ClusterModel
        {
            Name = cluster.Name,
            Destinations = [own],
            Policy = cluster.Policy,
            Health = cluster.Health,
            ConnectTimeout = model.Timeout,
            IdleTimeout = cluster.IdleTimeout,
            MaxConnections = 1,
            Http2MaxStreams = 1,
            Tls = cluster.Tls,
            Protocol = cluster.Protocol,
        };
        var pool = new ConnectionPool(own, probeCluster);
        own.Pool = pool;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(model.Timeout);
        Task? pending = null;
        try
        {
            if (pool.Http2 is { } http2)
            {
                var renting = http2.RentStreamAsync(breaker: null).AsTask();
                pending = renting;
                var (stream, error) = await renting.WaitAsync(timeout.Token).ConfigureAwait(false);
                if (stream is not null)
                {
                    return await AskHttp2Async(stream, own, model, timeout.Token).ConfigureAwait(false);
                }
                if (error != ConnectError.None)
                {
                    return (false, ConnectReason(error));
                }
                // auto, and ALPN picked http/1.1: the connection is in the probe pool's idle stack.
                if (pool.TryRentIdle() is not { } picked)
                {
                    return (false, "connect_failed");
                }
                return await AskHttp1Async(picked, own, model, timeout.Token).ConfigureAwait(false);
            }
            var connecting = pool.ConnectAsync().AsTask();
            pending = connecting;
            var (connection, connectError) = await connecting.WaitAsync(timeout.Token).ConfigureAwait(false);
            if (connection is null)
            {
                return (false, ConnectReason(connectError));
            }
            return await AskHttp1Async(connection, own, model, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return (false, stop.IsCancellationRequested ? "stopped" : "timeout");
        }
        catch (Exception)
        {
            return (false, "connect_failed");
        }
        finally
        {
            if (pending is { IsCompleted: false })
            {
                // Given up on while connecting: whatever it opens is closed when the connect ends.
                _ = pending.ContinueWith(static (_, state) => CloseProbePool((ConnectionPool)state!), pool, TaskScheduler.Default);
            }
            else
            {
                CloseProbePool(pool);
            }
        }
    }

    private static void CloseProbePool(ConnectionPool pool)
    {
        pool.Retire(); // closes the idle HTTP/1.1 connection and every HTTP/2 connection without streams
        if (pool.TryRentIdle() is { } left)
        {
            left.Dispose();
        }
    }

    private static string ConnectReason(ConnectError error) => error switch
    {
        ConnectError.Timeout => "timeout",
        ConnectError.TlsFailed => "tls_failed",
        ConnectError.Refused => "connect_refused",
        _ => "connect_failed",
    };

    /// <summary>
    /// HEADERS (GET, END_STREAM) on a stream of its own connection (RFC 9113 section 8.3.1), then the final
    /// response's <c>:status</c>; 1xx heads are skipped (they are kept for a forwarder, dropped with the stream here).
    /// </summary>
    private static async Task<(bool Passed, string Reason)> AskHttp2Async(Http2ClientStream stream, DestinationState destination,
        HealthCheckModel model, CancellationToken timeout)
    {
        Http2ClientConnection connection = stream.Connection;
        try
        {
            RequestHead head = ProbeHead(model.Path);
            byte[] fields = "user-agent: proxy-health-check\r\n"u8.ToArray();
            if (!await connection.SendHeadersAsync(stream, head, destination.Secure, destination.HostHeader, destination.HostHeader.Length,
                fields, fields.Length, endStream: true, teTrailers: false).AsTask().WaitAsync(timeout).ConfigureAwait(false))
            {
                return (false, "connect_failed");
            }
            PipeReader reader = stream.ResponseReader;
            while (!stream.HeadReady)
            {
                ReadResult result = await reader.ReadAsync(timeout).ConfigureAwait(false);
                reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                if (!stream.HeadReady && result.IsCompleted)
                {
                    return (false, "invalid_response"); // reset, GOAWAY or connection lost before a final head
                }
            }
            int status = stream.Head.StatusCode;
            return (model.Passes(status), "status_" + status);
        }
        finally
        {
            await connection.ReleaseAsync(stream).ConfigureAwait(false);
        }
    }

    /// <summary>The probe's request as the HTTP/2 client encodes it: method GET, target the configured path.</summary>
    private static RequestHead ProbeHead(string path)
    {
        var head = new RequestHead();
        byte[] line = Encoding.ASCII.GetBytes("GET" + path);
        if (head.Buffer.Length < line.Length)
        {
            head.Buffer = new byte[line.Length];
        }
        line.CopyTo(head.Buffer, 0);
        head.Length = line.Length;
        head.Method = Http.HttpMethod.Get;
        head.MethodStart = 0;
        head.MethodLength = 3;
        head.TargetStart = 3;
        head.TargetLength = path.Length;
        int query = path.IndexOf('?', StringComparison.Ordinal);
        head.PathLength = query < 0 ? path.Length : query;
        head.Version = Http.HttpVersion.Http11;
        return head;
    }

    /// <summary>HTTP/1.1 over a pool-made connection (TLS, or ALPN's http/1.1): the request, then the final response head.</summary>
    private static async Task<(bool Passed, string Reason)> AskHttp1Async(UpstreamConnection connection, DestinationState destination,
        HealthCheckModel model, CancellationToken timeout)
    {
        try
        {
            connection.Output.Write(Http1Request(destination, model));
            FlushResult flush = await connection.Output.FlushAsync(timeout).ConfigureAwait(false);
            if (flush.IsCompleted)
            {
                return (false, "connect_failed");
            }
            PipeReader input = connection.Input;
            while (true)
            {
                ReadResult result = await input.ReadAsync(timeout).ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                int status = ReadFinalStatus(buffer, complete: result.IsCompleted);
                if (status != 0)
                {
                    input.AdvanceTo(buffer.End);
                    return status < 0 ? (false, "invalid_response") : (model.Passes(status), "status_" + status);
                }
                input.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        finally
        {
            connection.Dispose();
        }
    }

    private static byte[] Http1Request(DestinationState destination, HealthCheckModel model) => Encoding.ASCII.GetBytes(
        $"GET {model.Path} HTTP/1.1\r\nhost: {Encoding.ASCII.GetString(destination.HostHeader)}\r\nuser-agent: proxy-health-check\r\nconnection: close\r\n\r\n");

    /// <summary>One cleartext HTTP/1.1 probe: connect, send the request, read the final response head (RFC 9112 section 4), all within the timeout.</summary>
    public static async Task<(bool Passed, string Reason)> ProbeAsync(DestinationState destination, HealthCheckModel model, CancellationToken stop)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(model.Timeout);
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            if (IPAddress.TryParse(destination.Host, out var address))
            {
                await socket.ConnectAsync(new IPEndPoint(address, destination.Port), timeout.Token).ConfigureAwait(false);
            }
            else
            {
                await socket.ConnectAsync(destination.Host, destination.Port, timeout.Token).ConfigureAwait(false);
            }
            byte[] request = Http1Request(destination, model);
            await socket.SendAsync(request, SocketFlags.None, timeout.Token).ConfigureAwait(false);

            var buffer = new byte[MaxReplyBytes];
            int filled = 0;
            int status = 0;
            while (status == 0)
            {
                int n = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, timeout.Token).ConfigureAwait(false);
                filled += n;
                status = ReadFinalStatus(new ReadOnlySequence<byte>(buffer, 0, filled), complete: n == 0 || filled == buffer.Length);
            }
            if (status < 0)
            {
                return (false, "invalid_response");
            }
            return (model.Passes(status), "status_" + status);
        }
        catch (OperationCanceledException)
        {
            return (false, stop.IsCancellationRequested ? "stopped" : "timeout");
        }
        catch (SocketException e)
        {
            return (false, e.SocketErrorCode == SocketError.ConnectionRefused ? "connect_refused" : "connect_failed");
        }
        catch (Exception)
        {
            return (false, "connect_failed");
        }
    }

    /// <summary>Most bytes of an HTTP/1.1 reply a probe reads for its final head, interim heads included.</summary>
    private const int MaxReplyBytes = 16 * 1024;

    /// <summary>
    /// The final status of an HTTP/1.1 reply: 0 while more bytes are needed (never when <paramref name="complete"/>: the
    /// peer closed, or the limit is reached), -1 when it is not HTTP. Heads are read as forwarding reads them
    /// (<see cref="Http1ResponseReader"/>: "HTTP/1.x", SP, a three-digit code, then SP or the line's CRLF; fields checked;
    /// the empty line), so "HTTP/1.1 2000 OK" or a status line cut off by the close fails. Interim 1xx heads before the
    /// final one are skipped, as a client must (RFC 9110 section 15.2) and as the HTTP/2 probe does; a 101 is final
    /// (the probe asked for no upgrade).
    /// </summary>
    internal static int ReadFinalStatus(ReadOnlySequence<byte> reply, bool complete)
    {
        if (reply.Length >= MaxReplyBytes)
        {
            reply = reply.Slice(0, MaxReplyBytes);
            complete = true;
        }
        var head = new ResponseHead();
        while (true)
        {
            if (!StartsLikeStatusLine(reply))
            {
                return -1;
            }
            HeadStatus read = Http1ResponseReader.TryRead(reply, head, MaxReplyBytes, out SequencePosition consumed, out _);
            if (read == HeadStatus.Rejected)
            {
                return -1;
            }
            if (read == HeadStatus.Incomplete)
            {
                return complete ? -1 : 0;
            }
            if (head.StatusCode >= 200 || head.StatusCode == 101)
            {
                return head.StatusCode;
            }
            reply = reply.Slice(consumed);
        }
    }

    /// <summary>The final status of a whole reply (everything the peer sent before closing), or -1: see <see cref="ReadFinalStatus"/>.</summary>
    public static int ParseStatus(ReadOnlySpan<byte> reply) => ReadFinalStatus(new ReadOnlySequence<byte>(reply.ToArray()), complete: true);

    /// <summary>
    /// Whatever part of "HTTP/1.x NNN" has arrived matches it: a reply that is not HTTP (an SSH banner) fails at once
    /// rather than at the timeout, while a head waits for its empty line.
    /// </summary>
    private static bool StartsLikeStatusLine(ReadOnlySequence<byte> reply)
    {
        Span<byte> start = stackalloc byte[12];
        int length = (int)Math.Min(reply.Length, start.Length);
        reply.Slice(0, length).CopyTo(start);
        for (int i = 0; i < length; i++)
        {
            bool expected = i switch
            {
                < 7 => start[i] == "HTTP/1."u8[i],
                8 => start[i] == (byte)' ',
                _ => char.IsAsciiDigit((char)start[i]),
            };
            if (!expected)
            {
                return false;
            }
        }
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try
        {
            await _loop.ConfigureAwait(false);
        }
        catch (Exception)
        {
        }
        _stop.Dispose();
    }
}
