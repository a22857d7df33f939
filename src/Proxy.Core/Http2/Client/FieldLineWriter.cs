using System.IO.Pipelines;

namespace Proxy.Http2.Client;

/// <summary>
/// A reusable in-memory <see cref="PipeWriter"/>: the HTTP/2 path lets the shared HTTP/1.1 field writer
/// (<c>UpstreamRequestWriter.WriteFields</c>) write its field lines here, then re-encodes them with
/// HPACK. One per forwarder, grown to the largest head seen and kept: no allocation per request once warm.
/// </summary>
internal sealed class FieldLineWriter : PipeWriter
{
    private byte[] _buffer = new byte[1024];
    private int _length;

    public byte[] Buffer => _buffer;
    public int Length => _length;
    public ReadOnlySpan<byte> Written => _buffer.AsSpan(0, _length);

    public void Reset() => _length = 0;

    public override void Advance(int bytes) => _length += bytes;

    public override Memory<byte> GetMemory(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _buffer.AsMemory(_length);
    }

    public override Span<byte> GetSpan(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _buffer.AsSpan(_length);
    }

    private void Ensure(int sizeHint)
    {
        int needed = _length + Math.Max(sizeHint, 1);
        if (needed > _buffer.Length)
        {
            Array.Resize(ref _buffer, Math.Max(needed, _buffer.Length * 2));
        }
    }

    public override void CancelPendingFlush()
    {
    }

    public override void Complete(Exception? exception = null)
    {
    }

    public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default) => new(new FlushResult(false, false));
}
