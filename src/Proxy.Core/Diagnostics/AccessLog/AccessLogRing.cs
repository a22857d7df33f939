namespace Proxy.Diagnostics.AccessLog;

/// <summary>
/// A bounded multi-producer, single-consumer ring of <see cref="AccessLogRecord"/> slots (Dmitry Vyukov's bounded
/// queue): producers claim a slot with one compare-and-swap, fill it in place and publish it by bumping the
/// slot's sequence; a full ring refuses at once, so a request never waits for the log. Slots are allocated once.
/// </summary>
internal sealed class AccessLogRing
{
    private struct Slot
    {
        /// <summary>Equals the position when free for that producer lap; position + 1 once published.</summary>
        public long Sequence;
        public AccessLogRecord Record;
    }

    private readonly Slot[] _slots;
    private readonly long _mask;
    // Producer and consumer positions sit apart so the consumer's writes do not invalidate the producers' line.
    private PaddedLong _enqueue;
    private PaddedLong _dequeue;

    public AccessLogRing(int capacity)
    {
        int size = (int)Math.Max(2, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)capacity));
        _slots = new Slot[size];
        _mask = size - 1;
        for (int i = 0; i < size; i++)
        {
            _slots[i].Sequence = i;
        }
    }

    public int Capacity => _slots.Length;

    /// <summary>Claims a slot; false when the ring is full. Fill <see cref="RecordAt"/> then call <see cref="Publish"/>.</summary>
    public bool TryClaim(out long position)
    {
        long pos = Volatile.Read(ref _enqueue.Value);
        while (true)
        {
            long sequence = Volatile.Read(ref _slots[pos & _mask].Sequence);
            long difference = sequence - pos;
            if (difference == 0)
            {
                long seen = Interlocked.CompareExchange(ref _enqueue.Value, pos + 1, pos);
                if (seen == pos)
                {
                    position = pos;
                    return true;
                }
                pos = seen;
            }
            else if (difference < 0)
            {
                position = 0;
                return false; // the consumer has not freed this slot yet: full
            }
            else
            {
                pos = Volatile.Read(ref _enqueue.Value);
            }
        }
    }

    /// <summary>Records claimed and not yet released (racy snapshot, for the writer's wake-up heuristic).</summary>
    public long ApproximateCount => Volatile.Read(ref _enqueue.Value) - Volatile.Read(ref _dequeue.Value);

    public ref AccessLogRecord RecordAt(long position) => ref _slots[position & _mask].Record;

    public void Publish(long position) => Volatile.Write(ref _slots[position & _mask].Sequence, position + 1);

    /// <summary>Consumer only: the next published record, or false when none is ready.</summary>
    public bool TryPeek(out long position)
    {
        position = _dequeue.Value;
        return Volatile.Read(ref _slots[position & _mask].Sequence) == position + 1;
    }

    /// <summary>Consumer only: frees the slot read with <see cref="TryPeek"/>, dropping its references.</summary>
    public void Release(long position)
    {
        ref Slot slot = ref _slots[position & _mask];
        slot.Record = default;
        Volatile.Write(ref slot.Sequence, position + _mask + 1);
        _dequeue.Value = position + 1;
    }

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Explicit, Size = 128)]
    private struct PaddedLong
    {
        [System.Runtime.InteropServices.FieldOffset(64)]
        public long Value;
    }
}
