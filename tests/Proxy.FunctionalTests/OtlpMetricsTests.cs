using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

/// <summary>
/// <c>metrics: { otlp: ... }</c> with the real binary: an in-test OTLP/HTTP receiver gets protobuf exports of the
/// proxy's meters, and the request counter carries the requests sent.
/// </summary>
public sealed class OtlpMetricsTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("proxy-otlp-metrics-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Run_MetricsOtlp_RequestCounterExportedWithTheRequestsSent()
    {
        await using var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var collector = RecordingUpstream.Start(UpstreamBehaviors.Ok()); // answers OTLP/HTTP POSTs with 200
        int port = Ports.ClosedPort();
        string config = Path.Combine(_directory, "run.yaml");
        await File.WriteAllTextAsync(config, $$"""
            server: { watch_config: false }
            listeners:
              - { name: public, address: "127.0.0.1:{{port}}" }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend: { destinations: ["{{upstream.Address}}"] }
            metrics: { otlp: { endpoint: "{{collector.Address}}", protocol: http/protobuf, interval: 200ms } }
            """);
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var start = new ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { ProxyBinary.DllPath(), "run", "--config", config })
        {
            start.ArgumentList.Add(a);
        }
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            if (!await ProxyBinary.WaitUntilListeningAsync(port, process))
            {
                Assert.Fail($"proxy did not start:\n{await stdout}\n{await stderr}");
            }
            const int sent = 3;
            for (int i = 0; i < sent; i++)
            {
                await using var client = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
                await client.SendAsync(Wire.Get($"/counted/{i}", "example.test"));
                Assert.Equal(200, (await client.ReadResponseAsync()).Status);
            }

            // Periodic exports (every 200 ms): one soon carries the three requests, cumulative.
            long exported = 0;
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
            while (exported < sent && DateTime.UtcNow < deadline && !process.HasExited)
            {
                await Task.Delay(100);
                var last = collector.Requests.LastOrDefault(r => r.Method == "POST" && r.Target == "/v1/metrics");
                exported = last is null ? 0 : RequestCount(last.Body, route: "all");
            }
            var exports = collector.Requests.Where(r => r.Method == "POST" && r.Target == "/v1/metrics").ToList();
            if (exports.Count == 0)
            {
                // stdout and stderr end only with the process: read them only once it is gone.
                process.Kill();
                Assert.Fail($"no OTLP metrics export; collector saw: {string.Join(", ", collector.Requests.Select(r => r.StartLine))}\n{await stdout}\n{await stderr}");
            }
            Assert.Equal("application/x-protobuf", exports[0].Header("content-type"));
            Assert.Equal(sent, exported);
            // The duration histogram is recorded only while something listens: the exporter is such a listener.
            Assert.True(exports[^1].Body.AsSpan().IndexOf("proxy.request.duration"u8) >= 0, "no proxy.request.duration in the export");

            // SIGTERM: after the drain, while the meters still exist, one last export carries the same counts.
            int before = collector.Requests.Length;
            Assert.Equal(0, ProxyBinary.Kill(process.Id, 15));
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await process.WaitForExitAsync(cts.Token);
            Assert.Equal(0, process.ExitCode);
            // (The provider's own export when it is disposed comes after the meters ended, so it is empty.)
            var onShutdown = collector.Requests.Skip(before).Where(r => r.Method == "POST" && r.Target == "/v1/metrics").ToList();
            Assert.Contains(onShutdown, r => RequestCount(r.Body, route: "all") == sent);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
        }
    }

    /// <summary>
    /// A collector that accepts connections and never answers must not hold the exit: the exporters' last flush on
    /// SIGTERM is bounded by 2 s in all (Telemetry.ShutdownBudget). Before, the metrics' final flush waited for the
    /// exporter's 10 s request timeout and the spans' shutdown up to 5 s more.
    /// </summary>
    [Fact]
    public async Task Run_OtlpCollectorNeverAnswers_SigtermExitsWithinTheFlushBudget()
    {
        using var stalled = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        stalled.Start();
        var held = new List<System.Net.Sockets.TcpClient>();
        using var stop = new CancellationTokenSource();
        var accepting = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    held.Add(await stalled.AcceptTcpClientAsync(stop.Token)); // read nothing, answer nothing
                }
            }
            catch (OperationCanceledException)
            {
            }
        });
        string endpoint = $"http://127.0.0.1:{((IPEndPoint)stalled.LocalEndpoint).Port}";
        int port = Ports.ClosedPort();
        string config = Path.Combine(_directory, "stalled.yaml");
        await File.WriteAllTextAsync(config, $$"""
            server: { watch_config: false }
            listeners:
              - { name: public, address: "127.0.0.1:{{port}}" }
            routes:
              - { id: hello, match: { path: "/{**rest}" }, respond: { status: 200, body: "hi" } }
            tracing: { sampling: 1, otlp: { endpoint: "{{endpoint}}", protocol: http/protobuf } }
            metrics: { otlp: { endpoint: "{{endpoint}}", protocol: http/protobuf, interval: 30s } }
            """);
        var start = new ProcessStartInfo(ProxyBinary.DotnetHost()) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { ProxyBinary.DllPath(), "run", "--config", config })
        {
            start.ArgumentList.Add(a);
        }
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            if (!await ProxyBinary.WaitUntilListeningAsync(port, process))
            {
                Assert.Fail($"proxy did not start:\n{await stdout}\n{await stderr}");
            }
            for (int i = 0; i < 3; i++)
            {
                await using var client = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
                await client.SendAsync(Wire.Get("/traced", "example.test"));
                Assert.Equal(200, (await client.ReadResponseAsync()).Status);
            }
            await Task.Delay(1500); // the spans' batch (1 s) goes out to the stalled collector

            var clock = Stopwatch.StartNew();
            Assert.Equal(0, ProxyBinary.Kill(process.Id, 15));
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await process.WaitForExitAsync(cts.Token);
            Assert.Equal(0, process.ExitCode);
            // 2 s of budget plus the drain and the process's exit, with room for a loaded machine; before: 10 s or more.
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(8), $"the proxy exited {clock.Elapsed} after SIGTERM");
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
            stop.Cancel();
            await accepting;
            foreach (var c in held)
            {
                c.Dispose();
            }
        }
    }

    [Fact]
    public void RequestCount_HandBuiltExport_SumsPointsOfTheRoute()
    {
        // The parser below is test code too: check it on a message built by hand (two points, one per route).
        static byte[] Field(int number, byte[] payload) => [(byte)(number << 3 | 2), (byte)payload.Length, .. payload];
        static byte[] Text(int number, string value) => Field(number, Encoding.ASCII.GetBytes(value));
        static byte[] Point(string route, long value)
        {
            byte[] asInt = new byte[9];
            asInt[0] = 6 << 3 | 1;
            BinaryPrimitives.WriteInt64LittleEndian(asInt.AsSpan(1), value);
            return Field(1, [.. Field(7, [.. Text(1, "route"), .. Field(2, Text(1, route))]), .. asInt]);
        }
        byte[] metric = [.. Text(1, "proxy.requests"), .. Field(7, [.. Point("all", 5), .. Point("other", 7)])];
        byte[] request = Field(1, Field(2, Field(2, metric)));

        Assert.Equal(5, RequestCount(request, "all"));
        Assert.Equal(7, RequestCount(request, "other"));
        Assert.Equal(0, RequestCount(request, "none"));
    }

    /// <summary>
    /// Sum of the <c>proxy.requests</c> points whose <c>route</c> attribute is <paramref name="route"/>, read from an
    /// OTLP <c>ExportMetricsServiceRequest</c> (opentelemetry-proto metrics/v1/metrics.proto): resource_metrics = 1,
    /// scope_metrics = 2, metrics = 2; Metric name = 1, sum = 7; Sum data_points = 1; NumberDataPoint attributes = 7,
    /// as_double = 4, as_int = 6 (sfixed64); KeyValue key = 1, value = 2; AnyValue string_value = 1.
    /// </summary>
    private static long RequestCount(byte[] body, string route)
    {
        long total = 0;
        foreach (var resource in Messages(body, 1))
        {
            foreach (var scope in Messages(resource, 2))
            {
                foreach (var metric in Messages(scope, 2))
                {
                    if (Messages(metric, 1).FirstOrDefault() is not { } name || Encoding.UTF8.GetString(name) != "proxy.requests")
                    {
                        continue;
                    }
                    foreach (var sum in Messages(metric, 7))
                    {
                        foreach (var point in Messages(sum, 1))
                        {
                            bool match = Messages(point, 7).Any(kv => Messages(kv, 1).Any(k => Encoding.UTF8.GetString(k) == "route")
                                && Messages(kv, 2).Any(v => Messages(v, 1).Any(s => Encoding.UTF8.GetString(s) == route)));
                            if (match)
                            {
                                foreach (var (field, value) in Fixed64(point))
                                {
                                    total += field == 6 ? value : field == 4 ? (long)BitConverter.Int64BitsToDouble(value) : 0;
                                }
                            }
                        }
                    }
                }
            }
        }
        return total;
    }

    /// <summary>The length-delimited fields numbered <paramref name="number"/> of one protobuf message.</summary>
    private static List<byte[]> Messages(byte[] message, int number)
    {
        var found = new List<byte[]>();
        Walk(message, (field, wire, start, length) =>
        {
            if (field == number && wire == 2)
            {
                found.Add(message.AsSpan(start, length).ToArray());
            }
        });
        return found;
    }

    private static List<(int Field, long Value)> Fixed64(byte[] message)
    {
        var found = new List<(int, long)>();
        Walk(message, (field, wire, start, _) =>
        {
            if (wire == 1)
            {
                found.Add((field, BinaryPrimitives.ReadInt64LittleEndian(message.AsSpan(start, 8))));
            }
        });
        return found;
    }

    private static void Walk(byte[] message, Action<int, int, int, int> visit)
    {
        int i = 0;
        while (i < message.Length)
        {
            ulong tag = Varint(message, ref i);
            int field = (int)(tag >> 3), wire = (int)(tag & 7);
            switch (wire)
            {
                case 0:
                    Varint(message, ref i);
                    break;
                case 1:
                    visit(field, wire, i, 8);
                    i += 8;
                    break;
                case 2:
                    int length = (int)Varint(message, ref i);
                    visit(field, wire, i, length);
                    i += length;
                    break;
                case 5:
                    i += 4;
                    break;
                default:
                    throw new InvalidDataException($"protobuf wire type {wire} at {i}");
            }
        }
    }

    private static ulong Varint(byte[] bytes, ref int i)
    {
        ulong value = 0;
        for (int shift = 0; ; shift += 7)
        {
            byte b = bytes[i++];
            value |= (ulong)(b & 0x7f) << shift;
            if (b < 0x80)
            {
                return value;
            }
        }
    }
}
