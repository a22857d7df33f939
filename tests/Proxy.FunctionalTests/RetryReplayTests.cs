using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.Benchmarks.EndToEnd;
using Proxy.Forwarding;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Model;

namespace Proxy.FunctionalTests;

/// <summary>
/// Retries of requests with a body: the body is kept (up to retry.max_replay_body_bytes) while it streams to the first
/// try and sent again, byte for byte and in the same framing, to the next. In the memory-sensitive collection because
/// the tests assert that every kept block is given back (<see cref="RequestReplayBuffer.BlocksHeld"/> is process-wide).
/// </summary>
[Collection(MemorySensitiveCollection.Name)]
public sealed class RetryReplayTests
{
    private static string Yaml(string destinations, string retry) => ClusterYaml.Render(destinations, cluster: $"""
        load_balancing: round_robin
        connect_timeout: 1s
        retry: {retry}
        """);

    private static string Quote(params string[] addresses) => string.Join(", ", addresses.Select(a => $"\"{a}\""));

    private static ClusterModel Backend(TestProxy proxy) => proxy.Server.Snapshot.Clusters["backend"];

    // The body helpers below are shared with RequestBodyPhaseTests (buffered bodies use the same replay buffer).

    /// <summary>Binary content with every byte value, so a lost, added or re-encoded byte shows.</summary>
    internal static byte[] Body(int length)
    {
        var bytes = new byte[length];
        for (int i = 0; i < length; i++)
        {
            bytes[i] = (byte)(i * 7 + i / 256);
        }
        return bytes;
    }

    internal static byte[] Request(string head, byte[] body) => [.. Encoding.ASCII.GetBytes(head), .. body];

    internal static byte[] Chunked(byte[] body, int chunk)
    {
        var wire = new List<byte>();
        for (int at = 0; at < body.Length; at += chunk)
        {
            int n = Math.Min(chunk, body.Length - at);
            wire.AddRange(Encoding.ASCII.GetBytes($"{n:x}\r\n"));
            wire.AddRange(body.AsSpan(at, n).ToArray());
            wire.AddRange("\r\n"u8.ToArray());
        }
        return [.. wire];
    }

    internal static async Task WaitForBlocksReturnedAsync()
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (RequestReplayBuffer.BlocksHeld != 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10);
        }
        Assert.Equal(0, RequestReplayBuffer.BlocksHeld);
    }

    [Fact]
    public async Task Retry_PostContentLengthNonIdempotent_503ThenOtherDestinationGetsIdenticalBody()
    {
        await using var failing = FaultyUpstream.Start("failing");
        failing.Status = 503;
        await using var good = FaultyUpstream.Start("good");
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote(failing.Address, good.Address),
            "{ attempts: 1, on: [503], non_idempotent: true, backoff: { base: 1ms, max: 1ms }, budget_percent: 100 }"));
        byte[] body = Body(40_000);

        // Round robin: of two requests, one first try lands on the failing destination and is replayed on the other.
        for (int i = 0; i < 2; i++)
        {
            await using var client = await proxy.ConnectAsync();
            await client.SendAsync(Request($"POST /orders HTTP/1.1\r\nHost: example.test\r\nContent-Length: {body.Length}\r\n\r\n", body));
            var response = await client.ReadResponseAsync("POST");
            Assert.Equal(200, response.Status);
            Assert.Equal("good", response.Header("x-upstream"));
        }

        // The round robin may land both first tries on the failing one (a retry's pick advances it too).
        Assert.Equal(2, good.TrafficCount);
        Assert.InRange(failing.TrafficCount, 1, 2);
        Assert.All(good.Recording.Requests.Concat(failing.Recording.Requests), r =>
        {
            Assert.Equal(body, r.Body);
            Assert.Equal(body.Length.ToString(), r.Header("content-length"));
        });
        Assert.Equal(failing.TrafficCount, Backend(proxy).RetryBudget!.Retried);
        await WaitForBlocksReturnedAsync();
    }

    [Fact]
    public async Task Retry_PostChunkedWithTrailers_ReplayedChunkedWithSameContentAndTrailers()
    {
        await using var failing = FaultyUpstream.Start("failing");
        failing.Status = 503;
        await using var good = FaultyUpstream.Start("good");
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote(failing.Address, good.Address),
            "{ attempts: 1, on: [503], non_idempotent: true, backoff: { base: 1ms, max: 1ms }, budget_percent: 100 }"));
        byte[] body = Body(20_000);
        byte[] wire = [.. Chunked(body, 3000), .. "0\r\nx-checksum: abc123\r\n\r\n"u8.ToArray()];

        for (int i = 0; i < 2; i++)
        {
            await using var client = await proxy.ConnectAsync();
            await client.SendAsync(Request("POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n", wire));
            var response = await client.ReadResponseAsync("POST");
            Assert.Equal(200, response.Status);
        }

        // The round robin may land both first tries on the failing one (a retry's pick advances it too).
        Assert.Equal(2, good.TrafficCount);
        Assert.InRange(failing.TrafficCount, 1, 2);
        Assert.All(good.Recording.Requests.Concat(failing.Recording.Requests), r =>
        {
            Assert.True(r.Chunked);
            Assert.Equal(body, r.Body);
            Assert.Contains(r.Trailers, t => t.Key.Equals("x-checksum", StringComparison.OrdinalIgnoreCase) && t.Value == "abc123");
        });
        await WaitForBlocksReturnedAsync();
    }

    [Fact]
    public async Task Retry_GrpcCallTrailersOnlyUnavailable_ReplayedOnOtherDestination()
    {
        var unavailable = RecordingUpstream.Start(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ngrpc-message: down\r\ncontent-length: 0\r\n\r\n"));
        await using var _ = unavailable;
        var healthy = RecordingUpstream.Start(UpstreamBehaviors.Fixed(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 0\r\ncontent-length: 0\r\n\r\n"));
        await using var __ = healthy;
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote(unavailable.Address, healthy.Address),
            "{ attempts: 1, on: [unavailable], non_idempotent: true, backoff: { base: 1ms, max: 1ms }, budget_percent: 100 }"));
        // A length-prefixed message (gRPC over HTTP/2 spec, "Length-Prefixed-Message"): flag 0, big-endian length, bytes.
        byte[] message = Encoding.UTF8.GetBytes("\n\u0005hello\u0010\u002a");
        byte[] body = [0, 0, 0, 0, (byte)message.Length, .. message];

        await using var client = await proxy.ConnectAsync();
        for (int i = 0; i < 4; i++)
        {
            await client.SendAsync(Request("POST /pkg.Svc/Call HTTP/1.1\r\nHost: example.test\r\nContent-Type: application/grpc\r\n"
                + $"TE: trailers\r\nContent-Length: {body.Length}\r\n\r\n", body));
            var response = await client.ReadResponseAsync("POST");
            Assert.Equal(200, response.Status);
            Assert.Equal("0", response.Header("grpc-status"));
        }

        Assert.NotEmpty(unavailable.Requests);
        Assert.Equal(4, healthy.Requests.Length);
        Assert.All(healthy.Requests.Concat(unavailable.Requests), r => Assert.Equal(body, r.Body));
        await WaitForBlocksReturnedAsync();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Retry_BodyOverReplayLimit_NotRetriedAndCounted(bool chunked)
    {
        await using var failing = FaultyUpstream.Start("failing");
        failing.Status = 503;
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote(failing.Address),
            "{ attempts: 2, on: [503], non_idempotent: true, max_replay_body_bytes: 1KiB, backoff: { base: 1ms, max: 1ms } }"));
        byte[] body = Body(4096);
        // Chunked: the limit is found mid-stream (the copy is dropped); content-length: known from the head.
        byte[] request = chunked
            ? Request("POST /big HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n", [.. Chunked(body, 512), .. "0\r\n\r\n"u8.ToArray()])
            : Request($"POST /big HTTP/1.1\r\nHost: example.test\r\nContent-Length: {body.Length}\r\n\r\n", body);

        await using var client = await proxy.ConnectAsync();
        await client.SendAsync(request);
        var response = await client.ReadResponseAsync("POST");

        Assert.Equal(503, response.Status);
        Assert.Equal("failing", response.BodyText);
        Assert.Equal(1, failing.TrafficCount);
        Assert.Equal(body, failing.Recording.Requests[0].Body);
        ClusterModel backend = Backend(proxy);
        Assert.Equal(0, backend.RetryBudget!.Retried);
        Assert.Equal(1, backend.RetryBudget.SkippedBodyTooLarge);
        Assert.Equal(1, backend.Metrics!.RetriesSkippedBodyTooLarge);
        await WaitForBlocksReturnedAsync();
    }

    [Fact]
    public async Task Retry_PutWithBodyWithoutOptIn_RetriedAsIdempotent()
    {
        await using var failing = FaultyUpstream.Start("failing");
        failing.Status = 503;
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote(failing.Address),
            "{ attempts: 2, on: [503], backoff: { base: 1ms, max: 1ms } }"));
        byte[] body = Body(5000);

        await using var client = await proxy.ConnectAsync();
        await client.SendAsync(Request($"PUT /items/1 HTTP/1.1\r\nHost: example.test\r\nContent-Length: {body.Length}\r\n\r\n", body));
        var response = await client.ReadResponseAsync("PUT");

        // Three tries, each with the whole body; the last answer is relayed.
        Assert.Equal(503, response.Status);
        Assert.Equal(3, failing.TrafficCount);
        Assert.All(failing.Recording.Requests, r => Assert.Equal(body, r.Body));
        await WaitForBlocksReturnedAsync();
    }

    [Fact]
    public async Task Retry_PostOnRouteWithRetryNonIdempotent_RetriedWhileOtherRoutesAreNot()
    {
        await using var failing = FaultyUpstream.Start("failing");
        failing.Status = 503;
        await using var good = FaultyUpstream.Start("good");
        // The cluster allows retries of idempotent requests only; one route opts its POSTs in (the issue's "unless the
        // route says otherwise"), the other does not.
        await using var proxy = await TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: orders, match: { path: "/orders" }, cluster: backend, retry_non_idempotent: true }
              - { id: other, match: { path: "/{**rest}" }, cluster: backend }
            clusters:
              backend:
                destinations: [{{Quote(failing.Address, good.Address)}}]
                load_balancing: round_robin
                retry: { attempts: 1, on: [503], backoff: { base: 1ms, max: 1ms }, budget_percent: 100 }
            """);

        for (int i = 0; i < 2; i++)
        {
            await using var client = await proxy.ConnectAsync();
            await client.SendAsync("POST /orders HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello");
            var response = await client.ReadResponseAsync("POST");
            Assert.Equal(200, response.Status);
            Assert.Equal("good", response.Header("x-upstream"));
        }
        Assert.True(Backend(proxy).RetryBudget!.Retried >= 1);

        long retried = Backend(proxy).RetryBudget!.Retried;
        var statuses = new List<int>();
        for (int i = 0; i < 2; i++)
        {
            await using var client = await proxy.ConnectAsync();
            await client.SendAsync("POST /payments HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello");
            statuses.Add((await client.ReadResponseAsync("POST")).Status);
        }
        Assert.Contains(503, statuses); // round robin: one of the two lands on the failing destination, never retried
        Assert.Equal(retried, Backend(proxy).RetryBudget!.Retried);
        await WaitForBlocksReturnedAsync();
    }

    [Fact]
    public async Task Retry_PostWithBodyWithoutOptIn_NeverRetried()
    {
        await using var failing = FaultyUpstream.Start("failing");
        failing.Status = 503;
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote(failing.Address),
            "{ attempts: 2, on: [503, reset], max_replay_body_bytes: 1MiB, backoff: { base: 1ms, max: 1ms } }"));

        await using var client = await proxy.ConnectAsync();
        await client.SendAsync("POST /orders HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello");
        var response = await client.ReadResponseAsync("POST");

        Assert.Equal(503, response.Status);
        Assert.Equal(1, failing.TrafficCount);
        Assert.Equal(0, Backend(proxy).RetryBudget!.Retried);
        Assert.Equal(0, RequestReplayBuffer.BlocksHeld);
    }

    [Fact]
    public async Task Retry_ClientAbortsMidBody_NotRetriedAndBlocksReturned()
    {
        await using var failing = FaultyUpstream.Start("failing");
        failing.Status = 503;
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote(failing.Address),
            "{ attempts: 2, on: [503, reset], non_idempotent: true, backoff: { base: 1ms, max: 1ms } }"));
        byte[] body = Body(30_000);

        await using (var client = await proxy.ConnectAsync())
        {
            await client.SendAsync(Request($"POST /orders HTTP/1.1\r\nHost: example.test\r\nContent-Length: {body.Length}\r\n\r\n", body[..20_000]));
            // The proxy holds part of the copy now; then the client goes away mid-body.
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
            while (RequestReplayBuffer.BlocksHeld == 0 && DateTime.UtcNow < deadline)
            {
                await Task.Delay(5);
            }
            Assert.NotEqual(0, RequestReplayBuffer.BlocksHeld);
        }

        await WaitForBlocksReturnedAsync();
        Assert.Equal(0, Backend(proxy).RetryBudget!.Retried);
        Assert.True(failing.TrafficCount <= 1);
    }

    /// <summary>
    /// The copy costs nothing once warm: POSTs with a 1 KiB body to a cluster that may replay them keep a copy every
    /// time (and give it back), through blocking sockets that allocate nothing themselves (see SteadyStateAllocationTests).
    /// </summary>
    [Fact]
    public async Task ReplayablePosts_WarmKeepAliveConnection_AllocateUnder100BytesEach()
    {
        using var upstream = new FixedResponseUpstream(SteadyStateAllocationTests.FixedResponse);
        await using var proxy = await TestProxy.StartAsync(Yaml(Quote($"http://127.0.0.1:{upstream.Port}"),
            "{ attempts: 1, on: [503, reset], non_idempotent: true }"));

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.ReceiveTimeout = 5000;
        client.Connect(proxy.Public);
        // No CRLFCRLF in the body: the fixed upstream answers once per head.
        byte[] request = Request("POST /api/items HTTP/1.1\r\nHost: example.test\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n",
            Encoding.ASCII.GetBytes(new string('j', 1024)));
        byte[] receive = new byte[16 * 1024];
        int responseLength = SteadyStateAllocationTests.RoundTrip(client, request, receive, expected: 0);
        for (int i = 0; i < 2000; i++)
        {
            SteadyStateAllocationTests.RoundTrip(client, request, receive, responseLength);
        }

        long perRequest = SteadyStateAllocationTests.LowestPerRequest(
            () => SteadyStateAllocationTests.RoundTrip(client, request, receive, responseLength), windows: 4, requestsPerWindow: 1000);

        Assert.True(perRequest < 100, $"{perRequest} bytes allocated per replayable POST in steady state (lowest of four windows)");
        await WaitForBlocksReturnedAsync();
    }
}
