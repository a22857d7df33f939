namespace Proxy.Http;

/// <summary>Per-listener message limits, resolved from config (server-wide defaults, listener overrides).</summary>
public sealed record HttpLimits
{
    public int MaxRequestLine { get; init; } = 8 * 1024;
    public int MaxHeaderBytes { get; init; } = 32 * 1024;
    public int MaxHeaders { get; init; } = 100;
    public long MaxBodyBytes { get; init; } = 10 * 1024 * 1024;
    public TimeSpan HeaderTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan KeepAliveTimeout { get; init; } = TimeSpan.FromSeconds(75);
    /// <summary>Longest wait for the next body byte from a client before 408.</summary>
    public TimeSpan BodyTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public int MaxConnections { get; init; } = 10_000;
    /// <summary>Open connections per client IP address; 0: no cap (docs/resilience.md, "Per-client caps").</summary>
    public int MaxConnectionsPerIp { get; init; }
    /// <summary>Requests in flight per client IP address; 0: no cap.</summary>
    public int MaxRequestsPerIp { get; init; }

    public static HttpLimits Default { get; } = new();
}
