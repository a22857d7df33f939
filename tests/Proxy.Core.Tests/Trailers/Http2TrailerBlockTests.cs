using System.Text;
using Proxy.Http2.Server;

namespace Proxy.Core.Tests.Trailers;

public class Http2TrailerBlockTests
{
    [Fact]
    public void TrailerBlock_Fields_BecomeHttp1LinesWithoutForbidden()
    {
        var head = new Http2RequestHead(32 * 1024);
        head.Reset(trailers: true);
        head.OnField("grpc-status"u8, "0"u8);
        head.OnField("content-length"u8, "3"u8);
        head.OnField("host"u8, "evil.test"u8);
        head.OnField("x-checksum"u8, "abc"u8);

        Assert.Equal(Http2RequestError.None, head.Complete(endStream: true));
        Assert.Equal("grpc-status: 0\r\nx-checksum: abc\r\n", Encoding.ASCII.GetString(head.TrailerSection));
    }

    [Fact]
    public void TrailerBlock_UppercaseName_ErrorAsForHeaders()
    {
        var head = new Http2RequestHead(32 * 1024);
        head.Reset(trailers: true);
        head.OnField("X-Sum"u8, "1"u8);

        Assert.Equal(Http2RequestError.UppercaseName, head.Error);
    }

    [Fact]
    public void RequestBlock_TrailerSection_Empty()
    {
        var head = new Http2RequestHead(32 * 1024);
        head.Reset(trailers: false);
        head.OnField(":method"u8, "GET"u8);
        head.OnField("x-a"u8, "1"u8);

        Assert.True(head.TrailerSection.IsEmpty);
    }
}
