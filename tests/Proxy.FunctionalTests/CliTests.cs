using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>The <c>proxy</c> command-line host (proxy.dll, copied next to the tests by the project reference).</summary>
public sealed partial class CliTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-cli-tests-").FullName;

    [Fact]
    public async Task Validate_InvalidConfig_Exits2WithPositionedErrors()
    {
        var path = Write("bad.yaml", """
            listeners:
              - { name: public, address: not-an-address }
            routes:
              - { id: r1, match: { path: /a }, cluster: missing_cluster }
            clusters:
              backend:
                destinations: [{ address: "nota url" }]
            """);

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        var lines = (result.StdoutText + "\n" + result.Stderr).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var positioned = lines.Where(l => PositionedError().IsMatch(l)).ToList();
        Assert.True(positioned.Count > 0, "No file:line:column: error lines in:\n" + result);
        Assert.All(positioned, l => Assert.Contains("bad.yaml", l, StringComparison.Ordinal));
    }

    /// <summary>An empty predicate name made validation throw: exit 134 (SIGABRT) and a stack trace instead of exit 2.</summary>
    [Fact]
    public async Task Validate_EmptyPredicateName_Exits2WithPosition()
    {
        var path = Write("empty-name.yaml", """
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: q, match: { path: /q, query: [{ name: "" }] }, respond: { body: "q" } }
            """);

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains("empty-name.yaml:4:49: 'name' must not be empty", result.StdoutText, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled", result.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Validate_RewriteWithUnknownPlaceholder_Exits2WithPosition()
    {
        var path = Write("rewrite.yaml", """
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - id: api
                match: { path: "/api/{**rest}" }
                rewrite: { path: "/v2/{tail}" }
                cluster: backend
            clusters:
              backend:
                destinations: [{ address: "http://127.0.0.1:8080" }]
            """);

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains("rewrite.yaml:6:22: route 'api': rewrite path '/v2/{tail}': unknown placeholder '{tail}'; match.path '/api/{**rest}' captures {rest}",
            result.StdoutText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Validate_YamlSyntaxError_Exits2WithPosition()
    {
        var path = Write("broken.yaml", "listeners:\n  - { name: public, address: 127.0.0.1:0\nroutes: [\n");

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains((result.StdoutText + "\n" + result.Stderr).Split('\n'), l => PositionedError().IsMatch(l.Trim()));
    }

    [Fact]
    public async Task Validate_ValidConfig_Exits0()
    {
        var path = Write("good.yaml", new ProxyConfig { BackendPort = 8080 }.Render());

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 0, result.ToString());
    }

    [Fact]
    public async Task Version_Flag_Exits0AndPrintsVersion()
    {
        var result = await RunProxyAsync("--version");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Matches(@"\d+\.\d+", result.StdoutText);
    }

    [Fact]
    public async Task Run_Sigterm_FinishesInFlightRequestAndExits0()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Delayed(TimeSpan.FromSeconds(1.5)));
        using var proxy = await StartAnsweringAsync("run.yaml", upstream.Address, "server: { shutdown_timeout: 10s }");

        var inFlight = proxy.Client.GetAsync($"http://127.0.0.1:{proxy.Port}/slow");
        await upstream.WaitForRequestAsync();
        Assert.Equal(0, ProxyBinary.Kill(proxy.Process.Id, 15)); // SIGTERM, straight through libc: no kill(1) binary needed

        using var response = await inFlight;
        Assert.Equal(System.Net.HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("GET /slow", await response.Content.ReadAsStringAsync());
        using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        await proxy.Process.WaitForExitAsync(exit.Token);
        Assert.True(proxy.Process.ExitCode == 0, $"exit {proxy.Process.ExitCode}\n{await proxy.Stdout}\n{await proxy.Stderr}");
        Assert.Contains("\"event\":\"shutdown_completed\"", await proxy.Stdout, StringComparison.Ordinal);
    }

    /// <summary>
    /// The local_reply log line names the target without its query, as the access log does: a query carries secrets
    /// (an api_key, a signed URL's signature). It used to log the whole target.
    /// </summary>
    [Fact]
    public async Task Run_LocalReplyLogLine_OmitsTheQuery()
    {
        using var proxy = await StartAnsweringAsync("query.yaml", $"http://127.0.0.1:{Ports.ClosedPort()}");

        using var response = await proxy.Client.GetAsync($"http://127.0.0.1:{proxy.Port}/orders/7?api_key=supersecretkey123");
        Assert.Equal(System.Net.HttpStatusCode.BadGateway, response.StatusCode);
        Assert.Equal(0, ProxyBinary.Kill(proxy.Process.Id, 15));
        using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        await proxy.Process.WaitForExitAsync(exit.Token);

        string stdout = await proxy.Stdout;
        Assert.Contains("\"target\":\"/orders/7\"", stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("supersecretkey123", stdout, StringComparison.Ordinal);
    }

    /// <summary>A second SIGTERM while draining stops waiting: what is still in flight is cut and the process exits.</summary>
    [Fact]
    public async Task Run_SecondSigterm_AbortsTheDrainAndExits()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Hang());
        using var proxy = await StartAnsweringAsync("force.yaml", upstream.Address, "server: { shutdown_timeout: 60s }");

        var inFlight = proxy.Client.GetAsync($"http://127.0.0.1:{proxy.Port}/hangs");
        await upstream.WaitForRequestAsync();
        Assert.Equal(0, ProxyBinary.Kill(proxy.Process.Id, 15));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await Task.Delay(300);
        Assert.False(proxy.Process.HasExited, "the first SIGTERM must drain, not exit");
        Assert.Equal(0, ProxyBinary.Kill(proxy.Process.Id, 15));

        using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        await proxy.Process.WaitForExitAsync(exit.Token);
        await Assert.ThrowsAnyAsync<HttpRequestException>(() => inFlight);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"exited after {clock.Elapsed} of a 60 s drain");
        Assert.True(proxy.Process.ExitCode == 0, $"exit {proxy.Process.ExitCode}\n{await proxy.Stdout}\n{await proxy.Stderr}");
        Assert.Contains("\"event\":\"shutdown_forced\"", await proxy.Stdout, StringComparison.Ordinal);
    }

    /// <summary>
    /// A port another process listens on (here the test process) is a runtime failure, exit 1 as the README says, not a
    /// second listener that shares the port (SO_REUSEPORT) and takes part of its connections. The message names the
    /// listener, its address and where the address is in the file (it said only "Address already in use", which of
    /// several listeners left to guess), in the words a reload's bind error uses.
    /// </summary>
    [Fact]
    public async Task Run_PortInUse_Exits1NamingTheListener()
    {
        using var holder = HoldPort(out int taken);
        var path = Write("taken.yaml", $$"""
            listeners:
              - { name: free, address: "127.0.0.1:0" }
              - { name: public, address: "127.0.0.1:{{taken}}" }
            routes:
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hi" } }
            """);

        var result = await ProcessRunner.RunAsync(ProxyBinary.DotnetHost(), [ProxyBinary.DllPath(), "run", "--config", path], timeout: TimeSpan.FromSeconds(20));

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Contains($"proxy: {path}:{AddressAt(path, "name: public")}: listener 'public' cannot bind 127.0.0.1:{taken}: Address already in use",
            result.Stderr, StringComparison.Ordinal);
    }

    /// <summary>The admin listener's address in use: exit 1, and the message names the admin listener and its address.</summary>
    [Fact]
    public async Task Run_AdminPortInUse_Exits1NamingTheAdminListener()
    {
        using var holder = HoldPort(out int taken);
        var path = Write("admin-taken.yaml", $$"""
            admin: { address: "127.0.0.1:{{taken}}" }
            listeners:
              - { name: public, address: "127.0.0.1:0" }
            routes:
              - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hi" } }
            """);

        var result = await ProcessRunner.RunAsync(ProxyBinary.DotnetHost(), [ProxyBinary.DllPath(), "run", "--config", path], timeout: TimeSpan.FromSeconds(20));

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Contains($"proxy: {path}:{AddressAt(path, "admin:")}: listener 'admin' cannot bind 127.0.0.1:{taken}: Address already in use",
            result.Stderr, StringComparison.Ordinal);
    }

    /// <summary>"LINE:COL" of the quoted address on the first line of the file that contains <paramref name="marker"/>.</summary>
    private static string AddressAt(string path, string marker)
    {
        string[] lines = File.ReadAllLines(path);
        int line = Array.FindIndex(lines, l => l.Contains(marker, StringComparison.Ordinal));
        return $"{line + 1}:{lines[line].IndexOf("\"127.0.0.1:", StringComparison.Ordinal) + 1}";
    }

    /// <summary>A loopback port held listening by the test process until disposed.</summary>
    private static Socket HoldPort(out int port)
    {
        var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        holder.Listen();
        port = ((IPEndPoint)holder.LocalEndPoint!).Port;
        return holder;
    }

    /// <summary>
    /// A proxy that only speaks plain HTTP never loads OpenSSL: its libcrypto costs 3 to 4 MiB of resident memory, and
    /// generating request ids through RandomNumberGenerator used to load it on the first request.
    /// </summary>
    [Fact]
    public async Task Run_PlainHttpTraffic_DoesNotLoadOpenSsl()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        using var proxy = await StartAnsweringAsync("plain.yaml", upstream.Address);

        for (int i = 0; i < 3; i++)
        {
            using var response = await proxy.Client.GetAsync($"http://127.0.0.1:{proxy.Port}/items/{i}");
            Assert.Equal(System.Net.HttpStatusCode.OK, response.StatusCode);
            Assert.True(response.Headers.Contains("x-request-id"), "a generated request id");
        }

        string[] mapped = File.ReadAllLines($"/proc/{proxy.Process.Id}/maps");
        Assert.DoesNotContain(mapped, line => line.Contains("libcrypto", StringComparison.Ordinal) || line.Contains("libssl", StringComparison.Ordinal));
    }

    /// <summary>The proxy binary as a child process, with an HTTP client for it; killed on dispose if still running.</summary>
    private sealed class ProxyProcess(System.Diagnostics.Process process, int port) : IDisposable
    {
        public System.Diagnostics.Process Process { get; } = process;
        public int Port { get; } = port;
        public Task<string> Stdout { get; } = process.StandardOutput.ReadToEndAsync();
        public Task<string> Stderr { get; } = process.StandardError.ReadToEndAsync();
        public HttpClient Client { get; } = new() { Timeout = TimeSpan.FromSeconds(20) };

        public void Dispose()
        {
            Client.Dispose();
            if (!Process.HasExited)
            {
                Process.Kill();
            }
            Process.Dispose();
        }
    }

    /// <summary>
    /// Starts the proxy binary on a config with a <c>/ready</c> route answered by the proxy and every other path sent to
    /// <paramref name="upstream"/>, and returns once it answers <c>/ready</c>.
    /// </summary>
    private async Task<ProxyProcess> StartAnsweringAsync(string configName, string upstream, string serverBlock = "")
    {
        int port = Ports.ClosedPort();
        var path = Write(configName, serverBlock + "\n" + $$"""
            listeners:
              - { name: public, address: "127.0.0.1:{{port}}" }
            routes:
              - { id: ready, match: { path: /ready }, respond: { status: 200, body: "ready" } }
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend:
                destinations: [{ address: "{{upstream}}" }]
            """);
        var proxy = new ProxyProcess(StartProxyProcess(path), port);
        try
        {
            if (!await ProxyBinary.WaitUntilListeningAsync(port, proxy.Process))
            {
                Assert.Fail($"proxy did not start (exit {(proxy.Process.HasExited ? proxy.Process.ExitCode : -1)}):\n{await proxy.Stdout}\n{await proxy.Stderr}");
            }
            // A connect alone does not prove that this proxy answers on the port (seen in CI: the request after a
            // successful connect was refused): wait for its own answer.
            Assert.True(await WaitUntilAnsweringAsync(proxy.Client, $"http://127.0.0.1:{port}/ready", proxy.Process), "the proxy never answered /ready");
            return proxy;
        }
        catch
        {
            proxy.Dispose();
            throw;
        }
    }

    private static System.Diagnostics.Process StartProxyProcess(string configPath)
    {
        var start = new System.Diagnostics.ProcessStartInfo(ProxyBinary.DotnetHost()) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { ProxyBinary.DllPath(), "run", "--config", configPath })
        {
            start.ArgumentList.Add(a);
        }
        return System.Diagnostics.Process.Start(start)!;
    }

    private static async Task<bool> WaitUntilAnsweringAsync(HttpClient client, string url, System.Diagnostics.Process process)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (DateTime.UtcNow < deadline && !process.HasExited)
        {
            try
            {
                using var response = await client.GetAsync(url);
                if (response.StatusCode == System.Net.HttpStatusCode.OK && await response.Content.ReadAsStringAsync() == "ready")
                {
                    return true;
                }
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(100);
        }
        return false;
    }



    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [GeneratedRegex(@"^.+:\d+:\d+: ")]
    private static partial Regex PositionedError();

    private string Write(string name, string content)
    {
        var path = Path.Combine(_directory, name);
        File.WriteAllText(path, content);
        return path;
    }

    private static Task<ProcessResult> RunProxyAsync(params string[] arguments)
    {
        var proxyDll = ProxyBinary.DllPath();
        return ProcessRunner.RunAsync(ProxyBinary.DotnetHost(), [proxyDll, .. arguments], timeout: TimeSpan.FromSeconds(30));
    }
}
