using System.Buffers;
using Proxy.Transport;

namespace Proxy.Core.Tests.Transport;

public sealed class BlockMemoryPoolTests
{
    [Fact]
    public void RentBlock_DisposedTwice_ReturnsOnceAndIsHandedOutAgain()
    {
        var pool = new BlockMemoryPool(64, maxRetained: 4);
        BlockMemoryPool.Block block = pool.RentBlock(64);
        Assert.Equal(64, block.Memory.Length);

        block.Dispose();
        block.Dispose();

        Assert.Equal(1, pool.Retained);
        Assert.Same(block, pool.RentBlock(10));
        Assert.Equal(0, pool.Retained);
    }

    [Fact]
    public void RentBlock_LargerThanBlock_ServedOutsideTheFreeList()
    {
        var pool = new BlockMemoryPool(64, maxRetained: 4);
        BlockMemoryPool.Block large = pool.RentBlock(1000);
        Assert.True(large.Memory.Length >= 1000);

        large.Dispose();
        large.Dispose();

        Assert.Equal(0, pool.Retained);
    }

    [Fact]
    public void Rent_ThroughMemoryPool_SameBlocksAsRentBlock()
    {
        var pool = new BlockMemoryPool(64, maxRetained: 4);
        IMemoryOwner<byte> owner = pool.Rent();
        Assert.IsType<BlockMemoryPool.Block>(owner);
        owner.Dispose();

        Assert.Same(owner, pool.RentBlock(64));
    }

    private const long Period = 10_000;

    /// <summary>A pool holding <paramref name="count"/> free blocks, most recently returned last.</summary>
    private static (BlockMemoryPool Pool, BlockMemoryPool.Block[] Blocks) PoolWithFree(int count)
    {
        var pool = new BlockMemoryPool(64, maxRetained: 16);
        var blocks = Enumerable.Range(0, count).Select(_ => pool.RentBlock(64)).ToArray();
        foreach (var block in blocks)
        {
            block.Dispose();
        }
        return (pool, blocks);
    }

    [Fact]
    public void TrimIdle_BlocksUnusedThroughAPeriod_LetGoOldestFirst()
    {
        var (pool, _) = PoolWithFree(8);
        long t = Environment.TickCount64 + Period;
        Assert.Equal(0, pool.TrimIdle(t, Period)); // the first period saw the free list empty (the blocks were new)
        Assert.Equal(8, pool.Retained);

        // The next period needs three blocks at most: the five that never left the list go, the three used stay.
        var used = new[] { pool.RentBlock(64), pool.RentBlock(64), pool.RentBlock(64) };
        foreach (var block in used)
        {
            block.Dispose();
        }
        Assert.Equal(5, pool.TrimIdle(t + Period, Period));
        Assert.Equal(3, pool.Retained);
        var after = new[] { pool.RentBlock(64), pool.RentBlock(64), pool.RentBlock(64) };
        Assert.Equal(used.ToHashSet(), after.ToHashSet());
    }

    [Fact]
    public void TrimIdle_BeforeThePeriodEnds_DoesNothing()
    {
        var (pool, _) = PoolWithFree(8);
        long t = Environment.TickCount64 + Period;
        pool.TrimIdle(t, Period);

        Assert.Equal(0, pool.TrimIdle(t + Period - 1, Period));
        Assert.Equal(8, pool.Retained);
        Assert.Equal(8, pool.TrimIdle(t + Period, Period));
        Assert.Equal(0, pool.Retained);
    }

    [Fact]
    public void TrimIdle_EveryBlockUsedInThePeriod_KeepsThemAll()
    {
        var (pool, blocks) = PoolWithFree(8);
        long t = Environment.TickCount64 + Period;
        pool.TrimIdle(t, Period);

        var rented = Enumerable.Range(0, 8).Select(_ => pool.RentBlock(64)).ToArray();
        foreach (var block in rented)
        {
            block.Dispose();
        }

        Assert.Equal(0, pool.TrimIdle(t + Period, Period));
        Assert.Equal(8, pool.Retained);
        Assert.Equal(blocks.ToHashSet(), rented.ToHashSet());
    }
}
