using System.Net;
using System.Net.WebSockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// A real WebSocket server (Kestrel, allowed in tests only) on 127.0.0.1:0 that echoes every message on <c>/ws</c>
/// with the same type, and answers other requests with 200 "kestrel". With <see cref="HttpProtocols.Http2"/> it is
/// an h2c upstream (prior knowledge) that takes WebSockets as RFC 8441 extended CONNECTs.
/// </summary>
internal sealed class KestrelWebSocketUpstream : IAsyncDisposable
{
    private readonly WebApplication _app;

    private KestrelWebSocketUpstream(WebApplication app) => _app = app;

    public int Port { get; private set; }

    /// <summary>The request protocol of the last accepted WebSocket ("HTTP/1.1", or "HTTP/2" for an extended CONNECT).</summary>
    public string? LastWebSocketProtocol { get; private set; }

    public static async Task<KestrelWebSocketUpstream> StartAsync(HttpProtocols protocols = HttpProtocols.Http1)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(o => o.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = protocols));
        var app = builder.Build();
        var upstream = new KestrelWebSocketUpstream(app);
        app.UseWebSockets();
        app.Run(async context =>
        {
            if (context.Request.Path != "/ws" || !context.WebSockets.IsWebSocketRequest)
            {
                await context.Response.WriteAsync("kestrel");
                return;
            }
            upstream.LastWebSocketProtocol = context.Request.Protocol;
            using var socket = await context.WebSockets.AcceptWebSocketAsync();
            await EchoAsync(socket, context.RequestAborted);
        });
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await app.StartAsync(cts.Token);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        upstream.Port = new Uri(address).Port;
        return upstream;
    }

    private static async Task EchoAsync(WebSocket socket, CancellationToken cancellationToken)
    {
        var buffer = new byte[64 * 1024];
        while (true)
        {
            var result = await socket.ReceiveAsync(buffer, cancellationToken);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                await socket.CloseAsync(result.CloseStatus ?? WebSocketCloseStatus.NormalClosure, result.CloseStatusDescription, cancellationToken);
                return;
            }
            await socket.SendAsync(buffer.AsMemory(0, result.Count), result.MessageType, result.EndOfMessage, cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await _app.StopAsync(cts.Token);
        await _app.DisposeAsync();
    }
}
