using CsCheck;
using Proxy.Http2.HPack;
using static Proxy.Core.Tests.Http2.HPackTest;

namespace Proxy.Core.Tests.Http2;

public class HPackEncoderTests
{
    private static readonly string[] CommonNames =
        [":method", ":path", ":authority", ":status", "accept", "accept-encoding", "cookie", "user-agent", "x-request-id", "content-length"];

    private static readonly Gen<string> GenName = Gen.OneOf(
        Gen.OneOfConst(CommonNames),
        Gen.String[Gen.Char['a', 'z'], 1, 20]);

    /// <summary>Values over all octets 0..255, mostly printable, sometimes repeating a common one.</summary>
    private static readonly Gen<string> GenValue = Gen.OneOf(
        Gen.OneOfConst("GET", "/", "gzip, deflate", "200", "text/html"),
        Gen.String[Gen.Char[' ', '~'], 0, 60],
        Gen.String[Gen.Char['\0', '\u00ff'], 0, 30]);

    internal static readonly Gen<List<(string, string)>> GenFieldList = Gen.Select(GenName, GenValue).List[0, 25];

    [Fact]
    public void RoundTrip_RandomBlocksOnOneConnection_DecodeToInputAndTablesAgree()
    {
        Gen.Select(GenFieldList.Array[1, 6], Gen.OneOfConst(0, 64, 256, 4096), Gen.Bool).Sample((blocks, tableSize, huffman) =>
        {
            HPackEncoder encoder = new(tableSize, huffman: huffman);
            using HPackDecoder decoder = new(4096, maxHeaderListSize: 1 << 20);
            foreach (List<(string, string)> fields in blocks)
            {
                byte[] block = Encode(encoder, fields);
                (HPackError error, List<DecodedField> decoded) = Decode(decoder, block);
                Assert.Equal(HPackError.None, error);
                Assert.Equal(fields, decoded.ConvertAll(f => (f.Name, f.Value)));
                Assert.Equal(Table(encoder.DynamicTable), Table(decoder.DynamicTable));
            }
        });
    }

    [Fact]
    public void Encode_RepeatedField_BecomesOneIndexedOctet()
    {
        HPackEncoder encoder = new();
        byte[] first = Encode(encoder, [("x-trace", "abc123")]);
        byte[] second = Encode(encoder, [("x-trace", "abc123")]);
        Assert.True(first.Length > 1);
        Assert.Equal("be", Convert.ToHexStringLower(second)); // dynamic index 62
    }

    [Theory]
    [InlineData("authorization", false)]
    [InlineData("proxy-authorization", false)]
    [InlineData("cookie", true)]
    public void Encode_SensitiveField_NeverIndexedAndNotInTable(string name, bool cookieOption)
    {
        HPackEncoder encoder = new(neverIndexCookies: cookieOption);
        using HPackDecoder decoder = new();
        byte[] block = Encode(encoder, [(name, "secret-value")]);
        (HPackError error, List<DecodedField> fields) = Decode(decoder, block);
        Assert.Equal(HPackError.None, error);
        Assert.True(fields[0].NeverIndexed);
        Assert.Equal(0, encoder.DynamicTable.Count);
        Assert.Equal(0, decoder.DynamicTable.Count);
        Assert.Equal(0x10, block[0] & 0xF0); // 6.2.3 pattern 0001xxxx
    }

    [Fact]
    public void Encode_CookieWithoutOption_Indexed()
    {
        HPackEncoder encoder = new();
        Encode(encoder, [("cookie", "a=b")]);
        Assert.Equal([("cookie", "a=b")], Table(encoder.DynamicTable));
    }

    [Fact]
    public void Encode_NeverIndexedRequested_SetsFlagForAnyName()
    {
        HPackEncoder encoder = new();
        using HPackDecoder decoder = new();
        (_, List<DecodedField> fields) = Decode(decoder, Encode(encoder, [("x-api-key", "k")], HPackIndexing.NeverIndexed));
        Assert.True(fields[0].NeverIndexed);
        Assert.Equal(0, encoder.DynamicTable.Count);
    }

    [Fact]
    public void Encode_WithoutIndexing_LeavesTableAlone()
    {
        HPackEncoder encoder = new();
        byte[] block = Encode(encoder, [("content-length", "1234")], HPackIndexing.WithoutIndexing);
        Assert.Equal(0x0F, block[0]); // 0000 + name index 28 = 15 + 13
        Assert.Equal(0, encoder.DynamicTable.Count);
    }

    [Fact]
    public void BeginHeaderBlock_SizeLoweredThenRaised_WritesSmallestThenFinal()
    {
        HPackEncoder encoder = new(4096);
        encoder.SetPeerHeaderTableSize(0);
        encoder.SetPeerHeaderTableSize(1000);
        byte[] buffer = new byte[16];
        Assert.True(encoder.TryBeginHeaderBlock(buffer, out int written));
        Assert.Equal("20" + "3fc907", Convert.ToHexStringLower(buffer, 0, written)); // 0, then 1000 = 31 + 969
        Assert.True(encoder.TryBeginHeaderBlock(buffer, out written));
        Assert.Equal(0, written);
    }

    [Fact]
    public void BeginHeaderBlock_CapacityBelowDefault_AnnouncesItOnce()
    {
        HPackEncoder encoder = new(256);
        using HPackDecoder decoder = new();
        byte[] block = Encode(encoder, [(":method", "GET")]);
        Assert.Equal("3fe101" + "82", Convert.ToHexStringLower(block));
        Assert.Equal(HPackError.None, Decode(decoder, block).Error);
        Assert.Equal(256, decoder.DynamicTable.MaxSize);
    }

    [Fact]
    public void SetPeerHeaderTableSize_AboveCapacity_KeepsCapacity()
    {
        HPackEncoder encoder = new(4096);
        encoder.SetPeerHeaderTableSize(65536);
        byte[] buffer = new byte[16];
        Assert.True(encoder.TryBeginHeaderBlock(buffer, out int written));
        Assert.Equal(0, written);
        Assert.Equal(4096, encoder.DynamicTable.MaxSize);
    }

    [Fact]
    public void Encode_DestinationTooSmall_ReturnsFalseAndLeavesTable()
    {
        byte[] name = Bytes("x-custom-field");
        byte[] value = Bytes("some value that is not short");
        HPackEncoder sized = new();
        byte[] full = new byte[256];
        Assert.True(sized.TryEncode(name, value, HPackIndexing.Auto, full, out int needed));
        for (int size = 0; size < needed; size++)
        {
            HPackEncoder encoder = new();
            Assert.False(encoder.TryEncode(name, value, HPackIndexing.Auto, new byte[size], out _));
            Assert.Equal(0, encoder.DynamicTable.Count);
        }
    }

    [Fact]
    public void Encode_WarmEncoder_AllocatesNothing()
    {
        HPackEncoder encoder = new();
        byte[] buffer = new byte[4096];
        byte[][] names = [Bytes(":method"), Bytes(":path"), Bytes("user-agent"), Bytes("x-request-id")];
        byte[][] values = [Bytes("GET"), Bytes("/a/b/c?d=e"), Bytes("Mozilla/5.0 test"), Bytes("0123456789abcdef")];
        void Run()
        {
            encoder.TryBeginHeaderBlock(buffer, out int length);
            for (int i = 0; i < names.Length; i++)
            {
                encoder.TryEncode(names[i], values[i], HPackIndexing.Auto, buffer.AsSpan(length), out int written);
                length += written;
            }
        }
        long allocated = SteadyStateAllocation.BestOfRounds(Run, iterations: 100);
        Assert.Equal(0, allocated);
    }
}
