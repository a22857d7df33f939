using System.Diagnostics;
using Proxy.FunctionalTests.Http2;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Model;

namespace Proxy.FunctionalTests.Grpc;

/// <summary>
/// The upstream timeouts (docs/resilience.md, "Timeouts") on an HTTP/2 upstream (h2c, Kestrel) while an HTTP/1.1
/// client uploads its body slowly. As on the HTTP/1.1 path, <c>response_timeout</c> (and <c>per_try_timeout</c>) start
/// once the whole request is sent; until then the waits are the client's (each gap within <c>body_timeout</c>, all within
/// <c>request_timeout</c>) and are never held against the upstream. Deadlines are enforced by a once-a-second
/// heartbeat: a timeout T fires between T and about T + 1 s, so the uploads below outlast the timeouts by seconds.
/// </summary>
public sealed class Http2UpstreamTimeoutTests
{
    private const int BodyLength = 1000;

    /// <summary>A one-failure outlier rule: any failure reported against the destination ejects it.</summary>
    private static Task<TestProxy> StartProxyAsync(H2Upstream upstream, string cluster, string top = "")
        => ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c",
            "connect_timeout: 5s\noutlier_detection: { consecutive_failures: 1, base_ejection: 30s, max_ejection_percent: 100 }\n" + cluster, top);

    private static ClusterModel Backend(TestProxy proxy) => proxy.Server.Snapshot.Clusters["backend"];

    private static void AssertNoFailureCounted(TestProxy proxy)
    {
        var destination = Backend(proxy).Destinations[0];
        Assert.Equal(0, destination.ConsecutiveFailures);
        Assert.Equal(0, destination.EjectedUntil);
    }

    /// <summary>
    /// Sends a POST head with a <see cref="BodyLength"/>-byte body, then the body in <paramref name="chunks"/> pieces
    /// <paramref name="gap"/> apart (the whole of it, or as much as the proxy takes before it closes); the task ends with
    /// the bytes sent.
    /// </summary>
    private static async Task<Task<int>> StartUploadAsync(RawClient client, string path, int chunks, TimeSpan gap, CancellationToken stop)
    {
        await client.SendAsync($"POST {path} HTTP/1.1\r\nHost: example.test\r\nContent-Length: {BodyLength}\r\n\r\n");
        return Task.Run(async () =>
        {
            int sent = 0;
            try
            {
                for (int i = 0; i < chunks; i++)
                {
                    int size = i == chunks - 1 ? BodyLength - sent : BodyLength / chunks;
                    await Task.Delay(gap, stop);
                    await client.SendAsync(new string('u', size));
                    sent += size;
                }
            }
            catch (Exception)
            {
                // Stopped by the test, or the proxy closed the connection.
            }
            return sent;
        });
    }

    /// <summary>
    /// The client uploads for about 3.5 s (ten pieces 350 ms apart: each gap far inside body_timeout) to an upstream that
    /// reads the whole body and then answers at once. The 1 s response_timeout starts only when the body is all sent,
    /// so the client gets the upstream's 200, and nothing is counted against the destination. It used to run from the
    /// request's HEADERS, alongside the upload: 504 upstream_response_timeout after about 1 to 2 s, and an ejection.
    /// </summary>
    [Fact]
    public async Task ResponseTimeout_ClientUploadsSlowerThanIt_Returns200AndNoHealthFailure()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync(upstream, "response_timeout: 1s");
        await using var client = await proxy.ConnectAsync();
        using var stop = new CancellationTokenSource();

        var upload = await StartUploadAsync(client, "/upload", chunks: 10, TimeSpan.FromMilliseconds(350), stop.Token);
        var response = await client.ReadResponseAsync("POST", timeout: TimeSpan.FromSeconds(20));
        stop.Cancel();
        int sent = await upload;

        Assert.True(response.Status == 200, $"{response}\n{response.BodyText}");
        Assert.Equal(BodyLength.ToString(System.Globalization.CultureInfo.InvariantCulture), response.BodyText);
        Assert.Equal(BodyLength, sent);
        AssertNoFailureCounted(proxy);
        // The connection stays usable.
        await client.SendAsync(Wire.Get("/info"));
        Assert.Equal(200, (await client.ReadResponseAsync(timeout: TimeSpan.FromSeconds(15))).Status);
    }

    /// <summary>
    /// The same slow upload from an HTTP/2 client (its stream's bridge holds the deadline, checked by its connection's
    /// heartbeat): the upstream's 200, nothing counted against it.
    /// </summary>
    [Fact]
    public async Task ResponseTimeout_Http2ClientUploadsSlowerThanIt_Returns200AndNoHealthFailure()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync(upstream, "response_timeout: 1s");
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);

        await client.SendHeadersAsync(1, endStream: false,
            [.. Http2TestClient.Get("/upload", method: "POST"), ("content-length", BodyLength.ToString(System.Globalization.CultureInfo.InvariantCulture))]);
        var piece = new byte[BodyLength / 10];
        for (int i = 0; i < 10; i++)
        {
            await Task.Delay(350);
            await client.SendDataAsync(1, piece, endStream: i == 9);
        }
        var response = await client.ReadResponseAsync(1);

        Assert.True(response.Status == 200, $"{response.Status}: {response.BodyText}");
        Assert.Equal(BodyLength.ToString(System.Globalization.CultureInfo.InvariantCulture), response.BodyText);
        AssertNoFailureCounted(proxy);
    }

    /// <summary>
    /// The control: the same slow upload to an upstream that reads it all and then holds its answer. The response
    /// timeout, started at the end of the body, still runs out: 504 upstream_response_timeout, after the whole body went
    /// up, counted against the destination (here its ejection).
    /// </summary>
    [Fact]
    public async Task ResponseTimeout_UpstreamSilentAfterSlowUpload_Returns504AfterTheBodyAndCountsFailure()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync(upstream, "response_timeout: 1s");
        await using var client = await proxy.ConnectAsync();
        using var stop = new CancellationTokenSource();

        var upload = await StartUploadAsync(client, "/upload/hold", chunks: 10, TimeSpan.FromMilliseconds(350), stop.Token);
        var response = await client.ReadResponseAsync("POST", timeout: TimeSpan.FromSeconds(20));
        var answered = Stopwatch.StartNew();
        stop.Cancel();
        int sent = await upload;

        ProxyAssert.ErrorAnswer(response, 504);
        Assert.Contains("upstream_response_timeout", response.BodyText, StringComparison.Ordinal);
        Assert.Equal(BodyLength, sent); // the timeout waited for the whole body
        Assert.Equal(1, Interlocked.Read(ref upstream.Counters.HoldStarted)); // and the upstream had it all
        Assert.True(Backend(proxy).Destinations[0].EjectedUntil > 0, "the upstream's silence is its failure");
        Assert.True(answered.Elapsed < TimeSpan.FromSeconds(10));
        await WaitUntilAsync(() => Interlocked.Read(ref upstream.Counters.HoldCancelled) == 1, "the held request is reset upstream");
    }

    /// <summary>
    /// A client that stops mid-body: 408 body_timeout after <c>limits.body_timeout</c> (1 s), as on the HTTP/1.1 path,
    /// not the upstream's 504 after response_timeout, and not counted against the upstream.
    /// </summary>
    [Fact]
    public async Task BodyTimeout_ClientStallsMidBody_Returns408NotCountedAgainstUpstream()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync(upstream, "response_timeout: 10s", top: "limits: { body_timeout: 1s }");
        await using var client = await proxy.ConnectAsync();

        await client.SendAsync($"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: {BodyLength}\r\n\r\n" + new string('u', BodyLength / 2));
        var response = await client.ReadResponseAsync("POST", timeout: TimeSpan.FromSeconds(20));

        ProxyAssert.ErrorAnswer(response, 408);
        Assert.Contains("body_timeout", response.BodyText, StringComparison.Ordinal);
        Assert.True(response.ConnectionHas("close"), response.ToString());
        AssertNoFailureCounted(proxy);
    }

    /// <summary>
    /// request_timeout (1.5 s) runs out while the client still trickles its body (each gap inside body_timeout): 504
    /// upstream_request_timeout at once, as on the HTTP/1.1 path; the client's slowness, not held against the upstream.
    /// </summary>
    [Fact]
    public async Task RequestTimeout_ClientTricklesPastIt_Returns504NotCountedAgainstUpstream()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync(upstream, "response_timeout: 10s\nrequest_timeout: 1500ms");
        await using var client = await proxy.ConnectAsync();
        using var stop = new CancellationTokenSource();

        var upload = await StartUploadAsync(client, "/upload", chunks: 50, TimeSpan.FromMilliseconds(300), stop.Token);
        var response = await client.ReadResponseAsync("POST", timeout: TimeSpan.FromSeconds(20));
        stop.Cancel();
        int sent = await upload;

        ProxyAssert.ErrorAnswer(response, 504);
        Assert.Contains("upstream_request_timeout", response.BodyText, StringComparison.Ordinal);
        Assert.True(response.ConnectionHas("close"), response.ToString());
        Assert.True(sent < BodyLength, "the 504 came while the body was still coming");
        AssertNoFailureCounted(proxy);
    }

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(clock.Elapsed < TestDefaults.Timeout, $"Timed out waiting until {what}.");
            await Task.Delay(20);
        }
    }
}
