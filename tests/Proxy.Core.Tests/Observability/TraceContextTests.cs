using System.Text;
using Proxy.Diagnostics.Tracing;

namespace Proxy.Core.Tests.Observability;

public sealed class TraceContextTests
{
    private const string Valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    private static bool Parse(string value, out string traceId, out string parentId, out byte flags)
    {
        Span<byte> trace = stackalloc byte[32];
        Span<byte> parent = stackalloc byte[16];
        bool ok = TraceContext.TryParseTraceParent(Encoding.ASCII.GetBytes(value), trace, parent, out flags);
        traceId = Encoding.ASCII.GetString(trace);
        parentId = Encoding.ASCII.GetString(parent);
        return ok;
    }

    [Fact]
    public void TryParseTraceParent_SpecExample_ReturnsIdsAndFlags()
    {
        Assert.True(Parse(Valid, out var trace, out var parent, out var flags));
        Assert.Equal("4bf92f3577b34da6a3ce929d0e0e4736", trace);
        Assert.Equal("00f067aa0ba902b7", parent);
        Assert.Equal(1, flags);
    }

    [Theory]
    [InlineData("")]
    [InlineData("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0")] // short
    [InlineData("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-")] // version 00 is exactly 55 bytes
    [InlineData("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")] // version ff is invalid
    [InlineData("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")] // upper-case hex
    [InlineData("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] // all-zero trace id
    [InlineData("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")] // all-zero parent id
    [InlineData("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")] // wrong separator
    [InlineData("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g")] // flags not hex
    [InlineData("0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")] // version not hex
    [InlineData("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x")] // future version: byte 55 must be '-'
    [InlineData(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    public void TryParseTraceParent_Invalid_ReturnsFalse(string value)
    {
        Assert.False(Parse(value, out _, out _, out _));
    }

    [Fact]
    public void TryParseTraceParent_FutureVersionWithMoreFields_ParsesKnownPart()
    {
        Assert.True(Parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-whatever", out var trace, out _, out var flags));
        Assert.Equal("4bf92f3577b34da6a3ce929d0e0e4736", trace);
        Assert.Equal(9, flags);
    }

    [Fact]
    public void TryParseTraceParent_EveryPrefix_ReturnsFalse()
    {
        for (int length = 0; length < Valid.Length; length++)
        {
            Assert.False(Parse(Valid[..length], out _, out _, out _));
        }
    }

    [Theory]
    [InlineData((byte)0x01, "01")]
    [InlineData((byte)0x00, "00")]
    [InlineData((byte)0xff, "01")] // only the sampled flag is known to version 00
    public void FormatTraceParent_RoundTrips(byte flags, string expectedFlags)
    {
        Span<byte> buffer = stackalloc byte[TraceContext.TraceParentLength];
        TraceContext.FormatTraceParent(buffer, "4bf92f3577b34da6a3ce929d0e0e4736"u8, "00f067aa0ba902b7"u8, flags);
        string text = Encoding.ASCII.GetString(buffer);
        Assert.Equal("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-" + expectedFlags, text);
        Assert.True(Parse(text, out _, out _, out _));
    }

    [Theory]
    [InlineData("congo=t61rcWkgMzE", true)]
    [InlineData("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", true)]
    [InlineData("rojo=1, congo=2 ,\t,", true)] // OWS and empty members are allowed
    [InlineData("fw529a3039@dt=1", true)] // multi-tenant key
    [InlineData("a-b_c*d/e=x y", true)]
    [InlineData("Rojo=1", false)] // upper-case key
    [InlineData("1abc=1", false)] // simple key must start with a letter
    [InlineData("rojo=", false)] // empty value
    [InlineData("rojo=a=b", false)] // '=' in value
    [InlineData("rojo", false)]
    [InlineData("t@toolongsystemid=1", false)] // system id longer than 14
    public void IsValidTraceState_Cases(string value, bool expected)
    {
        int members = 0;
        Assert.Equal(expected, TraceContext.IsValidTraceState(Encoding.ASCII.GetBytes(value), ref members));
    }

    [Fact]
    public void IsValidTraceState_MoreThan32Members_ReturnsFalse()
    {
        string value = string.Join(",", Enumerable.Range(0, 33).Select(i => $"k{i}=v"));
        int members = 0;
        Assert.False(TraceContext.IsValidTraceState(Encoding.ASCII.GetBytes(value), ref members));
        members = 0;
        Assert.True(TraceContext.IsValidTraceState(Encoding.ASCII.GetBytes(string.Join(",", Enumerable.Range(0, 32).Select(i => $"k{i}=v"))), ref members));
    }

    [Fact]
    public void RandomHex_IsLowerHexAndVaries()
    {
        Span<byte> a = stackalloc byte[32];
        Span<byte> b = stackalloc byte[32];
        TraceContext.RandomHex(a);
        TraceContext.RandomHex(b);
        Assert.DoesNotContain(a.ToArray(), c => !"0123456789abcdef".Contains((char)c));
        Assert.False(a.SequenceEqual(b));
    }
}
