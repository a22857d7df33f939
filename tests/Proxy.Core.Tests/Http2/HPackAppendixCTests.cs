using Proxy.Http2.HPack;
using static Proxy.Core.Tests.Http2.HPackTest;

namespace Proxy.Core.Tests.Http2;

/// <summary>RFC 7541 appendix C, byte for byte: decoded lists, dynamic table contents (newest first) and sizes.</summary>
public class HPackAppendixCTests
{
    private static readonly (string, string)[] Request1 =
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
    private static readonly (string, string)[] Request2 =
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"), ("cache-control", "no-cache")];
    private static readonly (string, string)[] Request3 =
        [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"), ("custom-key", "custom-value")];
    private static readonly (string, string)[] RequestTable1 = [(":authority", "www.example.com")];
    private static readonly (string, string)[] RequestTable2 = [("cache-control", "no-cache"), (":authority", "www.example.com")];
    private static readonly (string, string)[] RequestTable3 =
        [("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")];

    private const string Date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
    private const string Date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
    private const string Location = "https://www.example.com";
    private const string Cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    private static readonly (string, string)[] Response1 =
        [(":status", "302"), ("cache-control", "private"), ("date", Date1), ("location", Location)];
    private static readonly (string, string)[] Response2 =
        [(":status", "307"), ("cache-control", "private"), ("date", Date1), ("location", Location)];
    private static readonly (string, string)[] Response3 =
        [(":status", "200"), ("cache-control", "private"), ("date", Date2), ("location", Location), ("content-encoding", "gzip"), ("set-cookie", Cookie)];
    private static readonly (string, string)[] ResponseTable1 =
        [("location", Location), ("date", Date1), ("cache-control", "private"), (":status", "302")];
    private static readonly (string, string)[] ResponseTable2 =
        [(":status", "307"), ("location", Location), ("date", Date1), ("cache-control", "private")];
    private static readonly (string, string)[] ResponseTable3 =
        [("set-cookie", Cookie), ("content-encoding", "gzip"), ("date", Date2)];

    public static readonly string[] C3 =
    [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    public static readonly string[] C4 =
    [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];
    public static readonly string[] C5 =
    [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ];
    public static readonly string[] C6 =
    [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ];

    public static TheoryData<string> Sequences => new() { "C.3", "C.4", "C.5", "C.6" };

    private static (string[] Blocks, (string, string)[][] Lists, (string, string)[][] Tables, int[] Sizes, int TableSize) Sequence(string name)
        => name switch
        {
            "C.3" => (C3, [Request1, Request2, Request3], [RequestTable1, RequestTable2, RequestTable3], [57, 110, 164], 4096),
            "C.4" => (C4, [Request1, Request2, Request3], [RequestTable1, RequestTable2, RequestTable3], [57, 110, 164], 4096),
            "C.5" => (C5, [Response1, Response2, Response3], [ResponseTable1, ResponseTable2, ResponseTable3], [222, 222, 215], 256),
            _ => (C6, [Response1, Response2, Response3], [ResponseTable1, ResponseTable2, ResponseTable3], [222, 222, 215], 256),
        };

    [Theory]
    [InlineData("0a", 5, 10)]       // C.1.1
    [InlineData("1f9a0a", 5, 1337)] // C.1.2
    [InlineData("2a", 8, 42)]       // C.1.3
    public void Integer_AppendixC1_DecodesAndEncodesExactly(string hex, int prefix, int value)
    {
        Assert.Equal(HPackError.None, HPackInteger.TryDecode(Hex(hex), prefix, out int decoded, out int consumed));
        Assert.Equal(value, decoded);
        Assert.Equal(hex.Length / 2, consumed);
        byte[] buffer = new byte[8];
        Assert.True(HPackInteger.TryEncode(value, prefix, 0, buffer, out int written));
        Assert.Equal(hex, Convert.ToHexStringLower(buffer, 0, written));
    }

    [Fact]
    public void Decode_C21LiteralWithIndexing_AddsEntryOfSize55()
    {
        using HPackDecoder decoder = new();
        (HPackError error, List<DecodedField> fields) = Decode(decoder,
            Hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"));
        Assert.Equal(HPackError.None, error);
        Assert.Equal([new DecodedField("custom-key", "custom-header", false, 0)], fields);
        Assert.Equal([("custom-key", "custom-header")], Table(decoder.DynamicTable));
        Assert.Equal(55, decoder.DynamicTable.Size);
    }

    [Fact]
    public void Decode_C22LiteralWithoutIndexing_LeavesTableEmpty()
    {
        using HPackDecoder decoder = new();
        (HPackError error, List<DecodedField> fields) = Decode(decoder, Hex("040c 2f73 616d 706c 652f 7061 7468"));
        Assert.Equal(HPackError.None, error);
        Assert.Equal([new DecodedField(":path", "/sample/path", false, 4)], fields);
        Assert.Equal(0, decoder.DynamicTable.Count);
        Assert.Equal(0, decoder.DynamicTable.Size);
    }

    [Fact]
    public void Decode_C23NeverIndexed_FlagsFieldAndLeavesTableEmpty()
    {
        using HPackDecoder decoder = new();
        (HPackError error, List<DecodedField> fields) = Decode(decoder, Hex("1008 7061 7373 776f 7264 0673 6563 7265 74"));
        Assert.Equal(HPackError.None, error);
        Assert.Equal([new DecodedField("password", "secret", true, 0)], fields);
        Assert.Equal(0, decoder.DynamicTable.Count);
    }

    [Fact]
    public void Decode_C24Indexed_ReportsStaticIndex2()
    {
        using HPackDecoder decoder = new();
        (HPackError error, List<DecodedField> fields) = Decode(decoder, Hex("82"));
        Assert.Equal(HPackError.None, error);
        Assert.Equal([new DecodedField(":method", "GET", false, 2)], fields);
        Assert.Equal(0, decoder.DynamicTable.Count);
    }

    [Theory]
    [MemberData(nameof(Sequences))]
    public void Decode_AppendixSequence_MatchesListsTablesAndSizes(string name)
    {
        var sequence = Sequence(name);
        using HPackDecoder decoder = new(sequence.TableSize);
        for (int i = 0; i < sequence.Blocks.Length; i++)
        {
            (HPackError error, List<DecodedField> fields) = Decode(decoder, Hex(sequence.Blocks[i]));
            Assert.Equal(HPackError.None, error);
            Assert.Equal(sequence.Lists[i], fields.ConvertAll(f => (f.Name, f.Value)));
            Assert.Equal(sequence.Tables[i], Table(decoder.DynamicTable));
            Assert.Equal(sequence.Sizes[i], decoder.DynamicTable.Size);
        }
    }

    [Theory]
    [MemberData(nameof(Sequences))]
    public void Encode_AppendixSequence_ReproducesBlocksAndTables(string name)
    {
        var sequence = Sequence(name);
        bool huffman = name is "C.4" or "C.6";
        // The appendix assumes the 256-octet table was agreed through SETTINGS: no size update in the blocks.
        HPackEncoder encoder = new(sequence.TableSize, huffman: huffman);
        for (int i = 0; i < sequence.Blocks.Length; i++)
        {
            byte[] block = Encode(encoder, sequence.Lists[i], beginBlock: sequence.TableSize == 4096);
            string expected = sequence.Blocks[i].Replace(" ", "");
            if (name == "C.6" && i == 1)
            {
                // "307" is 3 octets both ways; the appendix's encoder chose Huffman, ours keeps raw on a tie
                // (cheaper to decode). Same fields and table either way.
                expected = "4803333037c1c0bf";
            }
            Assert.Equal(expected, Convert.ToHexStringLower(block));
            Assert.Equal(sequence.Tables[i], Table(encoder.DynamicTable));
            Assert.Equal(sequence.Sizes[i], encoder.DynamicTable.Size);
        }
    }
}
