using CsCheck;
using Proxy.Http2.HPack;
using static Proxy.Core.Tests.Http2.HPackTest;

namespace Proxy.Core.Tests.Http2;

public class HPackHuffmanTests
{
    [Theory]
    [InlineData("a", "1f")]        // 'a' = 00011, then 3 padding ones
    [InlineData("0", "07")]        // '0' = 00000
    [InlineData("www.example.com", "f1e3c2e5f23a6ba0ab90f4ff")] // RFC 7541 C.4.1
    [InlineData("no-cache", "a8eb10649cbf")]                     // RFC 7541 C.4.2
    [InlineData("", "")]
    public void Encode_KnownStrings_MatchAppendixB(string text, string hex)
    {
        byte[] buffer = new byte[64];
        Assert.True(HPackHuffman.TryEncode(Bytes(text), buffer, out int written));
        Assert.Equal(hex, Convert.ToHexStringLower(buffer, 0, written));
        Assert.Equal(written, HPackHuffman.GetEncodedLength(Bytes(text)));
    }

    [Fact]
    public void Encode_Byte255_Uses26BitCode()
    {
        // RFC 7541 appendix B: 255 = 3ffffee [26], then 6 padding ones: ff ff fb bf.
        byte[] buffer = new byte[8];
        Assert.True(HPackHuffman.TryEncode([255], buffer, out int written));
        Assert.Equal("fffffbbf", Convert.ToHexStringLower(buffer, 0, written));
    }

    [Fact]
    public void RoundTrip_RandomBytes_DecodesToInput()
    {
        Gen.Byte.Array[0, 300].Sample(input =>
        {
            byte[] encoded = new byte[HPackHuffman.GetEncodedLength(input)];
            Assert.True(HPackHuffman.TryEncode(input, encoded, out int written));
            Assert.Equal(encoded.Length, written);
            byte[] decoded = new byte[input.Length];
            Assert.Equal(HPackError.None, HPackHuffman.Decode(encoded, decoded, out int length));
            Assert.Equal(input, decoded[..length]);
        });
    }

    [Fact]
    public void DecodeChunk_AnySplit_MatchesWholeDecode()
    {
        Gen.Select(Gen.Byte.Array[1, 100], Gen.Int[0, 1000]).Sample((input, cutSeed) =>
        {
            byte[] encoded = new byte[HPackHuffman.GetEncodedLength(input)];
            HPackHuffman.TryEncode(input, encoded, out _);
            int cut = cutSeed % (encoded.Length + 1);
            byte[] decoded = new byte[input.Length];
            int state = 0;
            int written = 0;
            Assert.Equal(HPackError.None, HPackHuffman.DecodeChunk(encoded.AsSpan(0, cut), ref state, decoded, ref written));
            Assert.Equal(HPackError.None, HPackHuffman.DecodeChunk(encoded.AsSpan(cut), ref state, decoded, ref written));
            Assert.Equal(HPackError.None, HPackHuffman.Finish(state));
            Assert.Equal(input, decoded[..written]);
        });
    }

    [Fact]
    public void Encode_DestinationTooSmall_ReturnsFalse()
    {
        byte[] input = Bytes("www.example.com");
        for (int size = 0; size < 12; size++)
        {
            Assert.False(HPackHuffman.TryEncode(input, new byte[size], out _));
        }
    }

    [Theory]
    [InlineData("ffffffff", (int)HPackError.HuffmanEos)]              // 30 ones: EOS inside the string
    [InlineData("1fffffffff", (int)HPackError.HuffmanEos)]            // 'a' then EOS
    [InlineData("ff", (int)HPackError.HuffmanPaddingTooLong)]         // 8 ones of padding
    [InlineData("1fff", (int)HPackError.HuffmanPaddingTooLong)]       // 'a' then 11 ones
    [InlineData("00", (int)HPackError.HuffmanPaddingNotOnes)]         // '0' then 000
    [InlineData("1e", (int)HPackError.HuffmanPaddingNotOnes)]         // 'a' then 110
    [InlineData("fe", (int)HPackError.HuffmanPaddingNotOnes)]         // 7 ones then a 0: an unfinished code
    public void Decode_InvalidEncoding_ReturnsSpecificError(string hex, int expected)
    {
        Assert.Equal((HPackError)expected, HPackHuffman.Decode(Hex(hex), new byte[16], out _));
    }

    [Fact]
    public void Decode_OutputBeyondDestination_ReturnsHeaderListTooLarge()
    {
        byte[] encoded = new byte[12];
        HPackHuffman.TryEncode(Bytes("www.example.com"), encoded, out _);
        Assert.Equal(HPackError.HeaderListTooLarge, HPackHuffman.Decode(encoded, new byte[14], out _));
        Assert.Equal(HPackError.None, HPackHuffman.Decode(encoded, new byte[15], out int written));
        Assert.Equal(15, written);
    }
}
