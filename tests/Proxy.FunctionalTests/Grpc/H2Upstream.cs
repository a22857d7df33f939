using System.Net;
using System.Runtime.CompilerServices;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests.Grpc;

/// <summary>
/// Kestrel (tests only) as an HTTP/2 upstream: cleartext with prior knowledge (h2c), or TLS with ALPN, plus the
/// gRPC Greeter service. Plain routes:
/// <c>/info</c> "protocol|connection id|host|x-forwarded-for|te", <c>/target/...</c> the raw :path it received, <c>/echo</c> the request body back,
/// <c>/bytes/{n}</c> n bytes of 'x', <c>/slow</c> the connection id after 200 ms (<c>/slow/{ms}</c> after ms), <c>/trailers</c> a body then trailers, <c>/trailers-with-length</c> the same with a content-length,
/// <c>/upload</c> (POST) the body's length once it is all in, <c>/upload/hold</c> (POST) the whole body read, then held like <c>/hold</c>,
/// <c>/healthz</c> the request's protocol (counted in <see cref="HealthProbes"/>), <c>/hold</c> "late" after 8 s unless the
/// request is cancelled first (both counted in <see cref="Counters"/>).
/// </summary>
internal sealed class H2Upstream : IAsyncDisposable
{
    private readonly WebApplication _app;

    private H2Upstream(WebApplication app, int port, StrongBox<long> written)
    {
        _app = app;
        Port = port;
        _written = written;
    }

    private readonly StrongBox<long> _written;

    public int Port { get; }

    private StrongBox<long> _calls = new();

    /// <summary>gRPC calls the <c>unavailable</c> upstream turned away.</summary>
    public long RefusedCalls => Interlocked.Read(ref _calls.Value);

    private StrongBox<long> _probes = new();

    /// <summary>Requests to <c>/healthz</c> (health check probes) so far.</summary>
    public long HealthProbes => Interlocked.Read(ref _probes.Value);

    /// <summary>Body bytes <c>/stream/{n}</c> handed to Kestrel so far (written, not necessarily received).</summary>
    public long BytesWritten => Interlocked.Read(ref _written.Value);

    /// <summary>Requests that waited and were cancelled: <c>/hold</c>, and the Greeter's <c>slow</c> calls.</summary>
    public H2UpstreamCounters Counters { get; private init; } = new();

    public static async Task<H2Upstream> StartAsync(HttpProtocols protocols = HttpProtocols.Http2, X509Certificate2? certificate = null, int port = 0,
        int maxStreams = 100, bool unavailable = false)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddGrpc();
        var counters = new H2UpstreamCounters();
        builder.Services.AddSingleton(counters);
        builder.WebHost.UseKestrel(o =>
        {
            o.Limits.Http2.MaxStreamsPerConnection = maxStreams;
            o.Listen(IPAddress.Loopback, port, listen =>
            {
                listen.Protocols = protocols;
                if (certificate is not null)
                {
                    listen.UseHttps(certificate);
                }
            });
        });
        var app = builder.Build();
        var written = new StrongBox<long>();
        var calls = new StrongBox<long>();
        if (unavailable)
        {
            // A destination that is "down" for gRPC: reads the call, then answers trailers-only grpc-status 14.
            app.Use(async (HttpContext c, RequestDelegate next) =>
            {
                if (c.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) != true)
                {
                    await next(c);
                    return;
                }
                Interlocked.Increment(ref calls.Value);
                await c.Request.Body.CopyToAsync(Stream.Null);
                c.Response.ContentType = "application/grpc";
                c.Response.Headers["grpc-status"] = "14";
                c.Response.Headers["grpc-message"] = "draining";
            });
        }
        app.MapGrpcService<GreeterService>();
        app.MapPost("/request-trailers", async (HttpContext c) =>
        {
            // The client's trailers, as the upstream received them (RFC 9113 section 8.1 trailing HEADERS).
            string body = await new StreamReader(c.Request.Body).ReadToEndAsync();
            return $"{body}|{c.Request.GetTrailer("x-client-sum")}|{c.Request.GetTrailer("x-forwarded-for")}|end";
        });
        app.MapGet("/stream/{n:int}", async (HttpContext c, int n) =>
        {
            c.Response.ContentLength = n;
            var chunk = new byte[16 * 1024];
            Array.Fill(chunk, (byte)'s');
            for (int sent = 0; sent < n; sent += chunk.Length)
            {
                int size = Math.Min(chunk.Length, n - sent);
                await c.Response.Body.WriteAsync(chunk.AsMemory(0, size));
                Interlocked.Add(ref written.Value, size);
            }
        });
        app.MapPost("/upload", async (HttpContext c) =>
        {
            // Reads the whole body before it answers (its length): the head comes only after the request's END_STREAM.
            long length = await CountBodyAsync(c);
            return length.ToString(System.Globalization.CultureInfo.InvariantCulture);
        });
        app.MapPost("/upload/hold", async (HttpContext c) =>
        {
            // Reads the whole body, then holds the answer for 8 s (counted like /hold).
            await CountBodyAsync(c);
            return await HoldAsync(c, counters);
        });
        // The request target exactly as it came in :path (not decoded), for rewrite tests.
        app.Map("/target/{**rest}", (HttpContext c) => c.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpRequestFeature>()!.RawTarget);
        app.MapGet("/info", (HttpContext c) =>
            $"{c.Request.Protocol}|{c.Connection.Id}|{c.Request.Host}|{c.Request.Headers["x-forwarded-for"]}|{c.Request.Headers.TE}");
        app.MapPost("/echo", async (HttpContext c) =>
        {
            if (c.Request.ContentLength is { } length)
            {
                c.Response.Headers["x-request-length"] = length.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
            await c.Request.Body.CopyToAsync(c.Response.Body);
        });
        app.MapGet("/bytes/{n:int}", async (HttpContext c, int n) =>
        {
            c.Response.ContentLength = n;
            var chunk = new byte[16 * 1024];
            Array.Fill(chunk, (byte)'x');
            for (int sent = 0; sent < n; sent += chunk.Length)
            {
                await c.Response.Body.WriteAsync(chunk.AsMemory(0, Math.Min(chunk.Length, n - sent)));
            }
        });
        var probes = new StrongBox<long>();
        app.MapGet("/healthz", (HttpContext c) =>
        {
            // Active health checks (ActiveHealthChecker) must reach an HTTP/2-only server in HTTP/2.
            Interlocked.Increment(ref probes.Value);
            return c.Request.Protocol;
        });
        app.MapGet("/hold", async (HttpContext c) => { return await HoldAsync(c, counters); });
        app.MapGet("/status/{code:int}", (int code) =>
        {
            Interlocked.Increment(ref counters.StatusRequests);
            return Results.StatusCode(code);
        });
        app.MapGet("/slow", async (HttpContext c) =>
        {
            await Task.Delay(200);
            return c.Connection.Id;
        });
        app.MapGet("/slow/{ms:int}", async (HttpContext c, int ms) =>
        {
            await Task.Delay(ms);
            return c.Connection.Id;
        });
        app.MapGet("/trailers-with-length", async (HttpContext c) =>
        {
            // A content-length and trailers on one response: legal in HTTP/2 (the trailers are a HEADERS frame).
            c.Response.ContentLength = 20;
            c.Response.DeclareTrailer("grpc-status");
            await c.Response.WriteAsync("body-before-trailers");
            c.Response.AppendTrailer("grpc-status", "0");
        });
        app.MapGet("/trailers", async (HttpContext c) =>
        {
            c.Response.DeclareTrailer("x-checksum");
            await c.Response.WriteAsync("body-before-trailers");
            c.Response.AppendTrailer("x-checksum", "abc123");
        });
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await app.StartAsync(cts.Token);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new H2Upstream(app, new Uri(address).Port, written) { _calls = calls, _probes = probes, Counters = counters };
    }

    /// <summary>Reads a request body to its end; Kestrel's minimum data rate is lifted (the tests trickle bodies on purpose).</summary>
    /// <summary>Holds the answer for 8 s, or until the request is aborted; both counted.</summary>
    private static async Task<string> HoldAsync(HttpContext c, H2UpstreamCounters counters)
    {
        Interlocked.Increment(ref counters.HoldStarted);
        try
        {
            await Task.Delay(TimeSpan.FromSeconds(8), c.RequestAborted);
            return "late";
        }
        catch (OperationCanceledException)
        {
            Interlocked.Increment(ref counters.HoldCancelled);
            return "";
        }
    }

    private static async Task<long> CountBodyAsync(HttpContext c)
    {
        if (c.Features.Get<Microsoft.AspNetCore.Server.Kestrel.Core.Features.IHttpMinRequestBodyDataRateFeature>() is { } rate)
        {
            rate.MinDataRate = null;
        }
        var buffer = new byte[4096];
        long total = 0;
        int read;
        while ((read = await c.Request.Body.ReadAsync(buffer)) > 0)
        {
            total += read;
        }
        return total;
    }

    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        try
        {
            await _app.StopAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
        }
        await _app.DisposeAsync();
    }
}

/// <summary>What an <see cref="H2Upstream"/> saw of requests that waited: started, and cancelled by the client (RST_STREAM).</summary>
internal sealed class H2UpstreamCounters
{
    public long HoldStarted;
    public long HoldCancelled;
    public long SlowCallsStarted;
    public long SlowCallsCancelled;
    /// <summary>Requests to <c>/status/{code}</c>, which answers that status with no body.</summary>
    public long StatusRequests;
}

/// <summary>The Greeter of greeter.proto: one method per streaming shape.</summary>
internal sealed class GreeterService(H2UpstreamCounters counters) : Greeter.GreeterBase
{
    public override async Task<HelloReply> SayHello(HelloRequest request, ServerCallContext context)
    {
        switch (request.Name)
        {
            case "fail":
                throw new RpcException(new Status(StatusCode.NotFound, "nobody is called fail"), new Metadata { { "x-detail", "from-upstream" } });
            case "slow":
                Interlocked.Increment(ref counters.SlowCallsStarted);
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(5), context.CancellationToken);
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref counters.SlowCallsCancelled);
                    throw;
                }
                break;
        }
        return new HelloReply { Message = "Hello " + request.Name };
    }

    public override async Task SayHellos(HelloRequest request, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        for (int i = 0; i < request.Count; i++)
        {
            await responseStream.WriteAsync(new HelloReply { Message = $"Hello {request.Name} {i}" });
        }
    }

    public override async Task<HelloReply> CountNames(IAsyncStreamReader<HelloRequest> requestStream, ServerCallContext context)
    {
        int count = 0;
        while (await requestStream.MoveNext())
        {
            count++;
        }
        return new HelloReply { Message = count.ToString(System.Globalization.CultureInfo.InvariantCulture) };
    }

    public override async Task Chat(IAsyncStreamReader<HelloRequest> requestStream, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        while (await requestStream.MoveNext())
        {
            await responseStream.WriteAsync(new HelloReply { Message = "Hi " + requestStream.Current.Name });
        }
    }
}
