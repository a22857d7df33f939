using System.Text;
using Proxy.Http;

namespace Proxy.Core.Tests.Http;

public sealed class BearerCredentialsTests
{
    [Theory]
    [InlineData("Bearer abc", "abc")]
    [InlineData("bearer abc", "abc")]
    [InlineData("BEARER    abc", "abc")]
    [InlineData(" \tBearer abc", "abc")]
    [InlineData("Bearer abc\t", "abc")]
    [InlineData("Bearer abc \t \t", "abc")]
    [InlineData("\tBearer  abc.def-ghi_~+/= \t", "abc.def-ghi_~+/=")]
    public void Read_BearerSpaceToken_ReturnsTheTokenWithoutOws(string value, string token)
    {
        Assert.Equal(BearerStatus.Token, BearerCredentials.Read(Encoding.ASCII.GetBytes(value), out ReadOnlySpan<byte> read));
        Assert.Equal(token, Encoding.ASCII.GetString(read));
    }

    [Theory]
    [InlineData("Bearer\tabc")]
    [InlineData("Bearer \tabc")]
    [InlineData("Bearer\t abc")]
    [InlineData("Bearer")]
    [InlineData("Bearer \t ")]
    [InlineData("\tBearer\t")]
    public void Read_BearerWithoutSpaceAndToken_IsMalformed(string value)
    {
        Assert.Equal(BearerStatus.Malformed, BearerCredentials.Read(Encoding.ASCII.GetBytes(value), out ReadOnlySpan<byte> token));
        Assert.True(token.IsEmpty);
    }

    [Theory]
    [InlineData("")]
    [InlineData(" \t ")]
    [InlineData("Basic dXNlcjpwYXNz")]
    [InlineData("Bearerish abc")]
    [InlineData("Beare abc")]
    [InlineData("Bearer,abc")]
    public void Read_OtherSchemeOrNothing_IsAbsent(string value)
    {
        Assert.Equal(BearerStatus.Absent, BearerCredentials.Read(Encoding.ASCII.GetBytes(value), out _));
    }
}
