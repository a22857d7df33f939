using System.Net;
using Proxy.Transport;

namespace Proxy.Core.Tests.Traffic;

public sealed class ClientIpLimiterTests
{
    [Fact]
    public void TryEnter_AtCap_RefusesAndExitMakesRoom()
    {
        var limiter = new ClientIpLimiter();
        var slots = ClientIpLimiter.Slots(IPAddress.Parse("10.0.0.1"));
        Assert.True(limiter.TryEnter(slots, 2));
        Assert.True(limiter.TryEnter(slots, 2));
        Assert.False(limiter.TryEnter(slots, 2));
        Assert.Equal(2, limiter.Estimate(slots));
        limiter.Exit(slots);
        Assert.True(limiter.TryEnter(slots, 2));
        Assert.Equal(1, limiter.Refused);
    }

    [Fact]
    public void TryEnter_ManyDistinctAddresses_EachAdmittedUpToItsCapAndTableStaysFixed()
    {
        var limiter = new ClientIpLimiter();
        // 2,000 addresses, one connection each, against a cap of 1: an estimate never under-counts, and with two
        // rows of 4096 a refusal needs a collision in both rows; the table does not grow whatever the count.
        int refused = 0;
        var all = new List<ClientIpSlots>();
        for (int i = 0; i < 2000; i++)
        {
            var slots = ClientIpLimiter.Slots(new IPAddress(new byte[] { 10, (byte)(i >> 16), (byte)(i >> 8), (byte)i }));
            if (limiter.TryEnter(slots, 1))
            {
                all.Add(slots);
            }
            else
            {
                refused++;
            }
        }
        // 2000 addresses in 16384 counters per row: a collision in both rows is rare (about 0.5% expected).
        Assert.InRange(refused, 0, 40);
        foreach (var slots in all)
        {
            limiter.Exit(slots);
        }
        foreach (var slots in all)
        {
            Assert.Equal(0, limiter.Estimate(slots));
        }
    }

    [Fact]
    public void Slots_SameAddress_SameSlots_Ipv6Supported()
    {
        var a = ClientIpLimiter.Slots(IPAddress.Parse("2001:db8::1"));
        var b = ClientIpLimiter.Slots(IPAddress.Parse("2001:db8::1"));
        Assert.Equal(a, b);
        Assert.InRange(a.Row0, 0, ClientIpLimiter.RowSize - 1);
    }

    [Fact]
    public void TryEnter_SteadyState_AllocatesNothing()
    {
        var limiter = new ClientIpLimiter();
        var address = IPAddress.Parse("192.0.2.7");
        // The first entry allocates the table (once per server); after that nothing.
        limiter.TryEnter(ClientIpLimiter.Slots(address), 10);
        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            var slots = ClientIpLimiter.Slots(address);
            limiter.TryEnter(slots, 10);
            limiter.Exit(slots);
        }, iterations: 1000);
        Assert.Equal(0, allocated);
    }
}
