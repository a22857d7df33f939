using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;

namespace Proxy.Pipeline;

/// <summary>
/// A policy from the config's <c>policies:</c> section, as handed to a custom policy kind's factory: its name, its
/// kind and the settings under the kind's key. Scalars are in <see cref="Settings"/>; lists of scalars in
/// <see cref="Lists"/>.
/// </summary>
public sealed class PolicyDefinition
{
    internal PolicyDefinition(string name, string kind, IReadOnlyDictionary<string, string> settings, IReadOnlyDictionary<string, IReadOnlyList<string>> lists)
    {
        Name = name;
        Kind = kind;
        Settings = settings;
        Lists = lists;
    }

    /// <summary>The policy's name (the key under <c>policies:</c>).</summary>
    public string Name { get; }

    /// <summary>The policy kind (the single key under the policy's name).</summary>
    public string Kind { get; }

    /// <summary>Scalar settings by key, as written.</summary>
    public IReadOnlyDictionary<string, string> Settings { get; }

    /// <summary>List settings by key, as written.</summary>
    public IReadOnlyDictionary<string, IReadOnlyList<string>> Lists { get; }
}

/// <summary>
/// Builds the filter of one policy of a custom kind. Called when a config is validated and again when it is
/// compiled; throw <see cref="ArgumentException"/> or <see cref="FormatException"/> with a message for the user
/// to report a bad setting (it becomes a config error at the policy's position). The filter takes part in each phase
/// whose interface it implements (see <see cref="IProxyFilter"/>).
/// </summary>
public delegate IProxyFilter PolicyFactory(PolicyDefinition definition);

/// <summary>
/// The registry of policy kinds beyond the built-in ones (<c>rate_limit</c>, <c>ip_filter</c>, <c>jwt</c>, <c>api_key</c>, <c>introspection</c>, ...). Register a kind
/// before loading a config that uses it; registration is process-wide and cannot be undone.
/// </summary>
public static class PolicyKinds
{
    /// <summary>Kinds the engine itself implements; they cannot be registered again.</summary>
    public static IReadOnlyList<string> BuiltIn { get; } = ["rate_limit", "ip_filter", "jwt", "api_key", "deny", "introspection", "request_headers", "response_headers", "request_body"];

    private static readonly ConcurrentDictionary<string, PolicyFactory> s_custom = new(StringComparer.Ordinal);

    /// <summary>
    /// Adds a policy kind. <paramref name="kind"/> is the YAML key naming it: lower-case letters, digits and '_',
    /// starting with a letter. Throws <see cref="InvalidOperationException"/> when the kind is built in or taken.
    /// </summary>
    public static void Register(string kind, PolicyFactory factory)
    {
        ArgumentNullException.ThrowIfNull(kind);
        ArgumentNullException.ThrowIfNull(factory);
        if (!IsKindName(kind))
        {
            throw new ArgumentException($"Invalid policy kind '{kind}': use lower-case letters, digits and '_', starting with a letter.", nameof(kind));
        }
        if (BuiltIn.Contains(kind) || !s_custom.TryAdd(kind, factory))
        {
            throw new InvalidOperationException($"Policy kind '{kind}' is already registered.");
        }
    }

    /// <summary>True when <paramref name="kind"/> is built in or was registered.</summary>
    public static bool IsKnown(string kind) => BuiltIn.Contains(kind) || s_custom.ContainsKey(kind);

    internal static bool TryGetCustom(string kind, [MaybeNullWhen(false)] out PolicyFactory factory) => s_custom.TryGetValue(kind, out factory);

    internal static IEnumerable<string> AllKinds => BuiltIn.Concat(s_custom.Keys.Order(StringComparer.Ordinal));

    private static bool IsKindName(string kind)
    {
        if (kind.Length == 0 || !char.IsAsciiLetterLower(kind[0]))
        {
            return false;
        }
        foreach (char c in kind)
        {
            if (!char.IsAsciiLetterLower(c) && !char.IsAsciiDigit(c) && c != '_')
            {
                return false;
            }
        }
        return true;
    }
}
