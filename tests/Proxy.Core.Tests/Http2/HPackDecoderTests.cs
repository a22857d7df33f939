using CsCheck;
using Proxy.Http2;
using Proxy.Http2.HPack;
using static Proxy.Core.Tests.Http2.HPackTest;

namespace Proxy.Core.Tests.Http2;

public class HPackDecoderTests
{
    private static byte[] Integer(int value, int prefix, byte flags)
    {
        byte[] buffer = new byte[8];
        HPackInteger.TryEncode(value, prefix, flags, buffer, out int written);
        return buffer[..written];
    }

    private static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    // ---- resumability -------------------------------------------------------------------------------------

    [Theory]
    [InlineData("C.3")]
    [InlineData("C.4")]
    [InlineData("C.5")]
    [InlineData("C.6")]
    public void Decode_EverySplitPoint_SameFieldsAndTable(string name)
    {
        (string[] blocks, int tableSize) = name switch
        {
            "C.3" => (HPackAppendixCTests.C3, 4096),
            "C.4" => (HPackAppendixCTests.C4, 4096),
            "C.5" => (HPackAppendixCTests.C5, 256),
            _ => (HPackAppendixCTests.C6, 256),
        };
        for (int b = 0; b < blocks.Length; b++)
        {
            byte[] block = Hex(blocks[b]);
            using HPackDecoder reference = new(tableSize);
            for (int i = 0; i < b; i++)
            {
                Decode(reference, Hex(blocks[i]));
            }
            List<DecodedField> expected = Decode(reference, block).Fields;
            for (int cut = 0; cut <= block.Length; cut++)
            {
                using HPackDecoder decoder = new(tableSize);
                for (int i = 0; i < b; i++)
                {
                    Decode(decoder, Hex(blocks[i]));
                }
                (HPackError error, List<DecodedField> fields) = DecodeFragments(decoder, block, cut);
                Assert.Equal(HPackError.None, error);
                Assert.Equal(expected, fields);
                Assert.Equal(Table(reference.DynamicTable), Table(decoder.DynamicTable));
            }
        }
    }

    [Fact]
    public void Decode_OneOctetPerFragment_SameFields()
    {
        byte[] block = Hex(HPackAppendixCTests.C6[0]);
        using HPackDecoder decoder = new(256);
        int[] cuts = Enumerable.Range(1, block.Length - 1).ToArray();
        (HPackError error, List<DecodedField> fields) = DecodeFragments(decoder, block, cuts);
        Assert.Equal(HPackError.None, error);
        Assert.Equal(4, fields.Count);
        Assert.Equal("https://www.example.com", fields[3].Value);
    }

    [Fact]
    public void Decode_RandomListsAtRandomCuts_RoundTrip()
    {
        Gen.Select(HPackEncoderTests.GenFieldList, Gen.Int[0, 10_000].Array[0, 6], Gen.Bool).Sample((fields, cutSeeds, huffman) =>
        {
            HPackEncoder encoder = new(huffman: huffman);
            byte[] block = Encode(encoder, fields);
            int[] cuts = cutSeeds.Select(s => s % (block.Length + 1)).Order().ToArray();
            using HPackDecoder decoder = new(maxHeaderListSize: 1 << 20);
            (HPackError error, List<DecodedField> decoded) = DecodeFragments(decoder, block, cuts);
            Assert.Equal(HPackError.None, error);
            Assert.Equal(fields, decoded.ConvertAll(f => (f.Name, f.Value)));
        });
    }

    [Fact]
    public void Decode_MultiSegmentSequence_SameFields()
    {
        byte[] block = Hex(HPackAppendixCTests.C4[2]);
        using HPackDecoder decoder = new();
        Decode(decoder, Hex(HPackAppendixCTests.C4[0]));
        Decode(decoder, Hex(HPackAppendixCTests.C4[1]));
        RecordingSink sink = new();
        HPackError error = decoder.Decode(Http1.Http1TestBuffers.BytePerSegment(block), endHeaders: true, ref sink);
        Assert.Equal(HPackError.None, error);
        Assert.Equal(("custom-key", "custom-value"), sink.Pairs()[4]);
    }

    // ---- malformed input ----------------------------------------------------------------------------------

    [Theory]
    [InlineData("ffffffffff0f")]   // 127 + 7-bit groups up to 15 << 28: above 2^31-1
    [InlineData("ff80808080808000")] // zero-valued continuation octets past the fifth
    [InlineData("3fffffffff0f")]   // same overflow in a size update
    [InlineData("00ffffffffff0f")] // and in a string length
    public void Decode_IntegerOverflow_ReturnsIntegerOverflow(string hex)
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.IntegerOverflow, Decode(decoder, Hex(hex)).Error);
    }

    [Fact]
    public void Decode_IndexZero_ReturnsIndexZero()
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.IndexZero, Decode(decoder, Hex("80")).Error);
    }

    [Theory]
    [InlineData("be")]       // indexed 62, empty dynamic table
    [InlineData("7e0161")]   // literal with name index 62
    [InlineData("0f2f0161")] // literal without indexing, name index 62 (4-bit prefix: 15 + 47)
    [InlineData("ff8001")]   // indexed 255
    public void Decode_IndexBeyondTables_ReturnsIndexOutOfRange(string hex)
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.IndexOutOfRange, Decode(decoder, Hex(hex)).Error);
    }

    [Fact]
    public void Decode_IndexPastDynamicEntries_ReturnsIndexOutOfRange()
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.None, Decode(decoder, Hex("400161 0162".Replace(" ", ""))).Error);
        Assert.Equal(HPackError.None, Decode(decoder, Hex("be")).Error);
        Assert.Equal(HPackError.IndexOutOfRange, Decode(decoder, Hex("bf")).Error);
    }

    [Theory]
    [InlineData("000161 84ffffffff", (int)HPackError.HuffmanEos)]
    [InlineData("000161 821fff", (int)HPackError.HuffmanPaddingTooLong)]
    [InlineData("000161 8100", (int)HPackError.HuffmanPaddingNotOnes)]
    [InlineData("0081ff 0161", (int)HPackError.HuffmanPaddingTooLong)] // in the name
    public void Decode_BadHuffmanLiteral_ReturnsSpecificError(string hex, int expected)
    {
        using HPackDecoder decoder = new();
        Assert.Equal((HPackError)expected, Decode(decoder, Hex(hex)).Error);
    }

    [Fact]
    public void Decode_SizeUpdateAboveSetting_ReturnsTableSizeUpdateTooLarge()
    {
        using HPackDecoder decoder = new(4096);
        Assert.Equal(HPackError.None, Decode(decoder, Concat(Integer(4096, 5, 0x20), [0x82])).Error);
        using HPackDecoder other = new(4096);
        Assert.Equal(HPackError.TableSizeUpdateTooLarge, Decode(other, Concat(Integer(4097, 5, 0x20), [0x82])).Error);
    }

    [Fact]
    public void Decode_SizeUpdateAfterField_ReturnsTableSizeUpdateNotAtStart()
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.TableSizeUpdateNotAtStart, Decode(decoder, Hex("8220")).Error);
    }

    [Fact]
    public void Decode_SizeUpdatesAtStartOfEachBlock_Accepted()
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.None, Decode(decoder, Concat([0x20], Integer(100, 5, 0x20), [0x82])).Error);
        Assert.Equal(100, decoder.DynamicTable.MaxSize);
        Assert.Equal(HPackError.None, Decode(decoder, Concat(Integer(200, 5, 0x20), [0x82])).Error);
        Assert.Equal(200, decoder.DynamicTable.MaxSize);
    }

    [Fact]
    public void Decode_SizeUpdateToZero_EmptiesTable()
    {
        using HPackDecoder decoder = new();
        Decode(decoder, Hex(HPackAppendixCTests.C3[0]));
        Decode(decoder, Hex(HPackAppendixCTests.C3[1]));
        Assert.Equal(2, decoder.DynamicTable.Count);
        Assert.Equal(HPackError.None, Decode(decoder, Hex("20")).Error);
        Assert.Equal(0, decoder.DynamicTable.Count);
    }

    [Fact]
    public void Decode_SettingLoweredWithoutSizeUpdate_ReturnsTableSizeUpdateMissing()
    {
        using HPackDecoder decoder = new();
        decoder.UpdateHeaderTableSize(100);
        Assert.Equal(HPackError.TableSizeUpdateMissing, Decode(decoder, Hex("82")).Error);

        using HPackDecoder compliant = new();
        compliant.UpdateHeaderTableSize(100);
        Assert.Equal(HPackError.TableSizeUpdateTooLarge, Decode(compliant, Concat(Integer(101, 5, 0x20), [0x82])).Error);

        using HPackDecoder third = new();
        third.UpdateHeaderTableSize(100);
        Assert.Equal(HPackError.None, Decode(third, Concat(Integer(100, 5, 0x20), [0x82])).Error);
        Assert.Equal(HPackError.None, Decode(third, Hex("82")).Error);
    }

    [Fact]
    public void Decode_SettingRaised_AcceptsLargerTable()
    {
        using HPackDecoder decoder = new(4096);
        decoder.UpdateHeaderTableSize(8192);
        Assert.Equal(HPackError.None, Decode(decoder, Concat(Integer(8192, 5, 0x20), [0x82])).Error);
        Assert.Equal(8192, decoder.DynamicTable.MaxSize);
    }

    [Theory]
    [InlineData("000561 62")]   // name length 5, block holds 2
    [InlineData("000161 0568")] // value length 5, block holds 1
    [InlineData("ff")]          // integer cut short
    [InlineData("40")]          // representation without its name
    [InlineData("000161 85ff")] // Huffman value cut short
    public void Decode_BlockEndsInsideField_ReturnsIncompleteHeaderBlock(string hex)
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.IncompleteHeaderBlock, Decode(decoder, Hex(hex)).Error);
    }

    [Fact]
    public void Decode_AfterError_KeepsReturningIt()
    {
        using HPackDecoder decoder = new();
        Assert.Equal(HPackError.IndexZero, Decode(decoder, Hex("80")).Error);
        Assert.Equal(HPackError.IndexZero, Decode(decoder, Hex("82")).Error);
        Assert.Equal(Http2ErrorCode.COMPRESSION_ERROR, HPackError.IndexZero.ToHttp2ErrorCode());
    }

    // ---- header list limit --------------------------------------------------------------------------------

    [Fact]
    public void Decode_HPackBomb_StoppedByListSizeLimit()
    {
        // One 4 KiB entry, then a block of 10,000 one-octet references to it: 40 MB if expanded.
        const int limit = 16 * 1024;
        using HPackDecoder decoder = new(4096, limit);
        byte[] insert = Concat([0x40, 0x01, (byte)'x'], Integer(4000, 7, 0), Enumerable.Repeat((byte)'v', 4000).ToArray());
        Assert.Equal(HPackError.None, Decode(decoder, insert).Error);
        byte[] bomb = Enumerable.Repeat((byte)0xBE, 10_000).ToArray();
        (HPackError error, List<DecodedField> fields) = Decode(decoder, bomb);
        Assert.Equal(HPackError.HeaderListTooLarge, error);
        Assert.Equal(limit / (1 + 4000 + 32), fields.Count);
    }

    [Fact]
    public void Decode_DeclaredStringLongerThanLimit_FailsBeforeTheOctetsArrive()
    {
        using HPackDecoder decoder = new(maxHeaderListSize: 1024);
        RecordingSink sink = new();
        byte[] prefix = Concat([0x00, 0x01, (byte)'a'], Integer(1_000_000, 7, 0));
        Assert.Equal(HPackError.HeaderListTooLarge, decoder.Decode(prefix, endHeaders: false, ref sink));
    }

    [Fact]
    public void Decode_HuffmanValueDecodingPastLimit_ReturnsHeaderListTooLarge()
    {
        using HPackDecoder decoder = new(maxHeaderListSize: 100);
        byte[] value = Enumerable.Repeat((byte)'a', 80).ToArray(); // 50 Huffman octets, 80 decoded
        byte[] huffman = new byte[HPackHuffman.GetEncodedLength(value)];
        HPackHuffman.TryEncode(value, huffman, out _);
        byte[] block = Concat([0x00, 0x01, (byte)'n'], Integer(huffman.Length, 7, 0x80), huffman);
        Assert.Equal(HPackError.HeaderListTooLarge, Decode(decoder, block).Error);
    }

    [Fact]
    public void Decode_ListExactlyAtLimit_Accepted()
    {
        // "a: bc" = 1 + 2 + 32 = 35, twice = 70.
        byte[] field = Hex("000161 026263");
        using HPackDecoder atLimit = new(maxHeaderListSize: 70);
        Assert.Equal(HPackError.None, Decode(atLimit, Concat(field, field)).Error);
        Assert.Equal(HPackError.None, Decode(atLimit, Concat(field, field)).Error); // the count restarts per block
        using HPackDecoder below = new(maxHeaderListSize: 69);
        Assert.Equal(HPackError.HeaderListTooLarge, Decode(below, Concat(field, field)).Error);
    }

    // ---- allocation ---------------------------------------------------------------------------------------

    [Fact]
    public void Decode_WarmDecoder_AllocatesNothing()
    {
        byte[][] blocks = HPackAppendixCTests.C4.Select(Hex).ToArray();
        using HPackDecoder decoder = new();
        CountingSink sink = default;
        void Run()
        {
            foreach (byte[] block in blocks)
            {
                decoder.Decode(block.AsSpan(0, 7), endHeaders: false, ref sink);
                decoder.Decode(block.AsSpan(7), endHeaders: true, ref sink);
            }
        }
        Run();
        long allocated = SteadyStateAllocation.BestOfRounds(Run, iterations: 100);
        Assert.Equal(0, allocated);
        Assert.True(sink.Count > 0);
    }
}
