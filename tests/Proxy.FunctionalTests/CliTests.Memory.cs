using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

public sealed partial class CliTests
{
    /// <summary>
    /// The binary gives memory back once a burst is over (PROXY_RELEASE_IDLE_MEMORY, on in the binary): 200 TLS
    /// connections come and go (each handshake leaves the collector and OpenSSL's allocator with memory to give back), and within two heartbeat periods (10 s each) of their leaving, one memory_released line says the
    /// resident set fell. The growth threshold is lowered to 1 MiB here so that a short burst is enough.
    /// </summary>
    [Fact]
    public async Task Run_BurstEnds_MemoryReleasedOnceIdle()
    {
        var devCert = await RunProxyAsync("dev-cert", "--out", _directory, "--hosts", "localhost,127.0.0.1");
        Assert.True(devCert.ExitCode == 0, devCert.ToString());
        string cert = Path.Combine(_directory, "dev-cert.pem"), key = Path.Combine(_directory, "dev-cert.key");
        int port = Ports.ClosedPort();
        var path = Write("memory.yaml", $$"""
            listeners:
              - { name: public, address: "127.0.0.1:{{port}}", tls: { certificates: [{ cert: "{{cert}}", key: "{{key}}" }] } }
            routes:
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello" } }
            """);
        var start = new ProcessStartInfo(ProxyBinary.DotnetHost()) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { ProxyBinary.DllPath(), "run", "--config", path })
        {
            start.ArgumentList.Add(a);
        }
        start.Environment["PROXY_RELEASE_IDLE_MEMORY_MIB"] = "1";
        start.Environment.Remove("PROXY_RELEASE_IDLE_MEMORY");
        var lines = new ConcurrentQueue<string>();
        using var released = new SemaphoreSlim(0);
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                lines.Enqueue(line);
                if (line.Contains("\"memory_released\"", StringComparison.Ordinal))
                {
                    released.Release();
                }
            }
        };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            Assert.True(await ProxyBinary.WaitUntilListeningAsync(port, process), "proxy did not start:\n" + string.Join('\n', lines));
            // Growth is measured from the resident set at the first heartbeat, a second after the start (IdleMemory): a
            // burst over before it would be part of the baseline, and nothing would ever be released.
            await Task.Delay(TimeSpan.FromSeconds(2));

            using (var handler = new SocketsHttpHandler
            {
                MaxConnectionsPerServer = 200,
                SslOptions = { RemoteCertificateValidationCallback = static (_, _, _, _) => true },
            })
            using (var client = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(20) })
            {
                await Task.WhenAll(Enumerable.Range(0, 200).Select(async _ =>
                {
                    for (int i = 0; i < 20; i++)
                    {
                        Assert.Equal("hello", await client.GetStringAsync($"https://127.0.0.1:{port}/hello"));
                    }
                }));
            }

            Assert.True(await released.WaitAsync(TimeSpan.FromSeconds(45)), "no memory_released line 45 s after the burst:\n" + string.Join('\n', lines));
            using var entry = JsonDocument.Parse(lines.First(l => l.Contains("\"memory_released\"", StringComparison.Ordinal)));
            JsonElement root = entry.RootElement;
            Assert.Equal(0, root.GetProperty("open_connections").GetInt32());
            Assert.True(root.GetProperty("resident_after_mib").GetInt64() < root.GetProperty("resident_before_mib").GetInt64(), root.ToString());

            using var afterHandler = new SocketsHttpHandler { SslOptions = { RemoteCertificateValidationCallback = static (_, _, _, _) => true } };
            using var after = new HttpClient(afterHandler);
            Assert.Equal("hello", await after.GetStringAsync($"https://127.0.0.1:{port}/hello"));
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
        }
    }
}
