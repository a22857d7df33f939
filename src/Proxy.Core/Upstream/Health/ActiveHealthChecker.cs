using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Model;

namespace Proxy.Upstream;

/// <summary>
/// The active health check of one cluster: one loop (one <see cref="PeriodicTimer"/>) that every interval sends
/// <c>GET {path} HTTP/1.1</c> to each destination in parallel, each on a fresh connection of its own (never a pooled
/// one: a probe must see what a new connection sees, and must not disturb request traffic), closed after the answer.
/// A 2xx status within the timeout passes; anything else fails. Consecutive passes and failures move the
/// destination's verdict through <see cref="ClusterHealth.SetCheckHealthy"/>. Control plane: allocates freely.
/// Concurrency: each destination's streak counters are touched only by this loop's probe of that destination.
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
        var (passed, reason) = await ProbeAsync(destination, _model, _stop.Token).ConfigureAwait(false);
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

    /// <summary>One probe: connect, send the request, read the status line (RFC 9112 section 4), all within the timeout.</summary>
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
            byte[] request = Encoding.ASCII.GetBytes(
                $"GET {model.Path} HTTP/1.1\r\nhost: {Encoding.ASCII.GetString(destination.HostHeader)}\r\nuser-agent: proxy-health-check\r\nconnection: close\r\n\r\n");
            await socket.SendAsync(request, SocketFlags.None, timeout.Token).ConfigureAwait(false);

            var buffer = new byte[512];
            int filled = 0;
            while (filled < buffer.Length)
            {
                int n = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, timeout.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }
                filled += n;
                if (buffer.AsSpan(0, filled).IndexOf("\r\n"u8) >= 0)
                {
                    break;
                }
            }
            int status = ParseStatus(buffer.AsSpan(0, filled));
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

    /// <summary>The status code of "HTTP/1.x NNN ..." (RFC 9112 section 4), or -1.</summary>
    public static int ParseStatus(ReadOnlySpan<byte> head)
    {
        if (head.Length < 12 || !head.StartsWith("HTTP/1."u8) || head[8] != (byte)' ')
        {
            return -1;
        }
        int status = 0;
        for (int i = 9; i < 12; i++)
        {
            if (!char.IsAsciiDigit((char)head[i]))
            {
                return -1;
            }
            status = status * 10 + (head[i] - '0');
        }
        return status;
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
