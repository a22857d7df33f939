using System.Buffers;
using System.Text;
using Proxy.Http2;
using static Proxy.Core.Tests.Http1.Http1TestBuffers;

namespace Proxy.Core.Tests.Http2;

public class Http2PrefaceTests
{
    private static readonly byte[] Preface = Encoding.ASCII.GetBytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

    [Fact]
    public void Check_WholePrefaceAndFrames_Yes()
    {
        byte[] data = [.. Preface, 0, 0, 0, 4, 0, 0, 0, 0, 0];
        Assert.Equal(PrefaceCheck.Yes, Http2Preface.Check(new ReadOnlySequence<byte>(data)));
        Assert.Equal(PrefaceCheck.Yes, Http2Preface.Check(BytePerSegment(data)));
    }

    [Fact]
    public void Check_EveryProperPrefix_NeedMore()
    {
        for (int length = 0; length < Preface.Length; length++)
        {
            Assert.Equal(PrefaceCheck.NeedMore, Http2Preface.Check(new ReadOnlySequence<byte>(Preface, 0, length)));
            Assert.Equal(PrefaceCheck.NeedMore, Http2Preface.Check(BytePerSegment(Preface[..length])));
        }
    }

    [Theory]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\n\r\n")]
    [InlineData("G")]
    [InlineData("PRI * HTTP/1.1\r\n")] // differs at octet 11: decided before 24 octets arrive
    [InlineData("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")]
    public void Check_OtherBytes_No(string text)
    {
        Assert.Equal(PrefaceCheck.No, Http2Preface.Check(new ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(text))));
        Assert.Equal(PrefaceCheck.No, Http2Preface.Check(BytePerSegment(Encoding.ASCII.GetBytes(text))));
    }
}
