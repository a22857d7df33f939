using System.Diagnostics;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Proxy.Core.Tests.Tls;
using Proxy.FunctionalTests.Grpc;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Model;

namespace Proxy.FunctionalTests;

/// <summary>
/// Active health checks on clusters that speak HTTP/2 to their destinations (<c>protocol: h2c | h2</c>): the probe
/// speaks the cluster's protocol, so an HTTP/2-only upstream (Kestrel with <see cref="HttpProtocols.Http2"/>) passes.
/// </summary>
public sealed class Http2HealthCheckTests : IDisposable
{
    private readonly TestPki _pki = new();
    private readonly X509Certificate2 _ca = TestPki.CreateCa("H2 Health CA");
    private readonly string _caPath;

    public Http2HealthCheckTests() => _caPath = _pki.WriteCa("h2-health-ca", _ca);

    public void Dispose() => _pki.Dispose();

    private static Task<TestProxy> StartProxyAsync(string protocol, string destinations, string extra = "") => ClusterYaml.StartAsync(destinations, protocol, $$"""
        connect_timeout: 2s
        health_check: { path: /healthz, interval: 500ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2 }
        {{extra}}
        """);

    // Two failures to mark a destination down, 500 ms each: with one failure of 200 ms, a probe delayed by a loaded
    // machine (the full suite on two cores) flapped the healthy destination down too, and requests got 503.
    private static ClusterModel Backend(TestProxy proxy) => proxy.Server.Snapshot.Clusters["backend"];

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(clock.Elapsed < TestDefaults.Timeout, "Timed out waiting until " + what);
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task HealthCheck_H2cOnlyUpstream_ProbesInHttp2AndPass()
    {
        await using var upstream = await H2Upstream.StartAsync(HttpProtocols.Http2);
        await using var proxy = await StartProxyAsync("h2c", $"{{ address: \"http://127.0.0.1:{upstream.Port}\" }}");
        var destination = Backend(proxy).Destinations[0];

        // An HTTP/1.1 probe never reaches Kestrel's /healthz on an h2-only endpoint, and one failure would mark it down.
        await WaitUntilAsync(() => upstream.HealthProbes >= 3, "three probes reached the upstream");
        Assert.True(destination.CheckHealthy);
        Assert.Equal(0, destination.Pool!.OpenConnections); // probes never use the request pool
        using var client = Clients.CreateHttpClient();
        using var response = await client.GetAsync(new Uri(proxy.PublicUri, "/healthz"));
        Assert.Equal("HTTP/2", await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task HealthCheck_H2cUpstreamStops_MarkedDownAndTrafficGoesToTheOther()
    {
        var stopping = await H2Upstream.StartAsync(HttpProtocols.Http2);
        await using var steady = await H2Upstream.StartAsync(HttpProtocols.Http2);
        await using var proxy = await StartProxyAsync("h2c",
            $"{{ address: \"http://127.0.0.1:{stopping.Port}\" }}, {{ address: \"http://127.0.0.1:{steady.Port}\" }}");
        var destinations = Backend(proxy).Destinations;
        // Waited for, not asserted after the first probe: in a cold process the first probe (the HTTP/2 client's and
        // Kestrel's first request, compiled on the spot) can outlast its timeout.
        await WaitUntilAsync(() => stopping.HealthProbes >= 1 && steady.HealthProbes >= 1
            && destinations[0].CheckHealthy && destinations[1].CheckHealthy, "both were probed and passed");

        await stopping.DisposeAsync();

        await WaitUntilAsync(() => !destinations[0].CheckHealthy && destinations[1].CheckHealthy,
            "the stopped destination is marked down, the other up");
        using var client = Clients.CreateHttpClient();
        for (int i = 0; i < 4; i++)
        {
            using var response = await client.GetAsync(new Uri(proxy.PublicUri, "/info"));
            Assert.Equal(System.Net.HttpStatusCode.OK, response.StatusCode);
        }
    }

    [Fact]
    public async Task HealthCheck_H2OverTls_ProbesWithAlpnH2AndPass()
    {
        var certificate = TestPki.Issue(_ca, "localhost", ["localhost", "127.0.0.1"]);
        await using var upstream = await H2Upstream.StartAsync(HttpProtocols.Http2, certificate);
        await using var proxy = await StartProxyAsync("h2", $"{{ address: \"https://127.0.0.1:{upstream.Port}\" }}",
            $"tls: {{ ca: \"{_caPath}\" }}");
        var destination = Backend(proxy).Destinations[0];

        await WaitUntilAsync(() => upstream.HealthProbes >= 3, "three probes reached the upstream");

        Assert.True(destination.CheckHealthy);
    }

    [Fact]
    public async Task Probe_H2cUpstreamAnswers404_Fails()
    {
        await using var upstream = await H2Upstream.StartAsync(HttpProtocols.Http2);
        await using var proxy = await StartProxyAsync("h2c", $"{{ address: \"http://127.0.0.1:{upstream.Port}\" }}");
        var destination = Backend(proxy).Destinations[0];

        // Same pass/fail rules as HTTP/1.1 probes: only 2xx passes by default. A path Kestrel does not map answers 404.
        var (passed, reason) = await Proxy.Upstream.ActiveHealthChecker.ProbeAsync(destination, Backend(proxy),
            new HealthCheckModel { Path = "/no-such-route", Timeout = TimeSpan.FromSeconds(2) }, CancellationToken.None);

        Assert.False(passed);
        Assert.Equal("status_404", reason);
    }
}
