using Proxy.Model;

namespace Proxy.Configuration;

/// <summary>One problem in a config file, with its position.</summary>
internal sealed record ConfigError(string File, int Line, int Column, string Message)
{
    public override string ToString() => $"{File}:{Line}:{Column}: {Message}";
}

internal sealed class ConfigLoadResult
{
    public ProxySnapshot? Snapshot { get; init; }
    public IReadOnlyList<ConfigError> Errors { get; init; } = [];
    public bool Success => Snapshot is not null && Errors.Count == 0;
}

/// <summary>YAML file -> config records -> validation -> compiled snapshot. STUB.</summary>
internal static class ConfigLoader
{
    public static ConfigLoadResult LoadFile(string path) => throw new NotImplementedException();
    public static ConfigLoadResult LoadText(string yaml, string fileName) => throw new NotImplementedException();
}
