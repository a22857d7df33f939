using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Grpc;

/// <summary>
/// gRPC through the proxy end to end: a real gRPC client (Grpc.Net.Client, HTTP/2 prior knowledge on the proxy's
/// cleartext listener) to a real gRPC server (Kestrel + Grpc.AspNetCore over h2c). Every call shape, status and
/// trailing metadata intact, deadlines, and the proxy's own gRPC errors.
/// </summary>
public sealed class GrpcEndToEndTests
{
    private static Task<TestProxy> StartProxyAsync(string destinations, string extra = "") => TestProxy.StartAsync($$"""
        listeners:
          - { name: public, address: 127.0.0.1:0 }
        routes:
          - { id: grpc, match: { path: "/greet.Greeter/{**method}" }, cluster: greeter }
        clusters:
          greeter:
            protocol: h2c
            destinations: [{{destinations}}]
            connect_timeout: 2s
            {{extra}}
        """);

    private static GrpcChannel Channel(TestProxy proxy) => GrpcChannel.ForAddress(proxy.PublicUri,
        new GrpcChannelOptions { HttpHandler = new SocketsHttpHandler { EnableMultipleHttp2Connections = false } });

    /// <summary>
    /// A service renamed at the edge: clients call <c>/legacy.Greeter/...</c>, the route rewrites the path (the gRPC
    /// method) to the server's <c>/greet.Greeter/...</c>. A unary call and a bidirectional stream, so the rewrite holds
    /// for a stream whose request body is still open while replies come back. Without the rewrite the server answers
    /// UNIMPLEMENTED (it has no legacy service).
    /// </summary>
    [Fact]
    public async Task RouteWithRewrite_RenamedService_CallsReachTheServersMethods()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            routes:
              - { id: legacy, match: { path: "/legacy.Greeter/{method}" }, rewrite: { path: "/greet.Greeter/{method}" }, cluster: greeter }
            clusters:
              greeter:
                protocol: h2c
                destinations: [{ address: "http://127.0.0.1:{{upstream.Port}}" }]
                connect_timeout: 2s
            """);
        using var channel = Channel(proxy);
        CallInvoker invoker = channel.CreateCallInvoker();
        var requests = Marshallers.Create(static (HelloRequest r) => r.ToByteArray(), HelloRequest.Parser.ParseFrom);
        var replies = Marshallers.Create(static (HelloReply r) => r.ToByteArray(), HelloReply.Parser.ParseFrom);

        var sayHello = new Method<HelloRequest, HelloReply>(MethodType.Unary, "legacy.Greeter", "SayHello", requests, replies);
        HelloReply unary = await invoker.AsyncUnaryCall(sayHello, null, new CallOptions(), new HelloRequest { Name = "renamed" });
        Assert.Equal("Hello renamed", unary.Message);

        var chatMethod = new Method<HelloRequest, HelloReply>(MethodType.DuplexStreaming, "legacy.Greeter", "Chat", requests, replies);
        using AsyncDuplexStreamingCall<HelloRequest, HelloReply> chat = invoker.AsyncDuplexStreamingCall(chatMethod, null, new CallOptions());
        await ChatThreeTimesAsync(chat);
    }

    /// <summary>
    /// Three messages on a bidirectional call, each reply awaited while the request stream is still open (full duplex
    /// end to end), then the request side ended: the server ends its side with OK.
    /// </summary>
    private static async Task ChatThreeTimesAsync(AsyncDuplexStreamingCall<HelloRequest, HelloReply> chat)
    {
        for (int i = 0; i < 3; i++)
        {
            await chat.RequestStream.WriteAsync(new HelloRequest { Name = "m" + i });
            using var wait = new CancellationTokenSource(TestDefaults.Timeout);
            Assert.True(await chat.ResponseStream.MoveNext(wait.Token));
            Assert.Equal("Hi m" + i, chat.ResponseStream.Current.Message);
        }
        await chat.RequestStream.CompleteAsync();
        Assert.False(await chat.ResponseStream.MoveNext());
        Assert.Equal(StatusCode.OK, chat.GetStatus().StatusCode);
    }

    [Fact]
    public async Task AllFourCallShapes_ThroughTheProxy_ReturnTheServersReplies()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync($"{{ address: \"http://127.0.0.1:{upstream.Port}\" }}");
        using var channel = Channel(proxy);
        var client = new Greeter.GreeterClient(channel);

        HelloReply unary = await client.SayHelloAsync(new HelloRequest { Name = "unary" });
        Assert.Equal("Hello unary", unary.Message);

        using (var serverStream = client.SayHellos(new HelloRequest { Name = "s", Count = 5 }))
        {
            var replies = new List<string>();
            await foreach (HelloReply reply in serverStream.ResponseStream.ReadAllAsync())
            {
                replies.Add(reply.Message);
            }
            Assert.Equal(["Hello s 0", "Hello s 1", "Hello s 2", "Hello s 3", "Hello s 4"], replies);
            Assert.Equal(StatusCode.OK, serverStream.GetStatus().StatusCode);
        }

        using (var clientStream = client.CountNames())
        {
            for (int i = 0; i < 7; i++)
            {
                await clientStream.RequestStream.WriteAsync(new HelloRequest { Name = "n" + i });
            }
            await clientStream.RequestStream.CompleteAsync();
            Assert.Equal("7", (await clientStream.ResponseAsync).Message);
        }

        // Bidirectional: each reply must arrive while the request stream is still open (full duplex end to end).
        using (var chat = client.Chat())
        {
            await ChatThreeTimesAsync(chat);
        }
    }

    [Fact]
    public async Task ServerError_StatusMessageAndTrailingMetadata_ArriveIntact()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync($"{{ address: \"http://127.0.0.1:{upstream.Port}\" }}");
        using var channel = Channel(proxy);
        var client = new Greeter.GreeterClient(channel);

        var error = await Assert.ThrowsAsync<RpcException>(async () => await client.SayHelloAsync(new HelloRequest { Name = "fail" }));

        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        Assert.Equal("nobody is called fail", error.Status.Detail);
        Assert.Equal("from-upstream", error.Trailers.GetValue("x-detail"));
    }

    [Fact]
    public async Task ClosedUpstream_IsGrpcUnavailableFromTheProxy_NotABareHttpError()
    {
        await using var proxy = await StartProxyAsync($"{{ address: \"http://127.0.0.1:{Ports.ClosedPort()}\" }}");
        using var channel = Channel(proxy);
        var client = new Greeter.GreeterClient(channel);

        var error = await Assert.ThrowsAsync<RpcException>(async () => await client.SayHelloAsync(new HelloRequest { Name = "x" }));

        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        // The proxy's own answer (200 + grpc-status 14 + its details code), not the client's mapping of an HTTP 502.
        Assert.Equal("upstream_connect_failed", error.Status.Detail);
    }

    [Fact]
    public async Task Deadline_IsForwardedAndEnforcedByTheProxy()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync($"{{ address: \"http://127.0.0.1:{upstream.Port}\" }}");
        using var channel = Channel(proxy);
        var client = new Greeter.GreeterClient(channel);

        // The client's own deadline is far; the proxy must cut the call at the grpc-timeout it carries (300 ms).
        var watch = Stopwatch.StartNew();
        using var http = new HttpClient { DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(proxy.PublicUri, "/greet.Greeter/SayHello"))
        {
            Content = new ByteArrayContent(GrpcFrame(new HelloRequest { Name = "slow" })),
            Version = HttpVersion.Version20, // a message does not take the client's default version
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        request.Content.Headers.ContentType = new("application/grpc");
        request.Headers.TryAddWithoutValidation("te", "trailers");
        request.Headers.TryAddWithoutValidation("grpc-timeout", "300m");
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        await response.Content.ReadAsByteArrayAsync();
        watch.Stop();

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        string status = response.Headers.TryGetValues("grpc-status", out var inHead) ? inHead.Single()
            : response.TrailingHeaders.GetValues("grpc-status").Single();
        Assert.Equal("4", status); // DEADLINE_EXCEEDED
        Assert.Equal(HttpVersion.Version20, response.Version);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(4), $"the call took {watch.Elapsed}");

        // And the typed client sees the same through its own deadline.
        var error = await Assert.ThrowsAsync<RpcException>(async () =>
            await client.SayHelloAsync(new HelloRequest { Name = "slow" }, deadline: DateTime.UtcNow.AddMilliseconds(300)));
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
    }

    [Fact]
    public async Task UnavailableDestination_CallIsRetriedOnTheOther_WithItsBody()
    {
        await using var down = await H2Upstream.StartAsync(unavailable: true);
        await using var up = await H2Upstream.StartAsync();
        await using var proxy = await StartProxyAsync(
            $"{{ address: \"http://127.0.0.1:{down.Port}\" }}, {{ address: \"http://127.0.0.1:{up.Port}\" }}",
            "retry: { attempts: 2, on: [unavailable], non_idempotent: true, budget_percent: 100, backoff: { base: 1ms, max: 5ms } }");
        using var channel = Channel(proxy);
        var client = new Greeter.GreeterClient(channel);

        for (int i = 0; i < 6; i++)
        {
            HelloReply reply = await client.SayHelloAsync(new HelloRequest { Name = "r" + i });
            Assert.Equal("Hello r" + i, reply.Message); // the body reached the second destination intact
        }
        Assert.True(down.RefusedCalls > 0, "round robin never sent a call to the unavailable destination");
    }

    [Theory]
    [InlineData("x-client-sum: 42\r\n", "hello|42")]
    [InlineData("", "hello|")]
    // A field the proxy owns in the head (here X-Forwarded-For) does not travel as a trailer.
    [InlineData("x-client-sum: 7\r\nX-Forwarded-For: 10.9.9.9\r\n", "hello|7||end")]
    public async Task RequestTrailers_FromAnHttp11Client_ReachTheHttp2Upstream(string trailers, string expected)
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c");
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(proxy.Public);
        string request = "POST /request-trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nConnection: close\r\n\r\n"
            + "5\r\nhello\r\n0\r\n" + trailers + "\r\n";
        await socket.SendAsync(Encoding.ASCII.GetBytes(request));
        string answer = await ReadToEndAsync(socket);

        Assert.StartsWith("HTTP/1.1 200", answer, StringComparison.Ordinal);
        Assert.True(answer.Contains(expected, StringComparison.Ordinal), answer);
    }

    [Fact]
    public async Task ResponseHeadersPhase_RunsOnHttp2UpstreamAnswers()
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await TestProxy.StartAsync($$"""
            listeners:
              - { name: public, address: 127.0.0.1:0 }
            policies:
              down: { response_headers: { remove: [server], add: { x-frame-options: DENY } } }
            routes:
              - { id: all, match: { path: "/{**rest}" }, cluster: backend, policies: [down] }
            clusters:
              backend:
                protocol: h2c
                destinations: [{ address: "http://127.0.0.1:{{upstream.Port}}" }]
            """);
        using var client = Clients.CreateHttpClient();

        using var response = await client.GetAsync(new Uri(proxy.PublicUri, "/info"));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.StartsWith("HTTP/2|", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal("DENY", response.Headers.GetValues("x-frame-options").Single());
        Assert.False(response.Headers.Contains("server"), "Kestrel's server field should have been removed");
    }

    private static byte[] GrpcFrame(HelloRequest message)
    {
        byte[] payload = Google.Protobuf.MessageExtensions.ToByteArray(message);
        byte[] frame = new byte[5 + payload.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(1), payload.Length);
        payload.CopyTo(frame, 5);
        return frame;
    }

    private static async Task<string> ReadToEndAsync(Socket socket)
    {
        using var timeout = new CancellationTokenSource(TestDefaults.Timeout);
        var buffer = new byte[4096];
        var text = new StringBuilder();
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token);
            if (n == 0)
            {
                return text.ToString();
            }
            text.Append(Encoding.ASCII.GetString(buffer, 0, n));
        }
    }
}
