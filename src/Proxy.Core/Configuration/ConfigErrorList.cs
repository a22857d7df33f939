namespace Proxy.Configuration;

/// <summary>Collects every problem found in one file; nothing stops at the first error.</summary>
internal sealed class ConfigErrorList(string file)
{
    private readonly List<ConfigError> _errors = [];

    public string File { get; } = file;
    public int Count => _errors.Count;

    public void Add(Mark mark, string message) => _errors.Add(new ConfigError(File, mark.Line, mark.Column, message));

    /// <summary>In file order, so the output reads top to bottom whichever pass found each error.</summary>
    public IReadOnlyList<ConfigError> ToSortedList()
        => _errors.OrderBy(e => e.Line).ThenBy(e => e.Column).ToArray();

    /// <summary>Suggests the closest candidate for a misspelt name, or null when nothing is close.</summary>
    public static string? Nearest(string given, IEnumerable<string> candidates)
    {
        string? best = null;
        int bestDistance = int.MaxValue;
        var normalizedGiven = Normalize(given);
        foreach (var candidate in candidates)
        {
            // "loadBalancing" and "load-balancing" are the same mistake as a one-letter typo.
            int d = Normalize(candidate) == normalizedGiven ? 0 : Distance(given.ToLowerInvariant(), candidate.ToLowerInvariant());
            if (d < bestDistance)
            {
                bestDistance = d;
                best = candidate;
            }
        }
        return best is not null && (bestDistance <= 2 || bestDistance <= given.Length / 3) && bestDistance < given.Length ? best : null;
    }

    private static string Normalize(string s) => s.Replace("_", "").Replace("-", "").ToLowerInvariant();

    /// <summary>Levenshtein edit distance.</summary>
    private static int Distance(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++)
        {
            previous[j] = j;
        }
        for (int i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + cost);
            }
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }
}
