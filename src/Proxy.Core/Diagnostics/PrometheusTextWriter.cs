using System.Globalization;
using System.Text;

namespace Proxy.Diagnostics;

/// <summary>
/// Writes metric families in the Prometheus text exposition format, version 0.0.4
/// (https://prometheus.io/docs/instrumenting/exposition_formats/):
/// <code>
/// # HELP name help text, with \\ and \n escaped
/// # TYPE name counter|gauge|histogram
/// name{label="value, with \\ \" and \n escaped"} 42
/// name_bucket{label="v",le="0.005"} 3      (histograms: cumulative buckets, then +Inf, _sum and _count)
/// </code>
/// Lines end with LF only. Control plane: runs once per scrape.
/// </summary>
internal static class PrometheusTextWriter
{
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    public static string Write(IEnumerable<MetricFamily> families)
    {
        var text = new StringBuilder(4096);
        foreach (var family in families)
        {
            WriteFamily(text, family);
        }
        return text.ToString();
    }

    public static void WriteFamily(StringBuilder text, MetricFamily family)
    {
        text.Append("# HELP ").Append(family.Name).Append(' ');
        AppendEscaped(text, family.Help, escapeQuote: false);
        text.Append('\n');
        text.Append("# TYPE ").Append(family.Name).Append(' ').Append(family.Type switch
        {
            MetricType.Counter => "counter",
            MetricType.Gauge => "gauge",
            _ => "histogram",
        }).Append('\n');

        foreach (var sample in family.Samples)
        {
            AppendSample(text, family.Name, sample.Labels, null, sample.Value);
        }
        foreach (var histogram in family.Histograms)
        {
            long cumulative = 0;
            for (int i = 0; i < histogram.Buckets.Length; i++)
            {
                cumulative += histogram.Buckets[i];
                string le = i < histogram.Bounds.Length ? FormatValue(histogram.Bounds[i]) : "+Inf";
                AppendSample(text, family.Name + "_bucket", histogram.Labels, le, cumulative);
            }
            AppendSample(text, family.Name + "_sum", histogram.Labels, null, histogram.Sum);
            AppendSample(text, family.Name + "_count", histogram.Labels, null, cumulative);
        }
    }

    private static void AppendSample(StringBuilder text, string name, KeyValuePair<string, string>[] labels, string? le, double value)
    {
        text.Append(name);
        if (labels.Length > 0 || le is not null)
        {
            text.Append('{');
            bool first = true;
            foreach (var (key, labelValue) in labels)
            {
                if (!first)
                {
                    text.Append(',');
                }
                first = false;
                text.Append(key).Append("=\"");
                AppendEscaped(text, labelValue, escapeQuote: true);
                text.Append('"');
            }
            if (le is not null)
            {
                text.Append(first ? "" : ",").Append("le=\"").Append(le).Append('"');
            }
            text.Append('}');
        }
        text.Append(' ').Append(FormatValue(value)).Append('\n');
    }

    /// <summary>Label values escape backslash, double quote and line feed; HELP text only backslash and line feed.</summary>
    private static void AppendEscaped(StringBuilder text, string value, bool escapeQuote)
    {
        foreach (char c in value)
        {
            switch (c)
            {
                case '\\':
                    text.Append(@"\\");
                    break;
                case '\n':
                    text.Append(@"\n");
                    break;
                case '"' when escapeQuote:
                    text.Append("\\\"");
                    break;
                default:
                    text.Append(c);
                    break;
            }
        }
    }

    /// <summary>Go's ParseFloat syntax: integers as integers, "+Inf", "-Inf", "NaN", otherwise round-trip decimal.</summary>
    public static string FormatValue(double value)
    {
        if (double.IsPositiveInfinity(value))
        {
            return "+Inf";
        }
        if (double.IsNegativeInfinity(value))
        {
            return "-Inf";
        }
        if (double.IsNaN(value))
        {
            return "NaN";
        }
        if (value == Math.Floor(value) && Math.Abs(value) < 1e15)
        {
            return ((long)value).ToString(CultureInfo.InvariantCulture);
        }
        return value.ToString("R", CultureInfo.InvariantCulture);
    }
}
