using System.Diagnostics.CodeAnalysis;
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
    public static ConfigLoadResult LoadFile(string path, ProxySnapshot? previous = null)
        => TryRead(path, out string? text, out ConfigLoadResult? failed) ? Load(text, path, Path.GetFullPath(path), previous) : failed;

    /// <summary>
    /// Reads and validates a file without compiling it (`proxy validate`): every error the load would report, but no
    /// snapshot, so nothing is built or started (no rate-limit tables, no JWKS fetch).
    /// </summary>
    public static IReadOnlyList<ConfigError> CheckFile(string path)
    {
        if (!TryRead(path, out string? text, out ConfigLoadResult? failed))
        {
            return failed.Errors;
        }
        var errors = new ConfigErrorList(path);
        Read(text, Path.GetFullPath(path), errors);
        return errors.ToSortedList();
    }

    /// <summary>As <see cref="CheckFile"/> for YAML text; <paramref name="fileName"/> names it in errors, as in <see cref="LoadText"/>.</summary>
    public static IReadOnlyList<ConfigError> CheckText(string yaml, string fileName)
    {
        var errors = new ConfigErrorList(fileName);
        Read(yaml, fileName, errors);
        return errors.ToSortedList();
    }

    private static bool TryRead(string path, [NotNullWhen(true)] out string? text, [NotNullWhen(false)] out ConfigLoadResult? failed)
    {
        try
        {
            text = File.ReadAllText(path);
            failed = null;
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            text = null;
            failed = new ConfigLoadResult { Errors = [new ConfigError(path, 1, 1, $"cannot read config file: {e.Message}")] };
            return false;
        }
    }

    /// <summary>Loads YAML text; <paramref name="fileName"/> names it in errors and in <see cref="ProxySnapshot.SourcePath"/>.</summary>
    public static ConfigLoadResult LoadText(string yaml, string fileName, ProxySnapshot? previous = null)
        => Load(yaml, fileName, fileName, previous);

    private static ConfigLoadResult Load(string text, string fileName, string sourcePath, ProxySnapshot? previous)
    {
        var errors = new ConfigErrorList(fileName);
        ProxyConfig? config = Read(text, sourcePath, errors);
        if (config is null || errors.Count != 0)
        {
            return new ConfigLoadResult { Errors = errors.ToSortedList() };
        }
        return new ConfigLoadResult { Snapshot = ConfigCompiler.Compile(config, text, sourcePath, previous) };
    }

    /// <summary>Parse and validate: the config model, with every problem in <paramref name="errors"/>.</summary>
    private static ProxyConfig? Read(string text, string sourcePath, ConfigErrorList errors)
    {
        var config = YamlConfigReader.Read(text, errors);
        if (config is not null)
        {
            config = config with { BaseDirectory = BaseDirectoryOf(sourcePath) };
            ConfigValidator.Validate(config, errors);
        }
        return config;
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
