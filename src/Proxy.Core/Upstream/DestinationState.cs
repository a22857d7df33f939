namespace Proxy.Upstream;

/// <summary>
/// One upstream address and its live state: in-flight count for the balancer and the pool of idle
/// keep-alive connections. Shared by every request on every thread, so counters are interlocked.
/// </summary>
internal sealed class DestinationState
{
    public DestinationState(string address, string host, int port, int weight, bool secure = false)
    {
        Address = address;
        Host = host;
        Port = port;
        Weight = weight;
        Secure = secure;
        HostHeader = System.Text.Encoding.ASCII.GetBytes(port == (secure ? 443 : 80) ? host : host + ":" + port);
    }

    /// <summary>An https:// destination: connections speak TLS (the cluster's <c>tls:</c> settings).</summary>
    public bool Secure { get; }

    /// <summary>As configured, for logs ("http://127.0.0.1:9000").</summary>
    public string Address { get; }
    public string Host { get; }
    public int Port { get; }
    public int Weight { get; }
    /// <summary>Authority to send when the route does not keep the client's Host.</summary>
    public byte[] HostHeader { get; }

    private int _activeRequests;
    public int ActiveRequests => Volatile.Read(ref _activeRequests);
    public void RequestStarted() => Interlocked.Increment(ref _activeRequests);
    public void RequestEnded() => Interlocked.Decrement(ref _activeRequests);

    /// <summary>Keep-alive pool; set by the upstream layer when the cluster is built.</summary>
    public ConnectionPool? Pool { get; set; }

    // ---- health (Upstream/Health). Written by ClusterHealth under its lock, except the failure streak, which
    // every request may bump with an interlocked add; read without a lock by the admin API and ClusterHealth.

    private int _consecutiveFailures;
    private int _checkDown;
    private long _ejectedUntil;

    /// <summary>False once active health checks marked the destination down, until they mark it up again.</summary>
    public bool CheckHealthy
    {
        get => Volatile.Read(ref _checkDown) == 0;
        internal set => Volatile.Write(ref _checkDown, value ? 0 : 1);
    }

    /// <summary>Milliseconds on the cluster's clock until which outlier detection keeps the destination out; 0 when not ejected.</summary>
    public long EjectedUntil
    {
        get => Volatile.Read(ref _ejectedUntil);
        internal set => Volatile.Write(ref _ejectedUntil, value);
    }

    /// <summary>Requests that failed in a row (5xx, connect failure, reset), reset by any success.</summary>
    public int ConsecutiveFailures => Volatile.Read(ref _consecutiveFailures);

    /// <summary>Adds one to the failure streak and returns it.</summary>
    internal int RecordFailure() => Interlocked.Increment(ref _consecutiveFailures);

    /// <summary>Ends the failure streak. Reads first so the common case (no streak) writes nothing to a shared line.</summary>
    internal void RecordSuccess()
    {
        if (Volatile.Read(ref _consecutiveFailures) != 0)
        {
            Volatile.Write(ref _consecutiveFailures, 0);
        }
    }

    /// <summary>Times ejected since the multiplier last reset; the next ejection lasts one base longer.</summary>
    public int Ejections { get; internal set; }

    /// <summary>When the last ejection ended or will end (cluster clock, ms), to decide when the multiplier resets.</summary>
    internal long LastEjectionEnd { get; set; }

    /// <summary>Probe streaks of the active health checker (only its loop touches them).</summary>
    internal int CheckPasses { get; set; }
    internal int CheckFailures { get; set; }

    /// <summary>True when neither health checks nor outlier detection keep the destination out at <paramref name="now"/>.</summary>
    public bool IsAvailable(long now) => CheckHealthy && EjectedUntil <= now;
}

/// <summary>Chooses a destination for a request. Implementations are immutable except for their own counters.</summary>
internal interface ILoadBalancingPolicy
{
    /// <summary>Returns a destination, or null when none is available.</summary>
    DestinationState? Pick(DestinationState[] destinations);
}
