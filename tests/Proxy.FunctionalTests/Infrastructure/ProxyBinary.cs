using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>The <c>proxy</c> command-line host as a child process: where its build is, readiness, and signals.</summary>
internal static partial class ProxyBinary
{
    /// <summary>
    /// The host's own build output (src/Proxy/bin/...). The copy next to the tests cannot run the server: the test
    /// projects reference the ASP.NET Core shared framework, which supplies Microsoft.Extensions.ObjectPool in place
    /// of the package, so the package assembly the host needs is not copied here.
    /// </summary>
    public static string DllPath()
    {
        // .../tests/<test project>/bin/<configuration>/... -> .../src/Proxy/bin/<configuration>/...
        string local = Path.Combine(AppContext.BaseDirectory, "proxy.dll");
        char sep = Path.DirectorySeparatorChar;
        int tests = local.LastIndexOf($"{sep}tests{sep}", StringComparison.Ordinal);
        int bin = tests < 0 ? -1 : local.IndexOf($"{sep}bin{sep}", tests, StringComparison.Ordinal);
        string hostOutput = bin < 0 ? local : $"{local[..tests]}{sep}src{sep}Proxy{local[bin..]}";
        string path = File.Exists(hostOutput) ? hostOutput : local;
        Assert.True(File.Exists(path), "proxy.dll not found: " + path);
        return path;
    }

    /// <summary>The dotnet host that runs the tests (the CLI tells child processes which one), else dotnet on PATH.</summary>
    public static string DotnetHost() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    /// <summary>kill(2) straight through libc: no kill(1) binary needed.</summary>
    [LibraryImport("libc.so.6", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    /// <summary>True once <paramref name="port"/> on loopback accepts a connection; false if the process exits or 20 s pass.</summary>
    public static async Task<bool> WaitUntilListeningAsync(int port, Process process)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (DateTime.UtcNow < deadline && !process.HasExited)
        {
            using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await probe.ConnectAsync(IPAddress.Loopback, port);
                return true;
            }
            catch (SocketException)
            {
                await Task.Delay(100);
            }
        }
        return false;
    }
}
