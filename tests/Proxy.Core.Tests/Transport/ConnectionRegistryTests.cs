using Proxy.Transport;

namespace Proxy.Core.Tests.Transport;

public sealed class ConnectionRegistryTests
{
    /// <summary>A connection that records what the heartbeat asked of it.</summary>
    private sealed class Probe : TimedConnection
    {
        public int Timeouts;

        public void ArmExpired() => Arm(TimeoutKind.RequestHead, TimeSpan.Zero);

        protected override void OnTimeout(TimeoutKind kind) => Timeouts++;

        public override void BeginDrain()
        {
        }

        public override void Abort()
        {
        }
    }

    [Fact]
    public void AddRemove_AnyOrder_CountAndSnapshotFollow()
    {
        using var registry = new ConnectionRegistry();
        var probes = Enumerable.Range(0, 5).Select(_ => new Probe()).ToArray();
        foreach (Probe probe in probes)
        {
            registry.Add(probe);
        }
        Assert.Equal(5, registry.Count);

        registry.Remove(probes[2]); // middle
        registry.Remove(probes[4]); // most recent (the head of the list)
        registry.Remove(probes[0]); // oldest (the tail)

        Assert.Equal(2, registry.Count);
        Assert.Equal(new[] { probes[1].Id, probes[3].Id }, registry.Connections.Select(c => c.Id).Order());
    }

    [Fact]
    public void AddRemove_Repeated_CountedOnce()
    {
        using var registry = new ConnectionRegistry();
        var probe = new Probe();

        registry.Add(probe);
        registry.Add(probe);
        Assert.Equal(1, registry.Count);

        registry.Remove(probe);
        registry.Remove(probe); // a connection handed to HTTP/2 leaves the registry twice
        Assert.Equal(0, registry.Count);
        Assert.Empty(registry.Connections);

        registry.Add(probe); // and a removed one can come back
        Assert.Single(registry.Connections);
    }

    [Fact]
    public void AddRemove_ManyThreads_CountEndsAtZero()
    {
        using var registry = new ConnectionRegistry();
        var threads = Enumerable.Range(0, 4).Select(_ => new Thread(() =>
        {
            var probes = Enumerable.Range(0, 64).Select(_ => new Probe()).ToArray();
            for (int round = 0; round < 200; round++)
            {
                foreach (Probe probe in probes)
                {
                    registry.Add(probe);
                }
                foreach (Probe probe in probes)
                {
                    registry.Remove(probe);
                }
            }
        })).ToArray();
        foreach (Thread thread in threads)
        {
            thread.Start();
        }
        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        Assert.Equal(0, registry.Count);
        Assert.Empty(registry.Connections);
    }

    [Fact]
    public async Task Heartbeat_ExpiredDeadline_FiresOnceForRegisteredConnectionsOnly()
    {
        using var registry = new ConnectionRegistry();
        var registered = new Probe();
        var removed = new Probe();
        registry.Add(registered);
        registry.Add(removed);
        registry.Remove(removed);
        registered.ArmExpired();
        removed.ArmExpired();

        // The heartbeat ticks once a second.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (Volatile.Read(ref registered.Timeouts) == 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        await Task.Delay(1200); // one more tick: a fired deadline is disarmed

        Assert.Equal(1, registered.Timeouts);
        Assert.Equal(0, removed.Timeouts);
    }
}
