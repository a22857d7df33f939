using System.Diagnostics;
using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

internal sealed record ProcessResult(int ExitCode, byte[] Stdout, string Stderr)
{
    public string StdoutText => Encoding.UTF8.GetString(Stdout);

    public override string ToString() => $"exit {ExitCode}\nstdout: {StdoutText}\nstderr: {Stderr}";
}

/// <summary>Runs a child process with a hard time limit (killed on expiry), capturing stdout as bytes.</summary>
internal static class ProcessRunner
{
    public static async Task<ProcessResult> RunAsync(string fileName, IEnumerable<string> arguments, byte[]? stdin = null, TimeSpan? timeout = null, string? workingDirectory = null)
    {
        var info = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? AppContext.BaseDirectory,
        };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }
        // A proxy from the environment would send curl elsewhere.
        info.Environment.Remove("http_proxy");
        info.Environment.Remove("HTTP_PROXY");
        info.Environment.Remove("all_proxy");
        info.Environment.Remove("ALL_PROXY");

        using var process = Process.Start(info) ?? throw new InvalidOperationException("Could not start " + fileName);
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(30));
        var stdout = new MemoryStream();
        var stdoutTask = process.StandardOutput.BaseStream.CopyToAsync(stdout, cts.Token);
        var stderrTask = process.StandardError.ReadToEndAsync(cts.Token);
        try
        {
            if (stdin is not null)
            {
                await process.StandardInput.BaseStream.WriteAsync(stdin, cts.Token);
            }
            process.StandardInput.Close();
            await process.WaitForExitAsync(cts.Token);
            await stdoutTask;
            var stderr = await stderrTask;
            return new ProcessResult(process.ExitCode, stdout.ToArray(), stderr);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{fileName} {string.Join(' ', arguments)} did not finish in time.");
        }
    }
}

/// <summary>Runs <c>/usr/bin/curl</c> (installed by CI) with a bounded time.</summary>
internal static class Curl
{
    public const string Path = "/usr/bin/curl";

    /// <summary>Runs curl with <paramref name="arguments"/>, silent but showing errors, with <c>--max-time 10</c>.</summary>
    public static Task<ProcessResult> RunAsync(IEnumerable<string> arguments, byte[]? stdin = null)
    {
        Assert.True(File.Exists(Path), "curl is required for the interop tests: " + Path);
        string[] common = ["--silent", "--show-error", "--noproxy", "*", "--max-time", "10"];
        return ProcessRunner.RunAsync(Path, [.. common, .. arguments], stdin, TimeSpan.FromSeconds(20));
    }
}
