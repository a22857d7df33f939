using System.Buffers;
using System.Text;
using Proxy.Http;
using Proxy.Http1;

namespace Proxy.Core.Tests.Http1;

/// <summary>Builds multi-segment buffers and renders parsed heads for comparison.</summary>
internal static class Http1TestBuffers
{
    public static byte[] Bytes(string text) => Encoding.Latin1.GetBytes(text);

    public static string Text(ReadOnlySpan<byte> bytes) => Encoding.Latin1.GetString(bytes);

    /// <summary>A sequence made of the given parts, each its own segment (empty parts included).</summary>
    public static ReadOnlySequence<byte> Segments(params byte[][] parts)
    {
        if (parts.Length == 0)
        {
            return ReadOnlySequence<byte>.Empty;
        }
        Segment first = new(parts[0], 0);
        Segment last = first;
        for (int i = 1; i < parts.Length; i++)
        {
            last = last.Append(parts[i]);
        }
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    /// <summary><paramref name="data"/> cut at the given offsets (ascending).</summary>
    public static ReadOnlySequence<byte> Split(byte[] data, params int[] cuts)
    {
        byte[][] parts = new byte[cuts.Length + 1][];
        int start = 0;
        for (int i = 0; i < cuts.Length; i++)
        {
            parts[i] = data[start..cuts[i]];
            start = cuts[i];
        }
        parts[^1] = data[start..];
        return Segments(parts);
    }

    /// <summary>One byte per segment: the worst case for any cross-segment logic.</summary>
    public static ReadOnlySequence<byte> BytePerSegment(byte[] data)
    {
        byte[][] parts = new byte[data.Length][];
        for (int i = 0; i < data.Length; i++)
        {
            parts[i] = [data[i]];
        }
        return Segments(parts);
    }

    public static long Offset(in ReadOnlySequence<byte> buffer, SequencePosition position)
        => buffer.Slice(buffer.Start, position).Length;

    public static (HeadStatus Status, RejectReason Reason, long Consumed) Read(in ReadOnlySequence<byte> buffer,
        RequestHead head, HttpLimits? limits = null)
    {
        HeadStatus status = Http1RequestReader.TryRead(buffer, head, limits ?? HttpLimits.Default,
            out SequencePosition consumed, out RejectReason reason);
        return (status, reason, Offset(buffer, consumed));
    }

    public static (HeadStatus Status, RejectReason Reason, long Consumed, RequestHead Head) Read(string request,
        HttpLimits? limits = null)
    {
        RequestHead head = new();
        (HeadStatus status, RejectReason reason, long consumed) = Read(new ReadOnlySequence<byte>(Bytes(request)), head, limits);
        return (status, reason, consumed, head);
    }

    /// <summary>Everything the reader fills, as one string, so two parses can be compared exactly.</summary>
    public static string Describe(RequestHead head)
    {
        StringBuilder text = new();
        text.Append($"{head.Method}|{Text(head.MethodBytes)}|{Text(head.Target)}|{Text(head.Path)}|{Text(head.Query)}|{head.Version}");
        text.Append($"|host={head.HostIndex}|cl={head.ContentLength}|chunked={head.Chunked}|expect={head.ExpectContinue}");
        text.Append($"|conn={head.Connection}|upgrade={head.HasUpgradeField}|raw={Text(head.Raw)}");
        for (int i = 0; i < head.FieldCount; i++)
        {
            HeaderField f = head.Fields[i];
            text.Append($"\n{Text(head.Name(i))}={Text(head.Value(i))} ({f.Known},{f.HopByHop})");
        }
        return text.ToString();
    }

    public static string Describe(ResponseHead head)
    {
        StringBuilder text = new();
        text.Append($"{head.Version}|{head.StatusCode}|{Text(head.Reason)}|cl={head.ContentLength}|chunked={head.Chunked}");
        text.Append($"|conn={head.Connection}|upgrade={head.HasUpgradeField}");
        for (int i = 0; i < head.FieldCount; i++)
        {
            HeaderField f = head.Fields[i];
            text.Append($"\n{Text(head.Name(i))}={Text(head.Value(i))} ({f.Known},{f.HopByHop})");
        }
        return text.ToString();
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            Segment next = new(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
