namespace Proxy.Upstream;

/// <summary>
/// One upstream address and its live state: in-flight count for the balancer and the pool of idle
/// keep-alive connections. Shared by every request on every thread, so counters are interlocked.
/// </summary>
internal sealed class DestinationState
{
    public DestinationState(string address, string host, int port, int weight)
    {
        Address = address;
        Host = host;
        Port = port;
        Weight = weight;
        HostHeader = System.Text.Encoding.ASCII.GetBytes(port == 80 ? host : host + ":" + port);
    }

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
}

/// <summary>Chooses a destination for a request. Implementations are immutable except for their own counters.</summary>
internal interface ILoadBalancingPolicy
{
    /// <summary>Returns a destination, or null when none is available.</summary>
    DestinationState? Pick(DestinationState[] destinations);
}
