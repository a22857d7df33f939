namespace Proxy.Forwarding;

/// <summary>
/// The idle clock of an upgraded connection (WebSocket, RFC 9110 section 7.8) or an extended CONNECT tunnel: each
/// direction's copy loop touches it when bytes move, and the tunnel is closed once neither direction moved for the
/// cluster's <c>tunnel_idle_timeout</c>. Without it a tunnel whose peer vanished (no FIN, no RST: a dropped NAT entry,
/// a powered-off client) held its client connection, its upstream connection and their buffers forever.
/// Tunnels are rare and long-lived, so this is written plainly: one timer task per tunnel.
/// </summary>
internal sealed class TunnelActivity
{
    private long _lastMove = Environment.TickCount64;

    /// <summary>Bytes moved in either direction.</summary>
    public void Touch() => Volatile.Write(ref _lastMove, Environment.TickCount64);

    /// <summary>
    /// Completes when <paramref name="tunnel"/> does (false), or when no byte moved for <paramref name="timeout"/>
    /// (true: the caller closes both sides).
    /// </summary>
    public async Task<bool> IdledOutAsync(Task tunnel, TimeSpan timeout)
    {
        long limit = (long)timeout.TotalMilliseconds;
        while (true)
        {
            long idle = Environment.TickCount64 - Volatile.Read(ref _lastMove);
            if (idle >= limit)
            {
                return true;
            }
            using var stop = new CancellationTokenSource();
            Task timer = Task.Delay(TimeSpan.FromMilliseconds(limit - idle), stop.Token);
            if (await Task.WhenAny(tunnel, timer).ConfigureAwait(false) == tunnel)
            {
                stop.Cancel();
                return false;
            }
        }
    }
}
