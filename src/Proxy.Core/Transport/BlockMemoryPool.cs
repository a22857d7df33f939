using System.Buffers;

namespace Proxy.Transport;

/// <summary>
/// Fixed-size blocks for socket pipes. <see cref="MemoryPool{T}.Shared"/> wraps every rent in a new owner
/// object and draws arrays from <see cref="ArrayPool{T}.Shared"/>, whose per-core buckets hold a few dozen
/// arrays: with many busy connections it runs dry and allocates (measured: ~500 B per proxied request at 64
/// connections). Here a block is its own owner and goes back to a LIFO free list, so a warm proxy rents and
/// returns without allocating, and the most recently used (cache-warm) block is handed out first. Idle
/// connections hold no block at all (zero-byte reads), so the free list stays small; it is capped anyway.
/// The lock guards a push or a pop only.
/// </summary>
internal sealed class BlockMemoryPool : MemoryPool<byte>
{
    private readonly Block[] _free;
    private int _count;
    /// <summary>The fewest blocks the free list held since the last <see cref="TrimIdle"/>: that many sat unused throughout.</summary>
    private int _lowWater;
    private long _lastTrim = Environment.TickCount64;
    private readonly Lock _lock = new();

    public BlockMemoryPool(int blockSize, int maxRetained)
    {
        BlockSize = blockSize;
        _free = new Block[maxRetained];
    }

    /// <summary>4 KiB blocks for reading client connections: request heads are small, and there are many.</summary>
    public static BlockMemoryPool Small { get; } = new(4096, maxRetained: 4096);

    /// <summary>
    /// 16 KiB blocks for writing and for reading upstream responses: a 16 KiB body then moves in one recv() and
    /// one send() instead of four each. Only connections in the middle of an exchange hold one.
    /// </summary>
    public static BlockMemoryPool Large { get; } = new(16 * 1024, maxRetained: 1024);

    /// <summary>
    /// 32 KiB blocks for reading upstream responses: a response of up to 32 KiB, head included, then arrives in one
    /// recv() and leaves in one sendmsg(). With 16 KiB blocks a 16 KiB body (plus its head) took two recv() calls and
    /// two sends, the second for the last few hundred bytes (nginx reads with readv() into 32 KiB of buffers by
    /// default, 8 x 4 KiB). A block is held only while a response is being read.
    /// </summary>
    public static BlockMemoryPool UpstreamRead { get; } = new(32 * 1024, maxRetained: 256);

    public int BlockSize { get; }

    public override int MaxBufferSize => BlockSize;

    /// <summary>Blocks waiting in the free list (for tests and diagnostics).</summary>
    public int Retained => Volatile.Read(ref _count);

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1) => RentBlock(minBufferSize);

    /// <summary>
    /// <see cref="Rent"/> with the concrete type: the epoll pipes keep a <see cref="Block"/>, so taking its memory
    /// and returning it are direct calls (through <see cref="IMemoryOwner{T}"/> they were interface dispatches
    /// that showed in S1 profiles at every rent and release).
    /// </summary>
    public Block RentBlock(int minBufferSize)
    {
        if (minBufferSize > BlockSize)
        {
            // Larger than a block: rare (the pipes ask for at most a block); the array pool serves it.
            return new Block(ArrayPool<byte>.Shared.Rent(minBufferSize));
        }
        lock (_lock)
        {
            if (_count > 0)
            {
                Block block = _free[--_count];
                _free[_count] = null!;
                if (_count < _lowWater)
                {
                    _lowWater = _count;
                }
                block.Rented = true;
                return block;
            }
        }
        return new Block(this, BlockSize) { Rented = true };
    }

    private void Return(Block block)
    {
        lock (_lock)
        {
            if (_count < _free.Length)
            {
                _free[_count++] = block;
            }
        }
    }

    /// <summary>
    /// Lets go of the blocks that waited in the free list through the whole time since the last trim (at least
    /// <paramref name="periodMilliseconds"/> ago; an earlier call does nothing, so servers sharing these static pools
    /// cannot shorten the period). Those blocks were not needed once in that time, so a steady load never rents a
    /// new block because of this; after a burst, the free list shrinks back within one period. The oldest blocks
    /// go (the bottom of the LIFO list); the collector reclaims them with the next full collection.
    /// </summary>
    /// <returns>How many blocks were let go.</returns>
    public int TrimIdle(long now, long periodMilliseconds)
    {
        lock (_lock)
        {
            if (now - _lastTrim < periodMilliseconds)
            {
                return 0;
            }
            _lastTrim = now;
            int idle = _lowWater;
            if (idle > 0)
            {
                Array.Copy(_free, idle, _free, 0, _count - idle);
                Array.Clear(_free, _count - idle, idle);
                _count -= idle;
            }
            _lowWater = _count;
            return idle;
        }
    }

    protected override void Dispose(bool disposing)
    {
    }

    /// <summary>One block; it returns itself to its pool (or, when larger than a block, its array to the array pool).</summary>
    internal sealed class Block : IMemoryOwner<byte>
    {
        /// <summary>Null for an oversized block, whose array came from <see cref="ArrayPool{T}.Shared"/>.</summary>
        private readonly BlockMemoryPool? _pool;
        // Pinned: sockets pin buffers for every receive and send anyway; allocating them pinned keeps them
        // out of the way of compaction (they live in the pinned object heap).
        private readonly byte[] _array;

        public Block(BlockMemoryPool pool, int size)
        {
            _pool = pool;
            _array = GC.AllocateUninitializedArray<byte>(size, pinned: true);
        }

        public Block(byte[] shared)
        {
            _array = shared;
            Rented = true;
        }

        public bool Rented;

        public Memory<byte> Memory => _array;

        public void Dispose()
        {
            if (!Rented)
            {
                return;
            }
            Rented = false;
            if (_pool is null)
            {
                ArrayPool<byte>.Shared.Return(_array);
                return;
            }
            _pool.Return(this);
        }
    }
}
