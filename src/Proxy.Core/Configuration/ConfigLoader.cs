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

/// <summary>
/// YAML file -> config records (<see cref="YamlConfigReader"/>) -> validation (<see cref="ConfigValidator"/>)
/// -> compiled snapshot (<see cref="ConfigCompiler"/>). Errors from every stage are collected and
/// returned together, in file order; a snapshot is produced only when there are none.
/// </summary>
internal static class ConfigLoader
{
    /// <summary>Loads a file. Errors name the file as <paramref name="path"/> was given; the snapshot keeps the full path.</summary>
    public static ConfigLoadResult LoadFile(string path, IReadOnlyDictionary<string, ClusterModel>? previous = null)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            return new ConfigLoadResult { Errors = [new ConfigError(path, 1, 1, $"cannot read config file: {e.Message}")] };
        }
        return Load(text, path, Path.GetFullPath(path), previous);
    }

    /// <summary>Loads YAML text; <paramref name="fileName"/> names it in errors and in <see cref="ProxySnapshot.SourcePath"/>.</summary>
    public static ConfigLoadResult LoadText(string yaml, string fileName, IReadOnlyDictionary<string, ClusterModel>? previous = null)
        => Load(yaml, fileName, fileName, previous);

    private static ConfigLoadResult Load(string text, string fileName, string sourcePath, IReadOnlyDictionary<string, ClusterModel>? previous)
    {
        var errors = new ConfigErrorList(fileName);
        var config = YamlConfigReader.Read(text, errors);
        if (config is not null)
        {
            config = config with { BaseDirectory = BaseDirectoryOf(sourcePath) };
            ConfigValidator.Validate(config, errors);
        }
        if (config is null || errors.Count != 0)
        {
            return new ConfigLoadResult { Errors = errors.ToSortedList() };
        }
        return new ConfigLoadResult { Snapshot = ConfigCompiler.Compile(config, text, sourcePath, previous) };
    }

    private static string BaseDirectoryOf(string sourcePath)
    {
        try
        {
            return Path.GetDirectoryName(Path.GetFullPath(sourcePath)) ?? Directory.GetCurrentDirectory();
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            return Directory.GetCurrentDirectory();
        }
    }
}
