using System.Diagnostics;
using System.Globalization;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Trailers;

/// <summary>gRPC semantics of the forwarder over HTTP/1.1: trailers-only local replies, grpc-timeout, retry on UNAVAILABLE.</summary>
public sealed class GrpcForwardingTests
{
    private static string GrpcPost(string path, params string[] headers) =>
        $"POST {path} HTTP/1.1\r\nHost: example.test\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 0\r\n"
        + string.Concat(headers.Select(h => h + "\r\n")) + "\r\n";

    private static void AssertTrailersOnly(HttpMessage response, string grpcStatus)
    {
        Assert.Equal(200, response.Status);
        Assert.Equal("application/grpc", response.Header("content-type"));
        Assert.Equal(grpcStatus, response.Header("grpc-status"));
        Assert.NotNull(response.Header("grpc-message"));
        Assert.Equal("0", response.Header("content-length"));
        Assert.Empty(response.Body);
    }

    [Fact]
    public async Task Grpc_ClosedPort_Answers200WithGrpcStatusUnavailable()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig { BackendPort = Ports.ClosedPort() });
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(GrpcPost("/pkg.Svc/Call"));
        var response = await client.ReadResponseAsync("POST");

        AssertTrailersOnly(response, "14");
        Assert.Equal("upstream_connect_failed", response.Header("grpc-message"));

        // Non-gRPC requests keep the HTTP answer.
        await client.SendAsync(Wire.Get("/plain"));
        Assert.Equal(502, (await client.ReadResponseAsync()).Status);
    }

    [Fact]
    public async Task Grpc_NoRoute_AnswersUnimplemented()
    {
        await using var proxy = await TestProxy.StartAsync(new ProxyConfig
        {
            BackendPort = Ports.ClosedPort(),
            Routes = "  - { id: only, match: { path: /only }, cluster: backend }\n",
        });
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(GrpcPost("/pkg.Svc/Missing"));

        AssertTrailersOnly(await client.ReadResponseAsync("POST"), "12");
    }

    [Fact]
    public async Task Grpc_StallingUpstreamWithGrpcTimeout_AnswersDeadlineExceededInTime()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Hang());
        await using var client = await scenario.ConnectAsync();
        var clock = Stopwatch.StartNew();

        await client.SendAsync(GrpcPost("/pkg.Svc/Slow", "grpc-timeout: 200m"));
        var response = await client.ReadResponseAsync("POST");

        AssertTrailersOnly(response, "4");
        Assert.InRange(clock.ElapsedMilliseconds, 150, 5000); // request_timeout is 30s: only grpc-timeout can end it this soon
        var forwarded = await scenario.Upstream.WaitForRequestAsync();
        Assert.Equal("200m", forwarded.Header("grpc-timeout"));
    }

    [Fact]
    public async Task Grpc_ApiKeyPolicyRejects_AnswersUnauthenticated()
    {
        var upstream = RecordingUpstream.Start(UpstreamBehaviors.Ok());
        await using var _ = upstream;
        string port = upstream.Port.ToString(CultureInfo.InvariantCulture);
        await using var proxy = await TestProxy.StartAsync($$"""
            policies:
              keys:
                api_key:
                  header: x-api-key
                  keys:
                    - { sha256: 2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90, consumer: alice }
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: svc, match: { path: "/{**rest}" }, cluster: svc, policies: [keys] }
            clusters:
              svc: { destinations: ["http://127.0.0.1:{{port}}"] }

            """);
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync(GrpcPost("/pkg.Svc/Call", "x-api-key: eve"));
        var rejected = await client.ReadResponseAsync("POST");
        await client.SendAsync(Wire.Get("/plain", "example.test", "x-api-key: eve"));
        var plain = await client.ReadResponseAsync();

        AssertTrailersOnly(rejected, "16");
        Assert.Equal(401, plain.Status);
        ProxyAssert.UpstreamSawNothing(upstream);
    }

    [Fact]
    public async Task Grpc_RetryOnUnavailable_SecondDestinationAnswers()
    {
        var unavailable = RecordingUpstream.Start(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ngrpc-message: down\r\ncontent-length: 0\r\n\r\n"));
        await using var _ = unavailable;
        var healthy = RecordingUpstream.Start(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 0\r\ncontent-length: 0\r\n\r\n"));
        await using var __ = healthy;
        await using var proxy = await TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: svc, match: { path: "/{**rest}" }, cluster: svc }
            clusters:
              svc:
                destinations: ["http://127.0.0.1:{{unavailable.Port}}", "http://127.0.0.1:{{healthy.Port}}"]
                load_balancing: round_robin
                retry: { attempts: 1, on: [unavailable], non_idempotent: true, backoff: { base: 1ms, max: 1ms } }

            """);
        await using var client = await proxy.ConnectAsync();

        for (int i = 0; i < 4; i++)
        {
            await client.SendAsync(GrpcPost("/pkg.Svc/Call"));
            var response = await client.ReadResponseAsync("POST");
            Assert.Equal("0", response.Header("grpc-status"));
        }

        // Round robin sent some first tries to the unavailable one: each was replayed on the other.
        Assert.NotEmpty(unavailable.Requests);
        Assert.Equal(4, healthy.Requests.Length);
    }

    [Fact]
    public async Task Grpc_UnavailableWithoutRetryCondition_RelayedAsIs()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ncontent-length: 0\r\n\r\n"));
        await using var client = await scenario.ConnectAsync();

        await client.SendAsync(GrpcPost("/pkg.Svc/Call"));
        var response = await client.ReadResponseAsync("POST");

        Assert.Equal("14", response.Header("grpc-status"));
        Assert.Single(scenario.Upstream.Requests);
    }
}
