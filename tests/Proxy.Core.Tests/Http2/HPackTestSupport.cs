using System.Text;
using Proxy.Http2.HPack;

namespace Proxy.Core.Tests.Http2;

/// <summary>One decoded field as the sink saw it: how it arrived (static index or literal) and its flag.</summary>
internal sealed record DecodedField(string Name, string Value, bool NeverIndexed, int StaticIndex)
{
    public override string ToString() => $"{Name}: {Value}{(NeverIndexed ? " (never)" : "")}";
}

/// <summary>Records every callback, resolving static indices through the static table.</summary>
internal sealed class RecordingSink : IHeaderSink
{
    public List<DecodedField> Fields { get; } = [];

    public void OnStaticIndexedHeader(int index)
        => Fields.Add(new(HPackTest.Text(HPackStaticTable.Name(index)), HPackTest.Text(HPackStaticTable.Value(index)), false, index));

    public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed)
        => Fields.Add(new(HPackTest.Text(HPackStaticTable.Name(index)), HPackTest.Text(value), neverIndexed, index));

    public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed)
        => Fields.Add(new(HPackTest.Text(name), HPackTest.Text(value), neverIndexed, 0));

    public List<(string, string)> Pairs() => Fields.ConvertAll(f => (f.Name, f.Value));
}

/// <summary>A sink that only counts, as a struct: what a connection would use, and allocation-free.</summary>
internal struct CountingSink : IHeaderSink
{
    public int Count;
    public int Bytes;

    public void OnStaticIndexedHeader(int index) => Count++;

    public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed)
    {
        Count++;
        Bytes += value.Length;
    }

    public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed)
    {
        Count++;
        Bytes += name.Length + value.Length;
    }
}

internal static class HPackTest
{
    public static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", ""));

    public static byte[] Bytes(string text) => Encoding.Latin1.GetBytes(text);

    public static string Text(ReadOnlySpan<byte> bytes) => Encoding.Latin1.GetString(bytes);

    /// <summary>Decodes one whole block; returns the error and the fields delivered before it.</summary>
    public static (HPackError Error, List<DecodedField> Fields) Decode(HPackDecoder decoder, byte[] block)
    {
        RecordingSink sink = new();
        HPackError error = decoder.Decode(block, endHeaders: true, ref sink);
        return (error, sink.Fields);
    }

    /// <summary>Decodes a block delivered as the given fragments (the last one ends the block).</summary>
    public static (HPackError Error, List<DecodedField> Fields) DecodeFragments(HPackDecoder decoder, byte[] block,
        params int[] cuts)
    {
        RecordingSink sink = new();
        int start = 0;
        for (int i = 0; i <= cuts.Length; i++)
        {
            int end = i < cuts.Length ? cuts[i] : block.Length;
            // A fresh array per fragment: a decoder keeping a slice of an earlier one would read garbage.
            byte[] fragment = block[start..end];
            HPackError error = decoder.Decode(fragment, endHeaders: i == cuts.Length, ref sink);
            Array.Fill(fragment, (byte)0xEE);
            if (error != HPackError.None)
            {
                return (error, sink.Fields);
            }
            start = end;
        }
        return (HPackError.None, sink.Fields);
    }

    /// <summary>The dynamic table, newest first, as the RFC's appendix lists it.</summary>
    public static List<(string, string)> Table(HPackDynamicTable table)
    {
        List<(string, string)> entries = [];
        for (int i = 0; i < table.Count; i++)
        {
            entries.Add((Text(table.Name(i)), Text(table.Value(i))));
        }
        return entries;
    }

    /// <summary>Encodes a field list as one block with <paramref name="encoder"/>.</summary>
    public static byte[] Encode(HPackEncoder encoder, IEnumerable<(string Name, string Value)> fields,
        HPackIndexing indexing = HPackIndexing.Auto, bool beginBlock = true)
    {
        byte[] buffer = new byte[64 * 1024];
        int length = 0;
        if (beginBlock)
        {
            Assert.True(encoder.TryBeginHeaderBlock(buffer, out length));
        }
        foreach ((string name, string value) in fields)
        {
            Assert.True(encoder.TryEncode(Bytes(name), Bytes(value), indexing, buffer.AsSpan(length), out int written));
            length += written;
        }
        return buffer[..length];
    }
}
