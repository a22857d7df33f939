using System.Text;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Http1;

namespace Proxy.Core.Tests.Trailers;

public class GrpcTests
{
    [Theory]
    [InlineData("100m", 100)]
    [InlineData("5S", 5000)]
    [InlineData("2M", 120_000)]
    [InlineData("1H", 3_600_000)]
    [InlineData("1500u", 2)]
    [InlineData("1n", 1)]
    [InlineData("0m", 0)]
    [InlineData("99999999H", 99_999_999L * 3_600_000)]
    public void GrpcTimeout_Valid_ParsesToMilliseconds(string value, long expected)
    {
        Assert.True(GrpcTimeout.TryParse(Encoding.ASCII.GetBytes(value), out long ms));
        Assert.Equal(expected, ms);
    }

    [Theory]
    [InlineData("")]
    [InlineData("m")]
    [InlineData("100")]
    [InlineData("100x")]
    [InlineData("123456789S")]
    [InlineData("-1S")]
    [InlineData("1 S")]
    [InlineData("1.5S")]
    public void GrpcTimeout_Malformed_Rejected(string value)
        => Assert.False(GrpcTimeout.TryParse(Encoding.ASCII.GetBytes(value), out _));

    [Fact]
    public void GrpcTimeout_Parse_DoesNotAllocate()
    {
        byte[] value = "250m"u8.ToArray();
        long allocated = SteadyStateAllocation.BestOfRounds(() => GrpcTimeout.TryParse(value, out _), iterations: 1000);
        Assert.Equal(0, allocated);
    }

    [Theory]
    [InlineData(401, 16)]
    [InlineData(403, 7)]
    [InlineData(429, 8)]
    [InlineData(404, 12)]
    [InlineData(413, 8)]
    [InlineData(503, 14)]
    [InlineData(504, 4)]
    [InlineData(418, 2)]
    public void ForHttpStatus_FilterRejections_MapAsSpecified(int status, int grpc) => Assert.Equal(grpc, GrpcStatus.ForHttpStatus(status));

    [Theory]
    [InlineData((int)ProxyError.UpstreamConnectFailed, 14)]
    [InlineData((int)ProxyError.UpstreamConnectTimeout, 14)]
    [InlineData((int)ProxyError.NoHealthyDestination, 14)]
    [InlineData((int)ProxyError.UpstreamOverloaded, 14)]
    [InlineData((int)ProxyError.UpstreamReset, 14)]
    [InlineData((int)ProxyError.UpstreamRequestTimeout, 4)]
    [InlineData((int)ProxyError.UpstreamResponseTimeout, 4)]
    [InlineData((int)ProxyError.UpstreamPerTryTimeout, 4)]
    [InlineData((int)ProxyError.UpstreamInvalidResponse, 13)]
    public void ForError_ForwardingFailures_MapLikeEnvoy(int error, int grpc) => Assert.Equal(grpc, GrpcStatus.ForError((ProxyError)error));

    [Fact]
    public void StatusField_IsPreEncoded() => Assert.Equal("grpc-status: 14\r\n", Encoding.ASCII.GetString(GrpcStatus.StatusField(14)));

    private static RequestHead Parse(string raw)
    {
        var head = new RequestHead();
        var buffer = new System.Buffers.ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(raw));
        Assert.Equal(HeadStatus.Complete, Http1RequestReader.TryRead(buffer, head, HttpLimits.Default, out _, out _));
        return head;
    }

    [Theory]
    [InlineData("application/grpc", true)]
    [InlineData("application/grpc+proto", true)]
    [InlineData("Application/GRPC", true)]
    [InlineData("application/json", false)]
    [InlineData("application/grp", false)]
    public void IsGrpcRequest_ByContentType(string contentType, bool expected)
    {
        var head = Parse($"POST /svc/M HTTP/1.1\r\nHost: x\r\nContent-Type: {contentType}\r\ngrpc-timeout: 5S\r\n\r\n");
        Assert.Equal(expected, GrpcStatus.IsGrpcRequest(head));
        Assert.Equal(5000, GrpcTimeout.Find(head));
    }

    private static ResponseHead ParseResponse(string raw)
    {
        var head = new ResponseHead();
        var buffer = new System.Buffers.ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(raw));
        Assert.Equal(HeadStatus.Complete, Http1ResponseReader.TryRead(buffer, head, 64 * 1024, out _, out _));
        return head;
    }

    [Theory]
    [InlineData("HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ncontent-length: 0\r\n\r\n", true)]
    [InlineData("HTTP/1.1 200 OK\r\nGrpc-Status:  14 \r\ncontent-length: 0\r\n\r\n", true)]
    [InlineData("HTTP/1.1 200 OK\r\ngrpc-status: 4\r\ncontent-length: 0\r\n\r\n", false)]
    [InlineData("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false)]
    [InlineData("HTTP/1.1 503 Service Unavailable\r\ngrpc-status: 14\r\ncontent-length: 0\r\n\r\n", false)]
    public void IsUnavailable_TrailersOnlyHead(string raw, bool expected) => Assert.Equal(expected, GrpcStatus.IsUnavailable(ParseResponse(raw)));
}
