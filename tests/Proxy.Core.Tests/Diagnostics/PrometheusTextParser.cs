using System.Globalization;
using System.Text;

namespace Proxy.Core.Tests.Diagnostics;

/// <summary>One parsed sample line.</summary>
public sealed record PrometheusSample(string Name, IReadOnlyDictionary<string, string> Labels, double Value, int Line)
{
    public string Label(string name) => Labels.TryGetValue(name, out var v) ? v : "";
}

/// <summary>
/// A strict, independent reader of the Prometheus text exposition format 0.0.4, written from the format's
/// description (not from our writer) so that it can disagree with it. Every line is checked; the first problem
/// throws <see cref="FormatException"/> naming the line. Beyond syntax it checks what a scraper relies on: one
/// TYPE per family before its samples, families not interleaved, no duplicate series, counters not negative, and
/// for histograms: an le label on every bucket, cumulative non-decreasing buckets ending in +Inf, and _count equal
/// to the +Inf bucket.
/// </summary>
public static class PrometheusTextParser
{
    private static readonly string[] s_types = ["counter", "gauge", "histogram", "summary", "untyped"];

    public sealed class Result
    {
        public List<PrometheusSample> Samples { get; } = [];
        public Dictionary<string, string> Types { get; } = new(StringComparer.Ordinal);
        public Dictionary<string, string> Help { get; } = new(StringComparer.Ordinal);

        /// <summary>Samples of <paramref name="name"/> whose labels include every given pair.</summary>
        public IEnumerable<PrometheusSample> Find(string name, params (string Key, string Value)[] labels)
            => Samples.Where(s => s.Name == name && labels.All(l => s.Label(l.Key) == l.Value && s.Labels.ContainsKey(l.Key)));

        /// <summary>The value of the single series matching exactly; throws when there is none or several.</summary>
        public double Value(string name, params (string Key, string Value)[] labels)
        {
            var matches = Find(name, labels).ToList();
            if (matches.Count != 1)
            {
                throw new InvalidOperationException($"{matches.Count} series match {name}{{{string.Join(",", labels.Select(l => $"{l.Key}=\"{l.Value}\""))}}}");
            }
            return matches[0].Value;
        }
    }

    public static Result Parse(string text)
    {
        var result = new Result();
        if (text.Length > 0 && !text.EndsWith('\n'))
        {
            throw new FormatException("the exposition must end with a line feed");
        }
        if (text.Contains('\r'))
        {
            throw new FormatException("lines must end with LF only");
        }
        var seenSeries = new HashSet<string>(StringComparer.Ordinal);
        var finishedFamilies = new HashSet<string>(StringComparer.Ordinal);
        string? currentFamily = null;
        var histograms = new Dictionary<string, HistogramState>(StringComparer.Ordinal);

        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length - 1; i++)
        {
            int lineNo = i + 1;
            string line = lines[i];
            if (line.Length == 0)
            {
                continue;
            }
            if (line[0] == '#')
            {
                ParseComment(line, lineNo, result, ref currentFamily, finishedFamilies);
                continue;
            }
            var sample = ParseSample(line, lineNo);
            string family = FamilyOf(sample.Name, result.Types);
            if (family != currentFamily)
            {
                if (finishedFamilies.Contains(family))
                {
                    throw new FormatException($"line {lineNo}: samples of family '{family}' are not contiguous");
                }
                if (currentFamily is not null)
                {
                    finishedFamilies.Add(currentFamily);
                }
                currentFamily = family;
            }
            string type = result.Types.GetValueOrDefault(family, "untyped");
            string key = sample.Name + "{" + string.Join(",", sample.Labels.OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => l.Key + "=" + l.Value)) + "}";
            if (!seenSeries.Add(key))
            {
                throw new FormatException($"line {lineNo}: duplicate series {key}");
            }
            if (type == "counter" && (sample.Value < 0 || double.IsNaN(sample.Value)))
            {
                throw new FormatException($"line {lineNo}: counter '{sample.Name}' has a negative or NaN value");
            }
            if (type == "histogram")
            {
                CheckHistogramSample(sample, family, lineNo, histograms);
            }
            else if (sample.Name != family)
            {
                throw new FormatException($"line {lineNo}: sample '{sample.Name}' does not belong to a {type} family");
            }
            result.Samples.Add(sample);
        }
        foreach (var (series, state) in histograms)
        {
            if (!state.SawInf)
            {
                throw new FormatException($"histogram series {series} has no le=\"+Inf\" bucket");
            }
            if (state.Count is null || state.Sum is null)
            {
                throw new FormatException($"histogram series {series} lacks _count or _sum");
            }
            if (state.Count.Value != state.LastBucket)
            {
                throw new FormatException($"histogram series {series}: _count {state.Count} differs from the +Inf bucket {state.LastBucket}");
            }
        }
        return result;
    }

    private sealed class HistogramState
    {
        public double LastLe = double.NegativeInfinity;
        public double LastBucket;
        public bool SawInf;
        public double? Count;
        public double? Sum;
    }

    private static void CheckHistogramSample(PrometheusSample sample, string family, int lineNo, Dictionary<string, HistogramState> histograms)
    {
        string seriesKey = family + "{" + string.Join(",", sample.Labels.Where(l => l.Key != "le").OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => l.Key + "=" + l.Value)) + "}";
        if (!histograms.TryGetValue(seriesKey, out var state))
        {
            histograms[seriesKey] = state = new HistogramState();
        }
        string suffix = sample.Name[family.Length..];
        switch (suffix)
        {
            case "_bucket":
                if (!sample.Labels.TryGetValue("le", out var leText))
                {
                    throw new FormatException($"line {lineNo}: histogram bucket without an le label");
                }
                double le = ParseFloat(leText, lineNo);
                if (le <= state.LastLe)
                {
                    throw new FormatException($"line {lineNo}: bucket bounds must increase");
                }
                if (sample.Value < state.LastBucket)
                {
                    throw new FormatException($"line {lineNo}: histogram buckets must be cumulative (non-decreasing)");
                }
                if (state.Count is not null)
                {
                    throw new FormatException($"line {lineNo}: bucket after _count");
                }
                state.LastLe = le;
                state.LastBucket = sample.Value;
                state.SawInf |= double.IsPositiveInfinity(le);
                break;
            case "_sum":
                CheckNoLe(sample, lineNo);
                state.Sum = sample.Value;
                break;
            case "_count":
                CheckNoLe(sample, lineNo);
                state.Count = sample.Value;
                break;
            default:
                throw new FormatException($"line {lineNo}: '{sample.Name}' is not a _bucket, _sum or _count of histogram '{family}'");
        }
    }

    private static void CheckNoLe(PrometheusSample sample, int lineNo)
    {
        if (sample.Labels.ContainsKey("le"))
        {
            throw new FormatException($"line {lineNo}: le label outside a bucket");
        }
    }

    private static string FamilyOf(string sampleName, Dictionary<string, string> types)
    {
        foreach (var suffix in new[] { "_bucket", "_sum", "_count" })
        {
            if (sampleName.EndsWith(suffix, StringComparison.Ordinal))
            {
                string baseName = sampleName[..^suffix.Length];
                if (types.TryGetValue(baseName, out var t) && t is "histogram" or "summary")
                {
                    return baseName;
                }
            }
        }
        return sampleName;
    }

    private static void ParseComment(string line, int lineNo, Result result, ref string? currentFamily, HashSet<string> finished)
    {
        // "# HELP name text" and "# TYPE name type"; any other comment is free text.
        string[] parts = line.Split(' ', 4);
        if (parts.Length < 3 || parts[0] != "#" || parts[1] is not ("HELP" or "TYPE"))
        {
            return;
        }
        string name = parts[2];
        if (!IsMetricName(name))
        {
            throw new FormatException($"line {lineNo}: invalid metric name '{name}' in {parts[1]}");
        }
        if (parts[1] == "HELP")
        {
            string help = parts.Length > 3 ? parts[3] : "";
            CheckHelpEscapes(help, lineNo);
            if (!result.Help.TryAdd(name, help))
            {
                throw new FormatException($"line {lineNo}: second HELP for '{name}'");
            }
            return;
        }
        if (parts.Length != 4 || Array.IndexOf(s_types, parts[3]) < 0)
        {
            throw new FormatException($"line {lineNo}: TYPE needs one of {string.Join(", ", s_types)}");
        }
        if (result.Types.ContainsKey(name))
        {
            throw new FormatException($"line {lineNo}: second TYPE for '{name}'");
        }
        if (result.Samples.Any(s => FamilyOf(s.Name, new() { [name] = parts[3] }) == name))
        {
            throw new FormatException($"line {lineNo}: TYPE for '{name}' after its samples");
        }
        result.Types[name] = parts[3];
        if (currentFamily is not null && currentFamily != name)
        {
            finished.Add(currentFamily);
        }
        currentFamily = name;
    }

    private static void CheckHelpEscapes(string help, int lineNo)
    {
        for (int i = 0; i < help.Length; i++)
        {
            if (help[i] == '\\')
            {
                if (i + 1 >= help.Length || help[i + 1] is not ('\\' or 'n'))
                {
                    throw new FormatException($"line {lineNo}: invalid escape in HELP text");
                }
                i++;
            }
        }
    }

    private static PrometheusSample ParseSample(string line, int lineNo)
    {
        int i = 0;
        while (i < line.Length && line[i] is not ('{' or ' ' or '\t'))
        {
            i++;
        }
        string name = line[..i];
        if (!IsMetricName(name))
        {
            throw new FormatException($"line {lineNo}: invalid metric name '{name}'");
        }
        var labels = new Dictionary<string, string>(StringComparer.Ordinal);
        if (i < line.Length && line[i] == '{')
        {
            i++;
            while (true)
            {
                if (i < line.Length && line[i] == '}')
                {
                    i++;
                    break;
                }
                int start = i;
                while (i < line.Length && line[i] != '=')
                {
                    i++;
                }
                string labelName = line[start..i];
                if (!IsLabelName(labelName))
                {
                    throw new FormatException($"line {lineNo}: invalid label name '{labelName}'");
                }
                if (i + 1 >= line.Length || line[i + 1] != '"')
                {
                    throw new FormatException($"line {lineNo}: label value must be quoted");
                }
                i += 2;
                var value = new StringBuilder();
                while (true)
                {
                    if (i >= line.Length)
                    {
                        throw new FormatException($"line {lineNo}: unterminated label value");
                    }
                    char c = line[i];
                    if (c == '"')
                    {
                        i++;
                        break;
                    }
                    if (c == '\\')
                    {
                        if (i + 1 >= line.Length)
                        {
                            throw new FormatException($"line {lineNo}: dangling backslash");
                        }
                        value.Append(line[i + 1] switch
                        {
                            '\\' => '\\',
                            '"' => '"',
                            'n' => '\n',
                            _ => throw new FormatException($"line {lineNo}: invalid escape '\\{line[i + 1]}' in label value"),
                        });
                        i += 2;
                        continue;
                    }
                    value.Append(c);
                    i++;
                }
                if (!labels.TryAdd(labelName, value.ToString()))
                {
                    throw new FormatException($"line {lineNo}: label '{labelName}' repeated");
                }
                if (i < line.Length && line[i] == ',')
                {
                    i++;
                }
                else if (i >= line.Length || line[i] != '}')
                {
                    throw new FormatException($"line {lineNo}: expected ',' or '}}' after a label");
                }
            }
        }
        if (i >= line.Length || line[i] is not (' ' or '\t'))
        {
            throw new FormatException($"line {lineNo}: expected a space before the value");
        }
        string[] rest = line[i..].Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
        if (rest.Length is < 1 or > 2)
        {
            throw new FormatException($"line {lineNo}: expected a value and an optional timestamp");
        }
        double v = ParseFloat(rest[0], lineNo);
        if (rest.Length == 2 && !long.TryParse(rest[1], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _))
        {
            throw new FormatException($"line {lineNo}: timestamp must be an integer (milliseconds)");
        }
        return new PrometheusSample(name, labels, v, lineNo);
    }

    private static double ParseFloat(string text, int lineNo)
    {
        switch (text)
        {
            case "+Inf":
                return double.PositiveInfinity;
            case "-Inf":
                return double.NegativeInfinity;
            case "NaN":
                return double.NaN;
        }
        if (text.Length == 0 || !double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v)
            || text.Contains("Infinity", StringComparison.OrdinalIgnoreCase))
        {
            throw new FormatException($"line {lineNo}: '{text}' is not a valid sample value");
        }
        return v;
    }

    private static bool IsMetricName(string name)
    {
        if (name.Length == 0 || !(char.IsAsciiLetter(name[0]) || name[0] is '_' or ':'))
        {
            return false;
        }
        foreach (char c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '_' or ':'))
            {
                return false;
            }
        }
        return true;
    }

    private static bool IsLabelName(string name)
    {
        if (name.Length == 0 || !(char.IsAsciiLetter(name[0]) || name[0] == '_') || name.StartsWith("__", StringComparison.Ordinal))
        {
            return false;
        }
        foreach (char c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c == '_'))
            {
                return false;
            }
        }
        return true;
    }
}
