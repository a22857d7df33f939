using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Proxy.Http2;

namespace Proxy.FunctionalTests.Grpc;

internal enum RawH2Behavior
{
    /// <summary>HEADERS :status 200, DATA "ok{connection}" with END_STREAM.</summary>
    Ok,
    /// <summary>GOAWAY with a last stream id below the request's: the request was never processed.</summary>
    GoAwayUnprocessed,
    /// <summary>HEADERS 200, DATA "partial", then RST_STREAM INTERNAL_ERROR: a stream reset mid-body.</summary>
    ResetMidBody,
    /// <summary>HEADERS :status 103 (link, and a hop-by-hop keep-alive) without END_STREAM, then the Ok answer (RFC 9113 section 8.1).</summary>
    EarlyHints,
    /// <summary>HEADERS :status 101 without END_STREAM, then the Ok answer: malformed, 101 does not exist in HTTP/2 (section 8.6).</summary>
    SwitchingProtocols,
    /// <summary>HEADERS 200 with a value holding CR LF and a second field ("a\r\nset-cookie: injected=1"), then DATA "ok".</summary>
    CrLfInValue,
    /// <summary>HEADERS 200 with an uppercase field name ("X-Upper"), then DATA "ok".</summary>
    UppercaseName,
    /// <summary>HEADERS 200 with a value that starts with a space, then DATA "ok".</summary>
    LeadingSpaceValue,
    /// <summary>HEADERS 200, DATA "ok", then trailers whose value holds CR LF and a second field.</summary>
    CrLfInTrailer,
    /// <summary>HEADERS 200 with content-length: 100, then DATA "short" with END_STREAM: a malformed response (RFC 9113 section 8.1.1).</summary>
    ContentLengthMismatch,
}

/// <summary>
/// A minimal cleartext HTTP/2 server over a raw socket, for what Kestrel cannot be told to do on cue: GOAWAY with a
/// chosen last stream id, RST_STREAM mid-body. It PINGs every new connection and counts the acknowledgements. Request
/// header blocks are not decoded (responses use only the static table, so no HPACK state is needed).
/// </summary>
internal sealed class RawH2Upstream : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly Func<int, RawH2Behavior> _behavior;
    private readonly Task _accept;
    private readonly List<TcpClient> _clients = [];
    private int _requests;
    private int _connections;
    private int _pingAcks;
    private readonly bool _sendSettings;
    private readonly bool _answerAtHeaders;
    private readonly bool _stallAtHeaders;

    /// <param name="behavior">The answer to the n-th request (from 1).</param>
    /// <param name="sendSettings">False: no SETTINGS and no PING when a connection starts, the answers come straight away
    /// (a server connection preface that breaks RFC 9113 section 3.4).</param>
    /// <param name="answerAtHeaders">True: a request is answered at its HEADERS, before its body (which is dropped);
    /// otherwise at END_STREAM on its HEADERS (requests with a body get no answer).</param>
    /// <param name="stallAtHeaders">True: nothing after a HEADERS frame's 9-byte header is read (counted in
    /// <see cref="Requests"/>); a second later the connection is reset (linger 0). With a small
    /// <paramref name="receiveBufferSize"/>, a header section larger than the socket buffers leaves the proxy's write
    /// waiting, then failing.</param>
    /// <param name="receiveBufferSize">The listening socket's receive buffer, inherited by accepted sockets; 0: the default.</param>
    public RawH2Upstream(Func<int, RawH2Behavior> behavior, bool sendSettings = true, bool answerAtHeaders = false,
        bool stallAtHeaders = false, int receiveBufferSize = 0)
    {
        _behavior = behavior;
        _sendSettings = sendSettings;
        _answerAtHeaders = answerAtHeaders;
        _stallAtHeaders = stallAtHeaders;
        if (receiveBufferSize > 0)
        {
            _listener.Server.ReceiveBufferSize = receiveBufferSize;
        }
        _listener.Start();
        _accept = AcceptAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public int Connections => Volatile.Read(ref _connections);
    public int PingAcks => Volatile.Read(ref _pingAcks);
    public int Requests => Volatile.Read(ref _requests);

    private async Task AcceptAsync()
    {
        while (true)
        {
            TcpClient client;
            try
            {
                client = await _listener.AcceptTcpClientAsync();
            }
            catch (Exception)
            {
                return;
            }
            lock (_clients)
            {
                _clients.Add(client);
            }
            int index = Interlocked.Increment(ref _connections);
            _ = Task.Run(() => ServeAsync(client, index));
        }
    }

    private async Task ServeAsync(TcpClient client, int connection)
    {
        try
        {
            NetworkStream stream = client.GetStream();
            var preface = new byte[Http2Preface.Length];
            await stream.ReadExactlyAsync(preface);
            var output = new ArrayBufferWriter<byte>();
            if (_sendSettings)
            {
                Http2FrameWriter.WriteSettings(output, []);
                Http2FrameWriter.WritePing(output, 42, ack: false);
                await SendAsync(stream, output);
            }
            var header = new byte[Http2FrameHeader.Size];
            while (true)
            {
                await stream.ReadExactlyAsync(header);
                int length = (header[0] << 16) | (header[1] << 8) | header[2];
                var type = (Http2FrameType)header[3];
                var flags = (Http2Flags)header[4];
                int streamId = (int)(System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(5)) & 0x7FFF_FFFF);
                if (_stallAtHeaders && type == Http2FrameType.HEADERS)
                {
                    Interlocked.Increment(ref _requests);
                    await Task.Delay(TimeSpan.FromSeconds(1));
                    client.Client.LingerState = new LingerOption(true, 0);
                    return;
                }
                var payload = new byte[length];
                await stream.ReadExactlyAsync(payload);
                switch (type)
                {
                    case Http2FrameType.SETTINGS when (flags & Http2Flags.ACK) == 0:
                        Http2FrameWriter.WriteSettingsAck(output);
                        break;
                    case Http2FrameType.PING when (flags & Http2Flags.ACK) != 0:
                        Interlocked.Increment(ref _pingAcks);
                        break;
                    case Http2FrameType.HEADERS when _answerAtHeaders || (flags & Http2Flags.END_STREAM) != 0:
                        Answer(output, streamId, connection, _behavior(Interlocked.Increment(ref _requests)));
                        break;
                }
                await SendAsync(stream, output);
            }
        }
        catch (Exception)
        {
        }
        finally
        {
            client.Dispose();
        }
    }

    private static void Answer(ArrayBufferWriter<byte> output, int streamId, int connection, RawH2Behavior behavior)
    {
        // 0x88: indexed field 8 of the static table, ":status: 200" (RFC 7541 appendix A).
        ReadOnlySpan<byte> status200 = [0x88];
        switch (behavior)
        {
            case RawH2Behavior.Ok:
                Http2FrameWriter.WriteHeaders(output, streamId, status200, endStream: false, 16384);
                Http2FrameWriter.WriteData(output, streamId, System.Text.Encoding.ASCII.GetBytes($"ok{connection}"), endStream: true);
                break;
            case RawH2Behavior.GoAwayUnprocessed:
                Http2FrameWriter.WriteGoAway(output, streamId - 2 < 0 ? 0 : streamId - 2, Http2ErrorCode.NO_ERROR, default);
                break;
            case RawH2Behavior.EarlyHints:
            case RawH2Behavior.SwitchingProtocols:
                var block = new ArrayBufferWriter<byte>();
                Literal(block, ":status", behavior == RawH2Behavior.EarlyHints ? "103" : "101");
                Literal(block, "link", "</style.css>; rel=preload");
                Literal(block, "keep-alive", "timeout=5");
                Http2FrameWriter.WriteHeaders(output, streamId, block.WrittenSpan, endStream: false, 16384);
                Http2FrameWriter.WriteHeaders(output, streamId, status200, endStream: false, 16384);
                Http2FrameWriter.WriteData(output, streamId, System.Text.Encoding.ASCII.GetBytes($"ok{connection}"), endStream: true);
                break;
            case RawH2Behavior.CrLfInValue:
            case RawH2Behavior.UppercaseName:
            case RawH2Behavior.LeadingSpaceValue:
                var head = new ArrayBufferWriter<byte>();
                head.Write(status200);
                (string name, string value) = behavior switch
                {
                    RawH2Behavior.CrLfInValue => ("x-note", "a\r\nset-cookie: injected=1"),
                    RawH2Behavior.UppercaseName => ("X-Upper", "1"),
                    _ => ("x-note", " padded"),
                };
                Literal(head, name, value);
                Http2FrameWriter.WriteHeaders(output, streamId, head.WrittenSpan, endStream: false, 16384);
                Http2FrameWriter.WriteData(output, streamId, "ok"u8, endStream: true);
                break;
            case RawH2Behavior.CrLfInTrailer:
                var trailers = new ArrayBufferWriter<byte>();
                Literal(trailers, "x-sum", "1\r\nset-cookie: injected=1");
                Http2FrameWriter.WriteHeaders(output, streamId, status200, endStream: false, 16384);
                Http2FrameWriter.WriteData(output, streamId, "ok"u8, endStream: false);
                Http2FrameWriter.WriteHeaders(output, streamId, trailers.WrittenSpan, endStream: true, 16384);
                break;
            case RawH2Behavior.ContentLengthMismatch:
                var declared = new ArrayBufferWriter<byte>();
                declared.Write(status200);
                Literal(declared, "content-length", "100");
                Http2FrameWriter.WriteHeaders(output, streamId, declared.WrittenSpan, endStream: false, 16384);
                Http2FrameWriter.WriteData(output, streamId, "short"u8, endStream: true);
                break;
            case RawH2Behavior.ResetMidBody:
                Http2FrameWriter.WriteHeaders(output, streamId, status200, endStream: false, 16384);
                Http2FrameWriter.WriteData(output, streamId, "partial"u8, endStream: false);
                Http2FrameWriter.WriteRstStream(output, streamId, Http2ErrorCode.INTERNAL_ERROR);
                break;
        }
    }

    /// <summary>A literal field without indexing, new name, no Huffman (RFC 7541 section 6.2.2); lengths below 127.</summary>
    private static void Literal(ArrayBufferWriter<byte> block, string name, string value)
    {
        block.Write(new byte[] { 0x00, (byte)name.Length });
        block.Write(System.Text.Encoding.ASCII.GetBytes(name));
        block.Write(new byte[] { (byte)value.Length });
        block.Write(System.Text.Encoding.ASCII.GetBytes(value));
    }

    private static async Task SendAsync(NetworkStream stream, ArrayBufferWriter<byte> output)
    {
        if (output.WrittenCount == 0)
        {
            return;
        }
        await stream.WriteAsync(output.WrittenMemory);
        output.ResetWrittenCount();
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        lock (_clients)
        {
            foreach (var client in _clients)
            {
                client.Dispose();
            }
        }
        await _accept;
    }
}
