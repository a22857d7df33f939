using System.Reflection;
using System.Runtime.InteropServices;
using Proxy.Hosting;

namespace Proxy.Host;

/// <summary>The <c>proxy</c> command: run, validate, version, help. Exit codes: 0 ok, 1 runtime failure, 2 invalid config.</summary>
internal static class Program
{
    private const int ExitOk = 0;
    private const int ExitFailure = 1;
    private const int ExitInvalidConfig = 2;

    private const string Usage = """
        Usage: proxy <command> [options]

        Commands:
          run        Start the gateway (default config: ./proxy.yaml)
          validate   Check a config file; prints FILE:LINE:COL: message for every problem
          lint       Check a config file, then list what to harden: routes without authentication or rate
                     limit, catch-all routes on listeners reachable from other hosts, clusters on default
                     timeouts (FILE:LINE:COL: code: message; exit 0 even with findings)
          dev-cert   Write a self-signed certificate and key (PEM) for local TLS
                     [--out DIR (default ./certs)] [--hosts localhost,127.0.0.1,::1]
          hash-key   Print the SHA-256 (hex) of an API key, for an api_key policy's 'sha256:'
                     (proxy hash-key KEY, or the key on standard input: proxy hash-key -)

        Options:
          -c, --config FILE   Config file (default ./proxy.yaml)
          -h, --help          Show this help
          -v, --version       Show the version

        Exit codes: 0 ok, 1 runtime failure, 2 invalid config.
        """;

    public static async Task<int> Main(string[] args)
    {
        // Run socket continuations on the epoll thread instead of hopping to the thread pool: one fewer thread
        // switch per I/O (measured: 138 -> 82 us per proxied round trip, bench ProxyRoundTripBenchmarks). The
        // engine never blocks on those threads. Read by the socket engine at first use; set it to 0 to opt out.
        // Under NativeAOT the socket engine reads the process environment itself, so the variable is set there too.
        if (Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") is null)
        {
            Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
            NativeEnvironment.TrySet("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
        }
        // Our edge-triggered epoll engine drives the sockets unless PROXY_SOCKET_ENGINE says otherwise ("dotnet"): it
        // saves the EAGAIN receive the runtime's engine tries before every wait (measured on S1, 64 keep-alive
        // connections, alternating runs on a quiet machine: 4.1 instead of 5.8 syscalls and 24 instead of 28-32 us of
        // CPU per proxied request; docs/performance.md). The library alone keeps the runtime's engine by default.
        if (Environment.GetEnvironmentVariable("PROXY_SOCKET_ENGINE") is null)
        {
            Environment.SetEnvironmentVariable("PROXY_SOCKET_ENGINE", "epoll");
        }
        // After a burst, give the memory it left behind back to the system once the connections have gone (one
        // aggressive collection and malloc_trim, logged as memory_released; docs/performance.md). A process that embeds
        // the library owns its collector and opts in itself; PROXY_RELEASE_IDLE_MEMORY=0 opts out here.
        if (Environment.GetEnvironmentVariable("PROXY_RELEASE_IDLE_MEMORY") is null)
        {
            Environment.SetEnvironmentVariable("PROXY_RELEASE_IDLE_MEMORY", "1");
        }
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? ExitInvalidConfig : ExitOk;
        }
        if (args[0] is "-v" or "--version" or "version")
        {
            Console.WriteLine($"proxy {Version}");
            return ExitOk;
        }

        string command = args[0];
        if (command == "dev-cert")
        {
            return DevCert(args);
        }
        if (command == "hash-key")
        {
            return HashKey(args);
        }
        string configPath = "proxy.yaml";
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "-c" or "--config" when i + 1 < args.Length:
                    configPath = args[++i];
                    break;
                case "-h" or "--help":
                    Console.WriteLine(Usage);
                    return ExitOk;
                default:
                    Console.Error.WriteLine($"proxy: unknown argument '{args[i]}'");
                    Console.Error.WriteLine(Usage);
                    return ExitInvalidConfig;
            }
        }

        return command switch
        {
            "run" => await RunAsync(configPath),
            "validate" => Validate(configPath),
            "lint" => Lint(configPath),
            _ => UnknownCommand(command),
        };
    }

    private static string Version =>
        typeof(ProxyServer).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion?.Split('+')[0]
        ?? "0.0.0";

    /// <summary><c>proxy dev-cert [--out DIR] [--hosts a,b]</c>: a self-signed certificate for local TLS.</summary>
    private static int DevCert(string[] args)
    {
        string directory = "certs";
        string[] hosts = ["localhost", "127.0.0.1", "::1"];
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--out" when i + 1 < args.Length:
                    directory = args[++i];
                    break;
                case "--hosts" when i + 1 < args.Length:
                    hosts = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                    break;
                case "-h" or "--help":
                    Console.WriteLine(Usage);
                    return ExitOk;
                default:
                    Console.Error.WriteLine($"proxy dev-cert: unknown argument '{args[i]}'");
                    Console.Error.WriteLine(Usage);
                    return ExitInvalidConfig;
            }
        }
        if (hosts.Length == 0)
        {
            Console.Error.WriteLine("proxy dev-cert: --hosts needs at least one name");
            return ExitInvalidConfig;
        }
        try
        {
            var now = DateTimeOffset.UtcNow;
            using var certificate = Proxy.Transport.Tls.DevCertificate.Create(hosts, now.AddMinutes(-5), now.AddDays(365));
            var (certPath, keyPath) = Proxy.Transport.Tls.DevCertificate.WritePem(certificate, directory, "dev-cert");
            Console.WriteLine($"wrote {certPath} and {keyPath} (self-signed, {string.Join(", ", hosts)}, valid until {certificate.NotAfter.ToUniversalTime():yyyy-MM-dd})");
            Console.WriteLine($"trust it with: curl --cacert {certPath} https://localhost:8443/");
            return ExitOk;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"proxy dev-cert: {e.Message}");
            return ExitFailure;
        }
    }

    private static int UnknownCommand(string command)
    {
        Console.Error.WriteLine($"proxy: unknown command '{command}'");
        Console.Error.WriteLine(Usage);
        return ExitInvalidConfig;
    }

    /// <summary>
    /// Prints the lower-case hex SHA-256 of the key's UTF-8 bytes. Reading it from standard input keeps the key out of
    /// the shell history and the process list; a trailing newline there is not part of the key.
    /// </summary>
    private static int HashKey(string[] args)
    {
        string? key = args.Length switch
        {
            1 => Console.In.ReadLine(),
            2 when args[1] == "-" => Console.In.ReadLine(),
            2 => args[1],
            _ => null,
        };
        if (string.IsNullOrEmpty(key))
        {
            Console.Error.WriteLine("proxy: hash-key needs a non-empty key (proxy hash-key KEY, or proxy hash-key - to read it from standard input)");
            return ExitInvalidConfig;
        }
        Console.WriteLine(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(key))));
        return ExitOk;
    }

    private static int Validate(string configPath)
    {
        var errors = ProxyServer.Validate(configPath);
        foreach (var error in errors)
        {
            Console.WriteLine(error);
        }
        if (errors.Count > 0)
        {
            Console.Error.WriteLine($"{configPath}: {errors.Count} problem(s)");
            return ExitInvalidConfig;
        }
        Console.WriteLine($"{configPath}: ok");
        return ExitOk;
    }

    private static int Lint(string configPath)
    {
        var (errors, findings) = Proxy.Configuration.ConfigLint.Run(configPath);
        foreach (var error in errors)
        {
            Console.WriteLine(error);
        }
        if (errors.Count > 0)
        {
            Console.Error.WriteLine($"{configPath}: {errors.Count} problem(s)");
            return ExitInvalidConfig;
        }
        foreach (var finding in findings)
        {
            Console.WriteLine(finding);
        }
        Console.Error.WriteLine($"{configPath}: valid; {findings.Count} finding(s) to review");
        return ExitOk;
    }

    private static async Task<int> RunAsync(string configPath)
    {
        ProxyServer server;
        // SIGTERM/SIGINT: drain and stop. Registered before the listeners bind: a SIGTERM sent as soon as the port
        // answers must never meet the default action (terminate at once, dropping requests in flight; seen in CI).
        // A second one while draining: stop waiting for requests in flight (an operator's Ctrl+C twice).
        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var abortNow = new CancellationTokenSource();
        int signals = 0;
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true; // we shut down ourselves, gracefully
            if (Interlocked.Increment(ref signals) == 1)
            {
                stop.TrySetResult();
            }
            else
            {
                abortNow.Cancel();
            }
        }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        PosixSignalRegistration? hangup = null;
        PosixSignalRegistration? reopen = null;
        OpenTelemetry.Trace.TracerProvider? tracing = null;
        OpenTelemetry.Metrics.MeterProvider? metrics = null;
        try
        {
            ProxyServer? loaded = ProxyServer.TryFromFile(configPath, out var errors);
            if (loaded is null)
            {
                foreach (var error in errors)
                {
                    Console.Error.WriteLine(error);
                }
                return ExitInvalidConfig;
            }
            server = loaded;
            // The command reloads on its own when the file changes, unless the file says server.watch_config: false.
            server.WatchConfigByDefault = true;
            // SIGHUP: reload the config file (as nginx and HAProxy do). Registered before the listeners bind, so a
            // SIGHUP sent as soon as the port answers never meets the default action (terminate). The outcome is
            // logged by the server; a bad file leaves the running config in place.
            ProxyServer reloading = server;
            hangup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, context =>
            {
                context.Cancel = true;
                _ = reloading.ReloadAsync();
            });
            // SIGUSR1 (10 on Linux; PosixSignal has no name for it but takes raw numbers): reopen the access log
            // file after logrotate renamed it, as nginx does. Registered before binding, like SIGHUP.
            if (OperatingSystem.IsLinux())
            {
                reopen = PosixSignalRegistration.Create((PosixSignal)10, context =>
                {
                    context.Cancel = true;
                    reloading.ReopenLogs();
                });
            }
            // A NativeAOT binary starts with the soft open-file limit it was given (1,024 for a Debian service), where the
            // JIT runtime raises it to the hard limit: raise it likewise, and warn when max_connections needs more.
            OpenFileLimit.RaiseFor(server.Snapshot.Server.MaxConnections);
            // The OTLP exporter is built before the listeners bind, so the first request is already traced.
            tracing = Telemetry.StartTracing(server.Snapshot.Observability.Tracing, Version);
            metrics = Telemetry.StartMetrics(server.Snapshot.Observability.Metrics, Version);
            if (metrics is { } provider)
            {
                server.Drained = () => Telemetry.Flush(provider);
            }
            await server.StartAsync();
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or UnauthorizedAccessException)
        {
            hangup?.Dispose();
            reopen?.Dispose();
            tracing?.Dispose();
            metrics?.Dispose();
            // A bind failure names the listener, its address and where that address is in the file (as a reload's
            // does): "proxy: proxy.yaml:3:32: listener 'public' cannot bind 127.0.0.1:8080: Address already in use".
            Console.Error.WriteLine(e is ListenerBindException bind ? $"proxy: {bind.Location}: {bind.Message}" : $"proxy: {e.Message}");
            return ExitFailure;
        }
        using var hangupRegistration = hangup;
        using var reopenRegistration = reopen;

        await stop.Task;
        await server.StopAsync(server.ShutdownTimeout, abortNow.Token);
        // Exports the spans still batched (the metrics' last export ran in server.Drained, before the meters ended),
        // bounded by Telemetry.ShutdownBudget: a stalled collector does not delay the exit.
        if (Telemetry.Shutdown(tracing, metrics))
        {
            tracing?.Dispose();
            metrics?.Dispose();
        }
        await ProxyServer.FlushLogsAsync();
        return ExitOk;
    }
}

/// <summary>setenv(3) for settings that native code or NativeAOT-compiled libraries read from the process environment.</summary>
internal static partial class NativeEnvironment
{
    public static void TrySet(string name, string value)
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }
        try
        {
            _ = SetEnv(name, value, 1);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not glibc (musl names it differently): the managed environment was set anyway.
        }
    }

    [LibraryImport("libc.so.6", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);
}
