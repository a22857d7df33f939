using System.Buffers;
using System.Buffers.Text;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;

namespace Proxy.Http;

/// <summary>
/// Span writes into a <see cref="PipeWriter"/> without allocating: callers append header bytes straight into the
/// pipe's pooled memory and flush once per message.
/// </summary>
internal static class HttpWriting
{
    /// <summary>
    /// The most a write or a field line asks the pipe for at once. A body segment or a long field value can be larger
    /// than the pipe's blocks (upstream reads fill 32 KiB blocks, writers have 16 KiB ones), and a pipe serves a larger
    /// request from the shared array pool, allocating an owner each time: past this, a write fills what the pipe has
    /// and continues in new blocks.
    /// </summary>
    private const int MaxSpanHint = 4096;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write(this PipeWriter writer, ReadOnlySpan<byte> bytes)
    {
        Span<byte> span = writer.GetSpan(Math.Min(bytes.Length, MaxSpanHint));
        if (span.Length >= bytes.Length)
        {
            bytes.CopyTo(span);
            writer.Advance(bytes.Length);
            return;
        }
        WriteMultiSegment(writer, bytes);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void WriteMultiSegment(PipeWriter writer, ReadOnlySpan<byte> bytes)
    {
        while (bytes.Length > 0)
        {
            Span<byte> span = writer.GetSpan(1);
            int n = Math.Min(span.Length, bytes.Length);
            bytes[..n].CopyTo(span);
            writer.Advance(n);
            bytes = bytes[n..];
        }
    }

    public static void Write(this PipeWriter writer, in ReadOnlySequence<byte> bytes)
    {
        if (bytes.IsSingleSegment)
        {
            writer.Write(bytes.FirstSpan);
            return;
        }
        foreach (ReadOnlyMemory<byte> segment in bytes)
        {
            writer.Write(segment.Span);
        }
    }

    /// <summary>Writes a non-negative decimal number.</summary>
    public static void WriteNumber(this PipeWriter writer, long value)
    {
        Span<byte> span = writer.GetSpan(20);
        Utf8Formatter.TryFormat(value, span, out int written);
        writer.Advance(written);
    }

    /// <summary>Writes a chunk-size line: hex length and CRLF (RFC 9112 section 7.1).</summary>
    public static void WriteChunkHeader(this PipeWriter writer, long length)
    {
        Span<byte> span = writer.GetSpan(18);
        Utf8Formatter.TryFormat(length, span, out int written, new StandardFormat('x'));
        span[written++] = (byte)'\r';
        span[written++] = (byte)'\n';
        writer.Advance(written);
    }

    /// <summary>"name: value\r\n".</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void WriteField(this PipeWriter writer, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        int length = name.Length + value.Length + 4;
        Span<byte> span = writer.GetSpan(Math.Min(length, MaxSpanHint));
        if (span.Length >= length)
        {
            FormatField(span, name, value);
            writer.Advance(length);
            return;
        }
        writer.Write(name);
        writer.Write(": "u8);
        writer.Write(value);
        writer.Write("\r\n"u8);
    }

    /// <summary>
    /// Formats "name: value\r\n" at the start of <paramref name="destination"/>, which holds at least
    /// name.Length + value.Length + 4 bytes; returns that length. Every field line the proxy composes goes through here.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int FormatField(Span<byte> destination, scoped ReadOnlySpan<byte> name, scoped ReadOnlySpan<byte> value)
    {
        int length = name.Length + value.Length + 4;
        name.CopyTo(destination);
        destination[name.Length] = (byte)':';
        destination[name.Length + 1] = (byte)' ';
        value.CopyTo(destination[(name.Length + 2)..]);
        destination[length - 2] = (byte)'\r';
        destination[length - 1] = (byte)'\n';
        return length;
    }
}
