using System.Globalization;
using System.Net;
using Proxy.Hosting;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// The config the functional tests run with, rendered to YAML (the format of the config contract). Listeners bind
/// 127.0.0.1:0; the <c>backend</c> cluster points at <see cref="BackendPort"/>.
/// </summary>
internal sealed record ProxyConfig
{
    public int BackendPort { get; init; }
    public string MaxRequestLine { get; init; } = "8KiB";
    public string MaxHeaderBytes { get; init; } = "32KiB";
    public int MaxHeaders { get; init; } = 100;
    public string MaxBodyBytes { get; init; } = "10MiB";
    public string HeaderTimeout { get; init; } = "10s";
    public string KeepAliveTimeout { get; init; } = "75s";
    public string BodyTimeout { get; init; } = "30s";
    public string ConnectTimeout { get; init; } = "2s";
    public string RequestTimeout { get; init; } = "30s";
    /// <summary>Further keys of the backend cluster, one per line, indented as they are (<c>tunnel_idle_timeout: 1s</c>).</summary>
    public string ClusterExtra { get; init; } = "";
    /// <summary>Further keys of the public listener, each after a comma (<c>, quick_ack: true</c>).</summary>
    public string PublicListenerExtra { get; init; } = "";

    /// <summary>The routes section's items; by default /hello answers directly and everything else goes to backend.</summary>
    public string Routes { get; init; } = """
          - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello\n", headers: { content-type: text/plain } } }
          - { id: all, match: { path: "/{**rest}" }, cluster: backend }
        """;

    public string Render() => $$"""
        limits: { max_request_line: {{MaxRequestLine}}, max_header_bytes: {{MaxHeaderBytes}}, max_headers: {{MaxHeaders.ToString(CultureInfo.InvariantCulture)}}, max_body_bytes: {{MaxBodyBytes}}, header_timeout: {{HeaderTimeout}}, keepalive_timeout: {{KeepAliveTimeout}}, body_timeout: {{BodyTimeout}} }
        listeners:
          - { name: public, address: 127.0.0.1:0{{PublicListenerExtra}} }
          - { name: echo, address: 127.0.0.1:0, handler: echo }
        routes:
        {{Routes.TrimEnd()}}
        clusters:
          backend:
            destinations: [{ address: "http://127.0.0.1:{{BackendPort.ToString(CultureInfo.InvariantCulture)}}" }]
            connect_timeout: {{ConnectTimeout}}
            request_timeout: {{RequestTimeout}}
        {{string.Concat(ClusterExtra.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(line => "    " + line + "\n"))}}
        """;
}

/// <summary>A started <see cref="ProxyServer"/> in this process, stopped and disposed at the end of the test.</summary>
internal sealed class TestProxy : IAsyncDisposable
{
    private bool _stopped;

    private TestProxy(ProxyServer server) => Server = server;

    public ProxyServer Server { get; }
    public IPEndPoint Public => Server.GetEndPoint("public");
    public IPEndPoint Echo => Server.GetEndPoint("echo");
    public Uri PublicUri => new($"http://127.0.0.1:{Public.Port}");
    public Uri EchoUri => new($"http://127.0.0.1:{Echo.Port}");

    public static async Task<TestProxy> StartAsync(ProxyConfig config) => await StartAsync(config.Render());

    public static async Task<TestProxy> StartAsync(string yaml)
    {
        var server = ProxyServer.FromYaml(yaml, "functional-test.yaml");
        try
        {
            using var cts = new CancellationTokenSource(TestDefaults.Timeout);
            await server.StartAsync(cts.Token);
            return new TestProxy(server);
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    public Task<RawClient> ConnectAsync() => RawClient.ConnectAsync(Public);

    public async Task StopAsync(TimeSpan timeout)
    {
        _stopped = true;
        await Server.StopAsync(timeout).WaitAsync(timeout + TestDefaults.Timeout);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_stopped)
            {
                _stopped = true;
                await Server.StopAsync(TimeSpan.FromSeconds(2)).WaitAsync(TestDefaults.Timeout);
            }
        }
        finally
        {
            await Server.DisposeAsync().AsTask().WaitAsync(TestDefaults.Timeout);
        }
    }
}

/// <summary>A recording upstream and a proxy whose <c>backend</c> cluster points at it.</summary>
internal sealed class ProxyScenario : IAsyncDisposable
{
    private ProxyScenario(RecordingUpstream upstream, TestProxy proxy)
    {
        Upstream = upstream;
        Proxy = proxy;
    }

    public RecordingUpstream Upstream { get; }
    public TestProxy Proxy { get; }

    public static async Task<ProxyScenario> StartAsync(UpstreamHandler handler, Func<ProxyConfig, ProxyConfig>? configure = null, int recordLimit = 1024 * 1024)
    {
        var upstream = RecordingUpstream.Start(handler, recordLimit);
        try
        {
            var config = new ProxyConfig { BackendPort = upstream.Port };
            var proxy = await TestProxy.StartAsync(configure is null ? config : configure(config));
            return new ProxyScenario(upstream, proxy);
        }
        catch
        {
            await upstream.DisposeAsync();
            throw;
        }
    }

    public Task<RawClient> ConnectAsync() => Proxy.ConnectAsync();

    /// <summary>Sends raw bytes on a new connection and reads one response; the client stays open for more.</summary>
    public async Task<(HttpMessage Response, RawClient Client)> SendAsync(string raw, string method = "GET")
    {
        var client = await ConnectAsync();
        try
        {
            await client.SendAsync(raw);
            return (await client.ReadResponseAsync(method), client);
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await Proxy.DisposeAsync();
        }
        finally
        {
            await Upstream.DisposeAsync();
        }
    }
}
