using System.Buffers;

namespace Proxy.Http2;

internal enum PrefaceCheck : byte
{
    /// <summary>The buffer matches the start of the preface but is shorter than it.</summary>
    NeedMore,
    /// <summary>The buffer starts with the whole client connection preface: HTTP/2 with prior knowledge.</summary>
    Yes,
    /// <summary>Not the preface (an HTTP/1.1 request, or garbage).</summary>
    No,
}

/// <summary>The client connection preface (RFC 9113 section 3.4).</summary>
internal static class Http2Preface
{
    public const int Length = 24;

    /// <summary>"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", sent by the client before its SETTINGS.</summary>
    public static ReadOnlySpan<byte> ClientPreface => "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8;

    /// <summary>
    /// Tells from the first bytes of a connection whether it speaks HTTP/2 with prior knowledge (h2c on a
    /// port that also serves HTTP/1.1). Decides as soon as one byte differs, so an HTTP/1.1 request line
    /// is never held back waiting for 24 bytes.
    /// </summary>
    public static PrefaceCheck Check(in ReadOnlySequence<byte> buffer)
    {
        ReadOnlySpan<byte> preface = ClientPreface;
        if (buffer.FirstSpan.Length >= Length)
        {
            return buffer.FirstSpan[..Length].SequenceEqual(preface) ? PrefaceCheck.Yes : PrefaceCheck.No;
        }
        int available = (int)Math.Min(buffer.Length, Length);
        Span<byte> head = stackalloc byte[Length];
        buffer.Slice(0, available).CopyTo(head);
        if (!head[..available].SequenceEqual(preface[..available]))
        {
            return PrefaceCheck.No;
        }
        return available == Length ? PrefaceCheck.Yes : PrefaceCheck.NeedMore;
    }
}
