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
}
