namespace Proxy.Forwarding;

/// <summary>Where a tunnel's copy loop writes: towards the upstream or towards the client.</summary>
internal enum TunnelSide : byte
{
    Upstream,
    Client,
}

/// <summary>
/// The clocks of an upgraded connection (WebSocket, RFC 9110 section 7.8) or an extended CONNECT tunnel.
/// <para>Idle: each direction's copy loop touches it when bytes move, and the tunnel is closed once neither direction
/// moved for the cluster's <c>tunnel_idle_timeout</c>. Without it a tunnel whose peer vanished (no FIN, no RST: a
/// dropped NAT entry, a powered-off client) held its client connection, its upstream connection and their buffers
/// forever. Tunnels are rare and long-lived, so this is written plainly: one timer task per tunnel.</para>
/// <para>Stalled writes: each copy loop notes when a write waits for its peer to take bytes (the pipe is full). A
/// peer that stops reading parks that loop, and one that keeps sending parks the other on the first peer, so neither
/// loop reads any more and a close or reset from either side goes unseen: the client connection's heartbeat reads
/// <see cref="WriteStalledMilliseconds"/> and closes both sides after <c>limits.body_timeout</c> (nginx's
/// <c>proxy_send_timeout</c> bounds a tunnel's writes the same way).</para>
/// </summary>
internal sealed class TunnelActivity
{
    private long _lastMove = Environment.TickCount64;

    // Tick counts at which the current write towards each side started to wait; 0: none waits. Written by that
    // side's copy loop, read by the heartbeat thread.
    private long _upstreamWriteSince;
    private long _clientWriteSince;

    /// <summary>Bytes moved in either direction.</summary>
    public void Touch() => Volatile.Write(ref _lastMove, Environment.TickCount64);

    /// <summary>A write towards <paramref name="side"/> waits for the peer to take bytes.</summary>
    public void WriteWaiting(TunnelSide side)
        => Volatile.Write(ref side == TunnelSide.Upstream ? ref _upstreamWriteSince : ref _clientWriteSince, Environment.TickCount64);

    /// <summary>The write towards <paramref name="side"/> completed (or failed).</summary>
    public void WriteDone(TunnelSide side)
        => Volatile.Write(ref side == TunnelSide.Upstream ? ref _upstreamWriteSince : ref _clientWriteSince, 0);

    /// <summary>How long the oldest waiting write has waited at <paramref name="now"/>; 0 when no write waits.</summary>
    public long WriteStalledMilliseconds(long now)
    {
        long up = Volatile.Read(ref _upstreamWriteSince);
        long client = Volatile.Read(ref _clientWriteSince);
        long oldest = up == 0 ? client : client == 0 ? up : Math.Min(up, client);
        return oldest == 0 ? 0 : Math.Max(1, now - oldest);
    }

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
