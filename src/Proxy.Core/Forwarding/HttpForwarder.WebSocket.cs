using System.Buffers;
using System.IO.Pipelines;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Http2.Client;
using Proxy.Model;
using Proxy.Upstream;

namespace Proxy.Forwarding;

/// <summary>
/// WebSockets from HTTP/1.1 clients to HTTP/2 upstreams (docs/http2.md, "WebSockets"): the RFC 6455 upgrade becomes
/// an RFC 8441 extended CONNECT on the multiplexed connection, its 2xx becomes the client's 101, and from then on the
/// client's bytes go up as DATA frames and the stream's DATA come back as raw bytes. Upgrades are rare and long-lived:
/// this is written plainly (a task per direction), not for the steady-state allocation budget of requests.
/// </summary>
internal sealed partial class HttpForwarder
{
    private static readonly byte[] s_webSocketProtocol = "websocket"u8.ToArray();

    /// <summary>How long an extended CONNECT waits for a fresh connection's SETTINGS when the route sets no response timeout.</summary>
    private static readonly TimeSpan s_settingsWait = TimeSpan.FromSeconds(10);

    private static bool IsWebSocketUpgrade(RequestHead head)
        => head.IsUpgrade && head.TryGetHeader("upgrade"u8, out ReadOnlySpan<byte> protocol)
            && protocol.Trim((byte)' ').EqualsIgnoreCaseAscii("websocket"u8);

    /// <summary>
    /// RFC 8441 section 3: a client must not send an extended CONNECT before the peer's SETTINGS said
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, so a fresh connection's SETTINGS are awaited. When the upstream does not
    /// allow it, the client gets a 502 (the local reply logs its one line) and false is returned.
    /// </summary>
    private async ValueTask<bool> ExtendedConnectAllowedAsync(Http2ClientConnection connection, ClusterModel cluster,
        DestinationState destination, UpstreamTimeouts timeouts)
    {
        TimeSpan wait = timeouts.Response > TimeSpan.Zero ? timeouts.Response : s_settingsWait;
        try
        {
            await connection.PeerSettingsSeen.WaitAsync(wait).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        if (connection.EnableConnectProtocol)
        {
            return true;
        }
        ProxyLog.Warn("upstream_websocket_unsupported", ("cluster", cluster.Name), ("destination", destination.Address),
            ("reason", "upstream HTTP/2 SETTINGS lack SETTINGS_ENABLE_CONNECT_PROTOCOL"));
        _http2Outcome = false;
        await _client.SendErrorAsync(502, "upstream_websocket_unsupported", close: true).ConfigureAwait(false);
        return false;
    }

    /// <summary>
    /// The extended CONNECT was accepted: answers the client 101 with the Sec-WebSocket-Accept computed from its key
    /// (RFC 6455 section 4.2.2), then relays bytes both ways until one side ends. Returns false: the client
    /// connection is not reused after a tunnel.
    /// </summary>
    private async Task<bool> TunnelHttp2Async(Http2ClientStream stream, ClusterModel cluster)
    {
        WriteWebSocketAcceptHead(stream.Head);
        if (!await _client.FlushClientAsync().ConfigureAwait(false))
        {
            return false;
        }
        var activity = new TunnelActivity();
        Volatile.Write(ref _tunnel, activity);
        Task up = CopyClientToStreamAsync(stream, activity);
        Task down = CopyStreamToClientAsync(stream, activity);
        Task<Task> either = Task.WhenAny(up, down);
        if (await activity.IdledOutAsync(either, cluster.TunnelIdleTimeout).ConfigureAwait(false))
        {
            TunnelIdledOut(cluster);
            _client.Input.CancelPendingRead();
            _client.Output.CancelPendingFlush();
            await stream.Connection.CancelAsync(stream).ConfigureAwait(false);
        }
        else if (await either.ConfigureAwait(false) == down)
        {
            // The upstream ended the stream (or the client stopped taking bytes): stop reading the client, and reset
            // the stream, which takes back a send that waits for window the upstream will not give any more. Ended by
            // the upstream, the client connection then closes gracefully.
            _client.Input.CancelPendingRead();
            await stream.Connection.CancelAsync(stream).ConfigureAwait(false);
        }
        else
        {
            // The client went away (or its bytes cannot go up): reset the stream, which ends the download too, and
            // take back a write to the client that waits on a client that no longer reads.
            _client.Output.CancelPendingFlush();
            await stream.Connection.CancelAsync(stream).ConfigureAwait(false);
        }
        await Task.WhenAll(up, down).ConfigureAwait(false);
        Volatile.Write(ref _tunnel, null);
        return false;
    }

    private void WriteWebSocketAcceptHead(ResponseHead response)
    {
        _client.ResponseStatus = 101;
        PipeWriter output = _client.Output;
        output.Write("HTTP/1.1 101 Switching Protocols\r\n"u8);
        for (int i = 0; i < response.FieldCount; i++)
        {
            // The 2xx's end-to-end fields (Sec-WebSocket-Protocol, -Extensions) belong to the handshake too.
            if (!response.Fields[i].HopByHop && !response.Name(i).EqualsIgnoreCaseAscii("sec-websocket-accept"u8))
            {
                output.WriteField(response.Name(i), response.Value(i));
            }
        }
        output.Write("connection: upgrade\r\nupgrade: websocket\r\n"u8);
        Span<byte> accept = stackalloc byte[WebSocketHandshake.AcceptLength];
        if (_client.Head.TryGetHeader("sec-websocket-key"u8, out ReadOnlySpan<byte> key) && WebSocketHandshake.TryComputeAccept(key, accept))
        {
            output.WriteField("sec-websocket-accept"u8, accept);
        }
        output.Write("\r\n"u8);
    }

    /// <summary>Client bytes up as DATA frames (the send windows pace the client read); END_STREAM when the client stops sending.</summary>
    private async Task CopyClientToStreamAsync(Http2ClientStream stream, TunnelActivity activity)
    {
        PipeReader source = _client.Input;
        Http2ClientConnection connection = stream.Connection;
        try
        {
            while (true)
            {
                ReadResult result = await source.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                if (result.IsCanceled)
                {
                    source.AdvanceTo(buffer.Start);
                    return;
                }
                if (!buffer.IsEmpty)
                {
                    activity.Touch();
                }
                bool sent = buffer.IsEmpty || await SendTunnelDataAsync(connection, stream, buffer, activity).ConfigureAwait(false);
                source.AdvanceTo(buffer.End);
                if (!sent)
                {
                    return;
                }
                if (result.IsCompleted)
                {
                    await connection.SendDataAsync(stream, ReadOnlySequence<byte>.Empty, endStream: true).ConfigureAwait(false);
                    return;
                }
            }
        }
        catch (Exception)
        {
        }
    }

    /// <summary>The stream's DATA down to the client as raw bytes, returning window as the client takes them.</summary>
    private async Task CopyStreamToClientAsync(Http2ClientStream stream, TunnelActivity activity)
    {
        PipeReader source = stream.ResponseReader;
        PipeWriter output = _client.Output;
        try
        {
            while (true)
            {
                ReadResult result = await source.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                long received = buffer.Length;
                if (received > 0)
                {
                    activity.Touch();
                    _client.ResponsePump.Count(received);
                    output.Write(buffer);
                }
                source.AdvanceTo(buffer.End);
                FlushResult flush = await FlushTunnelAsync(output, activity, TunnelSide.Client).ConfigureAwait(false);
                if (result.IsCompleted || flush.IsCompleted || flush.IsCanceled)
                {
                    return;
                }
                // A cancelled read with nothing in it (the head-ready wake-up) just loops.
                if (received > 0)
                {
                    await stream.Connection.ConsumedAsync(stream, (int)received).ConfigureAwait(false);
                }
            }
        }
        catch (Exception)
        {
        }
    }

    /// <summary>Client bytes up as DATA; a send that waits for window (an upstream that stopped reading) is timed as a stalled write.</summary>
    private static async ValueTask<bool> SendTunnelDataAsync(Http2ClientConnection connection, Http2ClientStream stream,
        ReadOnlySequence<byte> buffer, TunnelActivity activity)
    {
        ValueTask<bool> send = connection.SendDataAsync(stream, buffer, endStream: false);
        if (send.IsCompleted)
        {
            return send.Result;
        }
        activity.WriteWaiting(TunnelSide.Upstream);
        try
        {
            return await send.ConfigureAwait(false);
        }
        finally
        {
            activity.WriteDone(TunnelSide.Upstream);
        }
    }

    /// <summary>Flushes a tunnel's writer; a flush that waits (a peer that does not read) is timed as a stalled write.</summary>
    private static async ValueTask<FlushResult> FlushTunnelAsync(PipeWriter output, TunnelActivity activity, TunnelSide side)
    {
        ValueTask<FlushResult> flush = output.FlushAsync();
        if (flush.IsCompleted)
        {
            return flush.Result;
        }
        activity.WriteWaiting(side);
        try
        {
            return await flush.ConfigureAwait(false);
        }
        finally
        {
            activity.WriteDone(side);
        }
    }
}
