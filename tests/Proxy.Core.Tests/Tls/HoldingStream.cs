namespace Proxy.Core.Tests.Tls;

/// <summary>
/// A stream under a client's SslStream that passes everything through, except writes while <see cref="Hold"/> is set:
/// those are kept, so a test gets the exact bytes of a TLS record and can send them in pieces of its choosing.
/// </summary>
internal sealed class HoldingStream(Stream inner) : Stream
{
    private readonly MemoryStream _held = new();

    public bool Hold { get; set; }

    /// <summary>The bytes held so far (then forgotten).</summary>
    public byte[] TakeHeld()
    {
        byte[] bytes = _held.ToArray();
        _held.SetLength(0);
        return bytes;
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => inner.ReadAsync(buffer, offset, count, cancellationToken);

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (Hold)
        {
            _held.Write(buffer);
            return;
        }
        inner.Write(buffer);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (Hold)
        {
            _held.Write(buffer.Span);
            return ValueTask.CompletedTask;
        }
        return inner.WriteAsync(buffer, cancellationToken);
    }

    public override void Flush() => inner.Flush();
    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }
        base.Dispose(disposing);
    }
}
