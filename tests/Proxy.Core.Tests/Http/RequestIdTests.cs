using System.Text;
using Proxy.Http;

namespace Proxy.Core.Tests.Http;

public sealed class RequestIdTests
{
    [Theory]
    [InlineData("abc", true)]
    [InlineData("0f3a-9c_~!", true)]
    [InlineData("", false)]
    [InlineData("has space", false)]
    [InlineData("tab\there", false)]
    [InlineData("caf\u00e9", false)]
    public void IsValid_Value_Expected(string value, bool expected)
        => Assert.Equal(expected, RequestId.IsValid(Encoding.UTF8.GetBytes(value)));

    [Fact]
    public void IsValid_128And129Bytes_BoundaryHolds()
    {
        Assert.True(RequestId.IsValid(Encoding.ASCII.GetBytes(new string('a', 128))));
        Assert.False(RequestId.IsValid(Encoding.ASCII.GetBytes(new string('a', 129))));
    }

    [Fact]
    public void Generate_ManyIds_SixteenHexAndUnique()
    {
        var seen = new HashSet<string>();
        Span<byte> buffer = stackalloc byte[RequestId.MaxLength];
        for (int i = 0; i < 10_000; i++)
        {
            int length = RequestId.Generate(buffer);
            string id = Encoding.ASCII.GetString(buffer[..length]);
            Assert.Matches("^[0-9a-f]{16}$", id);
            Assert.True(seen.Add(id), "duplicate " + id);
        }
    }

    [Fact]
    public void Generate_Steady_AllocatesNothing()
    {
        // A heap buffer, allocated before measuring: a stackalloc'd span cannot be captured by the lambda.
        byte[] buffer = new byte[RequestId.MaxLength];
        long allocated = SteadyStateAllocation.BestOfRounds(() => RequestId.Generate(buffer), iterations: 1000);
        Assert.Equal(0, allocated);
    }
}
