using System.Text;
using Proxy.Http;

namespace Proxy.Core.Tests.Http;

public sealed class WebSocketHandshakeTests
{
    [Fact]
    public void TryComputeAccept_Rfc6455Example_MatchesSection1_3()
    {
        var accept = new byte[WebSocketHandshake.AcceptLength];

        Assert.True(WebSocketHandshake.TryComputeAccept("dGhlIHNhbXBsZSBub25jZQ=="u8, accept));
        Assert.Equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", Encoding.ASCII.GetString(accept));
    }

    [Theory]
    [InlineData("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", true)]
    [InlineData(" s3pPLMBiTxaQ9kYGzzhZRbK+xOo= ", true)]
    [InlineData("s3pPLMBiTxaQ9kYGzzhZRbK+xOo", false)]
    [InlineData("", false)]
    public void IsValidAccept_Rfc6455Example(string accept, bool expected)
        => Assert.Equal(expected, WebSocketHandshake.IsValidAccept("dGhlIHNhbXBsZSBub25jZQ=="u8, Encoding.ASCII.GetBytes(accept)));

    [Fact]
    public void TryComputeAccept_EmptyKey_False()
        => Assert.False(WebSocketHandshake.TryComputeAccept(default, new byte[WebSocketHandshake.AcceptLength]));
}
