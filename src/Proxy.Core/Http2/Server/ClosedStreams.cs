namespace Proxy.Http2.Server;

/// <summary>How a recently closed stream ended, which decides what a late frame on it gets (RFC 9113 section 5.1).</summary>
internal enum StreamClosure : byte
{
    /// <summary>Not among the recent closures: an old stream, or an id the client skipped.</summary>
    Unknown,
    /// <summary>We sent RST_STREAM: frames the client sent before it saw ours are expected and ignored.</summary>
    ResetByUs,
    /// <summary>The client sent RST_STREAM: anything but PRIORITY after it is a stream error STREAM_CLOSED.</summary>
    ResetByPeer,
    /// <summary>Both sides ended the stream: a frame after the client's END_STREAM is a connection error STREAM_CLOSED.</summary>
    Ended,
}

/// <summary>
/// The last few streams that closed on a connection and how. A late DATA or HEADERS on a stream that is no longer in
/// the table is legitimate after our own RST_STREAM (it was in flight) and a protocol error otherwise; the table
/// forgets a stream when it closes, so this ring remembers the difference for the most recent ones. Older streams
/// count as <see cref="StreamClosure.Unknown"/> and are treated leniently. Not thread-safe: callers hold the
/// connection's lock.
/// </summary>
internal sealed class ClosedStreams
{
    private const int Capacity = 32;
    private readonly long[] _entries = new long[Capacity]; // (stream id << 8) | closure; 0 is empty (stream 0 is never a stream)
    private int _next;

    public void Add(int streamId, StreamClosure closure)
    {
        _entries[_next] = ((long)streamId << 8) | (byte)closure;
        _next = (_next + 1) % Capacity;
    }

    /// <summary>Our own reset wins over anything else recorded for the stream (its late frames must be ignored);
    /// otherwise the most recent record.</summary>
    public StreamClosure Find(int streamId)
    {
        StreamClosure found = StreamClosure.Unknown;
        for (int i = 1; i <= Capacity; i++)
        {
            long entry = _entries[(_next - i + Capacity) % Capacity];
            if (entry >> 8 != streamId)
            {
                continue;
            }
            var closure = (StreamClosure)(byte)entry;
            if (closure == StreamClosure.ResetByUs)
            {
                return closure;
            }
            if (found == StreamClosure.Unknown)
            {
                found = closure;
            }
        }
        return found;
    }
}
