using Microsoft.Extensions.ObjectPool;
using Proxy.Diagnostics;
using Proxy.Forwarding;
using Proxy.Handlers;
using Proxy.Http;
using Proxy.Model;

namespace Proxy.Transport;

/// <summary>
/// State shared by every connection of one server: the current config snapshot (swapped atomically, read
/// once per request), the connection registry and its heartbeat, and pools of per-connection state.
/// </summary>
internal sealed class ProxyRuntime : IDisposable
{
    private ProxySnapshot _current;

    public ProxyRuntime(ProxySnapshot snapshot)
    {
        _current = snapshot;
        Registry = new ConnectionRegistry();
        Metrics = new ProxyMetrics(this);
        Metrics.Adopt(snapshot, replaced: null);
        Observability = new ProxyObservability(Metrics.RouteHandles);
        Observability.Apply(snapshot);
    }

    public ProxySnapshot Current => Volatile.Read(ref _current);

    public void Publish(ProxySnapshot snapshot)
    {
        // Bind the new snapshot's metric handles before any request can see it (and drop those of names gone for two).
        Metrics.Adopt(snapshot, replaced: Current);
        Observability.Apply(snapshot);
        Volatile.Write(ref _current, snapshot);
    }

    public ProxyMetrics Metrics { get; }

    /// <summary>Access log writer and traffic insights (tracing and log settings are per snapshot).</summary>
    public ProxyObservability Observability { get; }

    /// <summary>What the admin API reads and controls beyond the snapshot (readiness, drain); set by the server.</summary>
    public IAdminHost? AdminHost { get; set; }

    public ConnectionRegistry Registry { get; }

    /// <summary>Open connections per client address (<c>limits.max_connections_per_ip</c>).</summary>
    public ClientIpLimiter ConnectionsPerIp { get; } = new();

    /// <summary>Requests in flight per client address (<c>limits.max_requests_per_ip</c>).</summary>
    public ClientIpLimiter RequestsPerIp { get; } = new();

    private long _requests;

    /// <summary>Requests received on every connection since start (one interlocked add per request).</summary>
    public long Requests => Interlocked.Read(ref _requests);

    public void CountRequest() => Interlocked.Increment(ref _requests);

    /// <summary>Bytes allocated by the process when the server started, to report allocation per request at stop.</summary>
    public long AllocatedAtStart { get; set; }

    public ObjectPool<ExchangeState> ExchangeStates { get; } =
        new DefaultObjectPool<ExchangeState>(new ExchangeStatePolicy(), maximumRetained: 1024);

    /// <summary>
    /// Forwarders of closed connections (with their loop's state machine and value-task sources), for the next ones:
    /// a short-lived connection then allocates none of them (about 750 bytes per connection).
    /// </summary>
    public ObjectPool<HttpForwarder> Forwarders { get; } =
        new DefaultObjectPool<HttpForwarder>(new ForwarderPolicy(), maximumRetained: 1024);

    public void Dispose()
    {
        Registry.Dispose();
        Observability.Dispose();
        Metrics.Dispose();
    }

    private sealed class ForwarderPolicy : PooledObjectPolicy<HttpForwarder>
    {
        public override HttpForwarder Create() => new();

        public override bool Return(HttpForwarder obj) => obj.IsReusable;
    }

    private sealed class ExchangeStatePolicy : PooledObjectPolicy<ExchangeState>
    {
        public override ExchangeState Create() => new();

        public override bool Return(ExchangeState obj)
        {
            obj.Head.Reset();
            // Do not keep buffers that grew for an unusually large head.
            return obj.Head.Buffer.Length <= 8 * 1024;
        }
    }
}

/// <summary>Per-connection request state, pooled so that connection churn does not reallocate it.</summary>
internal sealed class ExchangeState
{
    public RequestHead Head { get; } = new();
    public BodyPump RequestPump { get; } = new();
    public BodyPump ResponsePump { get; } = new();
    /// <summary>The filters' view of the request and their local answer (see <see cref="Pipeline.RequestContext"/>).</summary>
    public Pipeline.RequestContext Filters { get; } = new();
}
