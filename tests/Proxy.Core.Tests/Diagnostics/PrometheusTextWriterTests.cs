using Proxy.Diagnostics;

namespace Proxy.Core.Tests.Diagnostics;

public class PrometheusTextWriterTests
{
    private static KeyValuePair<string, string>[] Labels(params (string Key, string Value)[] labels)
        => labels.Select(l => new KeyValuePair<string, string>(l.Key, l.Value)).ToArray();

    [Fact]
    public void Write_Counter_WritesHelpTypeAndSample()
    {
        var text = PrometheusTextWriter.Write([new MetricFamily("x_total", MetricType.Counter, "Things.", [new(Labels(("a", "b")), 3)])]);

        Assert.Equal("# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"b\"} 3\n", text);
    }

    [Fact]
    public void Write_LabelValueWithQuoteBackslashNewline_IsEscapedAndRoundTrips()
    {
        const string nasty = "a\"b\\c\nd{},=";
        var text = PrometheusTextWriter.Write([new MetricFamily("x", MetricType.Gauge, "h", [new(Labels(("v", nasty)), 1)])]);

        Assert.Contains("x{v=\"a\\\"b\\\\c\\nd{},=\"} 1\n", text);
        Assert.Equal(nasty, PrometheusTextParser.Parse(text).Samples.Single().Label("v"));
    }

    [Fact]
    public void Write_HelpWithBackslashAndNewline_IsEscaped()
    {
        var text = PrometheusTextWriter.Write([new MetricFamily("x", MetricType.Gauge, "a\\b\nc \"q\"", [])]);

        Assert.StartsWith("# HELP x a\\\\b\\nc \"q\"\n", text);
        PrometheusTextParser.Parse(text);
    }

    [Fact]
    public void Write_Histogram_BucketsAreCumulativeWithInfSumAndCount()
    {
        var family = new MetricFamily("d_seconds", MetricType.Histogram, "h", [])
        {
            Histograms = [new HistogramSample(Labels(("route", "r")), [0.1, 1], [2, 3, 1], 4.5)],
        };

        var text = PrometheusTextWriter.Write([family]);

        Assert.Equal(
            "# HELP d_seconds h\n# TYPE d_seconds histogram\n" +
            "d_seconds_bucket{route=\"r\",le=\"0.1\"} 2\n" +
            "d_seconds_bucket{route=\"r\",le=\"1\"} 5\n" +
            "d_seconds_bucket{route=\"r\",le=\"+Inf\"} 6\n" +
            "d_seconds_sum{route=\"r\"} 4.5\n" +
            "d_seconds_count{route=\"r\"} 6\n", text);
        PrometheusTextParser.Parse(text);
    }

    [Theory]
    [InlineData(0.0, "0")]
    [InlineData(42.0, "42")]
    [InlineData(0.0005, "0.0005")]
    [InlineData(2.5, "2.5")]
    [InlineData(double.PositiveInfinity, "+Inf")]
    [InlineData(double.NegativeInfinity, "-Inf")]
    [InlineData(double.NaN, "NaN")]
    public void FormatValue_Values_UseGoFloatSyntax(double value, string expected)
    {
        Assert.Equal(expected, PrometheusTextWriter.FormatValue(value));
    }

    // The parser must be able to fail, or the tests that lean on it prove nothing.
    [Theory]
    [InlineData("x 1", "end with a line feed")]
    [InlineData("x{a=\"b} 1\n", "unterminated")]
    [InlineData("x{a=\"\\t\"} 1\n", "invalid escape")]
    [InlineData("x{a=b} 1\n", "quoted")]
    [InlineData("1x 1\n", "invalid metric name")]
    [InlineData("x{__a=\"b\"} 1\n", "invalid label name")]
    [InlineData("x one\n", "not a valid sample value")]
    [InlineData("x 1\nx 2\n", "duplicate series")]
    [InlineData("# TYPE x counter\nx -1\n", "negative")]
    [InlineData("# TYPE x counter\n# TYPE x gauge\n", "second TYPE")]
    [InlineData("# TYPE x widget\n", "TYPE needs")]
    [InlineData("x 1\n# TYPE x counter\n", "after its samples")]
    [InlineData("x 1\ny 1\nx{a=\"b\"} 1\n", "not contiguous")]
    [InlineData("x{a=\"b\",a=\"c\"} 1\n", "repeated")]
    [InlineData("x 1\r\n", "LF only")]
    [InlineData("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "cumulative")]
    [InlineData("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n", "+Inf")]
    [InlineData("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "differs")]
    [InlineData("# TYPE h histogram\nh_bucket 2\n", "without an le")]
    [InlineData("# TYPE h histogram\nh 2\n", "not a _bucket")]
    public void Parse_InvalidExposition_Throws(string text, string message)
    {
        var error = Assert.Throws<FormatException>(() => PrometheusTextParser.Parse(text));
        Assert.Contains(message, error.Message);
    }
}
