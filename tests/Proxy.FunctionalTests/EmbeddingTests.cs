using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Proxy.Core.Tests.Diagnostics;
using Proxy.Diagnostics;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Hosting;
using Proxy.Pipeline;

namespace Proxy.FunctionalTests;

/// <summary>
/// <see cref="ProxyServer"/> as an embedder drives it: the life cycle's misuses fail with a clear exception instead of
/// serving from released state, and a custom policy factory's failure is a config error, never an exception out of a
/// reload.
/// </summary>
public sealed class EmbeddingTests
{
    private const string Yaml = """
        server: { watch_config: false }
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello" } }
        """;

    private static readonly Lazy<bool> s_kinds = new(() =>
    {
        PolicyKinds.Register("test_embed_null", _ => null!);
        PolicyKinds.Register("test_embed_crash", _ => throw new NullReferenceException("crashed in the factory"));
        return true;
    });

    private static string WithPolicy(string kind) => $$"""
        server: { watch_config: false }
        policies:
          custom: { {{kind}}: {} }
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello" }, policies: [custom] }
        """;

    [Fact]
    public async Task Start_AfterStop_ThrowsInsteadOfServing()
    {
        var server = ProxyServer.FromYaml(Yaml);
        await server.StopAsync(TimeSpan.FromSeconds(1));

        await Assert.ThrowsAsync<InvalidOperationException>(() => server.StartAsync());

        Assert.Throws<ArgumentException>(() => server.GetEndPoint("public"));
        await server.DisposeAsync();
    }

    [Fact]
    public async Task Start_AfterDispose_ThrowsInsteadOfServing()
    {
        var server = ProxyServer.FromYaml(Yaml);
        await server.DisposeAsync();

        await Assert.ThrowsAsync<InvalidOperationException>(() => server.StartAsync());

        Assert.Throws<ArgumentException>(() => server.GetEndPoint("public"));
    }

    [Fact]
    public async Task Start_CancelledToken_LeavesTheServerStartable()
    {
        await using var server = ProxyServer.FromYaml(Yaml);
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => server.StartAsync(cancelled.Token));
        await server.StartAsync();

        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        Assert.Equal("hello", await client.GetStringAsync($"http://{server.GetEndPoint("public")}/hello"));
    }

    [Fact]
    public void FromYaml_PolicyFactoryReturnsNull_IsAConfigErrorAtThePolicy()
    {
        _ = s_kinds.Value;

        var e = Assert.Throws<InvalidDataException>(() => ProxyServer.FromYaml(WithPolicy("test_embed_null"), "embed.yaml"));

        Assert.Contains("embed.yaml:3:", e.Message, StringComparison.Ordinal);
        Assert.Contains("policy 'custom' (test_embed_null): the factory returned no filter", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateYaml_ValidConfig_NoErrors() => Assert.Empty(ProxyServer.ValidateYaml(Yaml));

    [Fact]
    public void ValidateYaml_BrokenConfig_SameErrorsAsValidateOnAFile()
    {
        const string broken = """
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: api, match: { path: /api }, cluster: missing }
              - { id: api, match: { path: /other }, respond: { status: 700 } }
            """;
        string path = Path.Combine(Path.GetTempPath(), $"validate-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(path, broken);
        try
        {
            IReadOnlyList<string> fromText = ProxyServer.ValidateYaml(broken, "embed.yaml");

            Assert.True(fromText.Count >= 3, string.Join('\n', fromText));
            Assert.All(fromText, e => Assert.StartsWith("embed.yaml:", e, StringComparison.Ordinal));
            Assert.Contains(fromText, e => e.StartsWith("embed.yaml:4:", StringComparison.Ordinal) && e.Contains("missing", StringComparison.Ordinal));
            Assert.Equal(ProxyServer.Validate(path).Select(e => e.Replace(path, "embed.yaml", StringComparison.Ordinal)), fromText);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Reload_PolicyFactoryThrowsUnexpectedException_FailsAndKeepsTheRunningConfig()
    {
        _ = s_kinds.Value;
        await using var proxy = await TestProxy.StartAsync(Yaml);
        string version = proxy.Server.ConfigVersion;

        ConfigReloadResult result = await proxy.Server.ReloadAsync(WithPolicy("test_embed_crash"));

        Assert.False(result.Success);
        Assert.Contains(result.Errors, e => e.Contains("policy 'custom' (test_embed_crash): the factory failed: System.NullReferenceException: crashed in the factory",
            StringComparison.Ordinal));
        Assert.Equal(version, proxy.Server.ConfigVersion);
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        Assert.Equal("hello", await client.GetStringAsync($"http://{proxy.Public}/hello"));
    }
}

/// <summary>
/// An embedder's control of the engine log (<see cref="ProxyLogging"/>): process-wide, so these run alone.
/// </summary>
[Collection(ProcessLogCollection.Name)]
public sealed class EmbeddingLogTests
{
    private const string Yaml = """
        server: { watch_config: false }
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: down, match: { path: "/down/{**rest}" }, cluster: dead }
        clusters:
          dead: { destinations: ["http://127.0.0.1:1"], connect_timeout: 2s }
        """;

    private static bool IsReplyTo(JsonElement line, string target)
        => line.TryGetProperty("target", out JsonElement t) && t.GetString() == target;

    [Fact]
    public async Task SetOutput_Writer_GetsTheLogLinesUntilSetBackToStdout()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml);
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        string before = $"/nowhere/{Guid.NewGuid():N}";
        string after = $"/nowhere/{Guid.NewGuid():N}";
        var capture = LogCapture.Start();
        try
        {
            Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync($"http://{proxy.Public}{before}")).StatusCode);

            JsonElement line = await capture.WaitForEventAsync("local_reply", l => IsReplyTo(l, before));
            Assert.Equal("info", line.GetProperty("level").GetString());
            Assert.Equal(404, line.GetProperty("status").GetInt32());
            Assert.Equal("no_route", line.GetProperty("details").GetString());
        }
        finally
        {
            await capture.StopAsync();
        }

        // Back on stdout: the writer sees no more lines.
        Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync($"http://{proxy.Public}{after}")).StatusCode);
        await ProxyServer.FlushLogsAsync();
        Assert.DoesNotContain(capture.Events("local_reply"), l => IsReplyTo(l, after));
    }

    /// <summary>A writer that fails every write, as stdout does once its pipe is closed.</summary>
    private sealed class ThrowingWriter : TextWriter
    {
        private int _calls;

        public int Calls => Volatile.Read(ref _calls);

        public override Encoding Encoding => Encoding.UTF8;

        public override void Write(char value) => Fail();

        public override void Write(string? value) => Fail();

        public override void Flush() => Fail();

        private void Fail()
        {
            Interlocked.Increment(ref _calls);
            throw new IOException("Broken pipe");
        }
    }

    /// <summary>
    /// Lines lost because the output threw are counted as dropped (proxy_log_dropped_total), like lines a full queue
    /// refused; they were lost silently, the writer loop swallowing the exception.
    /// </summary>
    [Fact]
    public async Task SetOutput_WriterThrows_LostLinesCountedAsDropped()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml + "\nadmin: { address: \"127.0.0.1:0\" }\n");
        await ProxyServer.FlushLogsAsync();
        var writer = new ThrowingWriter();
        long before = ProxyLog.DroppedLines;
        ProxyLogging.SetOutput(writer);
        try
        {
            for (int i = 0; i < 3; i++)
            {
                ProxyLog.Info("test_line", ("n", i));
            }
            var deadline = DateTime.UtcNow + TestDefaults.Timeout;
            while (ProxyLog.DroppedLines - before < 3)
            {
                Assert.True(DateTime.UtcNow < deadline,
                    $"{ProxyLog.DroppedLines - before} line(s) counted as dropped after {writer.Calls} failed write(s), expected 3");
                await Task.Delay(20);
            }
        }
        finally
        {
            await ProxyServer.FlushLogsAsync();
            ProxyLogging.SetOutput(null);
        }

        using var http = new HttpClient { Timeout = TestDefaults.Timeout };
        var scrape = PrometheusTextParser.Parse(await http.GetStringAsync($"http://127.0.0.1:{proxy.Server.GetEndPoint("admin").Port}/metrics"));
        Assert.True(scrape.Value("proxy_log_dropped_total") >= before + 3, $"proxy_log_dropped_total {scrape.Value("proxy_log_dropped_total")}, before {before}");
    }

    [Fact]
    public async Task MinimumLevel_Warn_DropsInfoLinesAndKeepsWarnings()
    {
        await using var proxy = await TestProxy.StartAsync(Yaml);
        using var client = new HttpClient { Timeout = TestDefaults.Timeout };
        string missing = $"/nowhere/{Guid.NewGuid():N}";
        await using var capture = LogCapture.Start();
        ProxyLogging.MinimumLevel = ProxyLogLevel.Warn;
        try
        {
            Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync($"http://{proxy.Public}{missing}")).StatusCode);
            Assert.Equal(HttpStatusCode.BadGateway, (await client.GetAsync($"http://{proxy.Public}/down/x")).StatusCode);

            // One queue, one writer: the 502's line arriving means the 404's (Info) would have been written before it.
            JsonElement failed = await capture.WaitForEventAsync("local_reply", l => IsReplyTo(l, "/down/x"));
            Assert.Equal("warn", failed.GetProperty("level").GetString());
            Assert.DoesNotContain(capture.Events("local_reply"), l => IsReplyTo(l, missing));
        }
        finally
        {
            ProxyLogging.MinimumLevel = ProxyLogLevel.Info;
        }
    }

    [Fact]
    public void MinimumLevel_UndefinedValue_Throws()
        => Assert.Throws<ArgumentOutOfRangeException>(() => ProxyLogging.MinimumLevel = (ProxyLogLevel)42);
}
