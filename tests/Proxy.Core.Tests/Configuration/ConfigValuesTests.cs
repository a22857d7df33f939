using Proxy.Configuration;

namespace Proxy.Core.Tests.Configuration;

public class ConfigValuesTests
{
    [Theory]
    [InlineData("0", 0L)]
    [InlineData("512", 512L)]
    [InlineData("512B", 512L)]
    [InlineData("8KiB", 8L * 1024)]
    [InlineData("8 KiB", 8L * 1024)]
    [InlineData("10MiB", 10L * 1024 * 1024)]
    [InlineData("2GiB", 2L * 1024 * 1024 * 1024)]
    [InlineData("8KB", 8_000L)]
    [InlineData("10MB", 10_000_000L)]
    [InlineData("3GB", 3_000_000_000L)]
    [InlineData(" 7 ", 7L)]
    public void TryParseSize_ValidText_ReturnsBytes(string text, long expected)
    {
        Assert.True(ConfigValues.TryParseSize(text, out var bytes));
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("")]
    [InlineData("KiB")]
    [InlineData("-1")]
    [InlineData("1.5MiB")]
    [InlineData("8kib")]
    [InlineData("8Mb")]
    [InlineData("8 TiB")]
    [InlineData("ten")]
    [InlineData("99999999999GiB")]
    public void TryParseSize_InvalidText_ReturnsFalse(string text)
    {
        Assert.False(ConfigValues.TryParseSize(text, out _));
    }

    [Theory]
    [InlineData("500ms", 500)]
    [InlineData("2s", 2_000)]
    [InlineData("1m", 60_000)]
    [InlineData("1h", 3_600_000)]
    [InlineData("1m30s", 90_000)]
    [InlineData("1.5s", 1_500)]
    [InlineData("0s", 0)]
    public void TryParseDuration_ValidText_ReturnsDuration(string text, int expectedMs)
    {
        Assert.True(ConfigValues.TryParseDuration(text, out var duration));
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMs), duration);
    }

    [Theory]
    [InlineData("")]
    [InlineData("30")]
    [InlineData("s")]
    [InlineData("2 s")]
    [InlineData("2sec")]
    [InlineData("2d")]
    [InlineData("-1s")]
    [InlineData("100000h")]
    public void TryParseDuration_InvalidText_ReturnsFalse(string text)
    {
        Assert.False(ConfigValues.TryParseDuration(text, out _));
    }
}
