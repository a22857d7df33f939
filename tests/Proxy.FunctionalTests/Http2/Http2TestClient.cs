using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;
using Proxy.Http2.HPack;

namespace Proxy.FunctionalTests.Http2;

/// <summary>One frame as received.</summary>
internal sealed record Http2Frame(Http2FrameType Type, Http2Flags Flags, int StreamId, byte[] Payload)
{
    public bool Has(Http2Flags flag) => (Flags & flag) != 0;

    /// <summary>RST_STREAM's code, or GOAWAY's.</summary>
    public Http2ErrorCode ErrorCode => Type == Http2FrameType.GOAWAY
        ? (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(Payload.AsSpan(4))
        : (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(Payload);

    public int GoAwayLastStreamId => (int)(BinaryPrimitives.ReadUInt32BigEndian(Payload) & 0x7FFF_FFFF);

    public override string ToString() => $"{Type} stream={StreamId} flags={Flags} length={Payload.Length}"
        + (Type is Http2FrameType.GOAWAY or Http2FrameType.RST_STREAM ? $" code={ErrorCode}" : "");
}

/// <summary>A response read off one stream.</summary>
internal sealed record Http2Response(int Status, List<(string Name, string Value)> Headers, byte[] Body)
{
    public string BodyText => Encoding.UTF8.GetString(Body);

    public string? Header(string name) => Headers.FirstOrDefault(h => h.Name == name).Value;
}

/// <summary>
/// A frame-level HTTP/2 client for negative tests: sends exactly the frames a test builds (malformed on purpose),
/// reads frames with a timeout. Uses the engine's own frame writer and HPACK (tested separately against RFC 7541).
/// </summary>
internal sealed class Http2TestClient : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly HPackEncoder _encoder = new();
    private readonly HPackDecoder _decoder = new(4096, 1024 * 1024);
    private readonly ArrayBufferWriter<byte> _out = new();

    private Http2TestClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    /// <summary>Replenish windows as DATA arrives (off for zero-window tests).</summary>
    public bool AutoWindowUpdate { get; set; } = true;

    public static async Task<Http2TestClient> ConnectAsync(IPEndPoint endPoint, params Http2Setting[] settings)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await socket.ConnectAsync(endPoint, cts.Token);
        var client = new Http2TestClient(socket);
        client._out.Write(Http2Preface.ClientPreface);
        Http2FrameWriter.WriteSettings(client._out, settings);
        await client.FlushAsync();
        return client;
    }

    public async Task FlushAsync()
    {
        using var cts = new CancellationTokenSource(TestDefaults.Timeout);
        await _stream.WriteAsync(_out.WrittenMemory, cts.Token);
        _out.ResetWrittenCount();
    }

    public Task SendRawAsync(byte[] bytes)
    {
        _out.Write(bytes);
        return FlushAsync();
    }

    /// <summary>HPACK-encodes <paramref name="fields"/> (names as given: tests send invalid ones on purpose).</summary>
    public byte[] Encode(params (string Name, string Value)[] fields) => Encode(HPackIndexing.WithoutIndexing, fields);

    public byte[] Encode(HPackIndexing indexing, params (string Name, string Value)[] fields)
    {
        var block = new byte[64 * 1024];
        _encoder.TryBeginHeaderBlock(block, out int length);
        foreach (var (name, value) in fields)
        {
            _encoder.TryEncode(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), indexing, block.AsSpan(length), out int written);
            length += written;
        }
        return block[..length];
    }

    public static (string, string)[] Get(string path, string authority = "example.test", string method = "GET") =>
        [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)];

    public Task SendHeadersAsync(int streamId, bool endStream, params (string Name, string Value)[] fields)
    {
        Http2FrameWriter.WriteHeaders(_out, streamId, Encode(fields), endStream, 16_384);
        return FlushAsync();
    }

    /// <summary>A HEADERS frame with a raw block fragment and chosen flags.</summary>
    public Task SendFrameAsync(Http2FrameType type, Http2Flags flags, int streamId, ReadOnlySpan<byte> payload)
    {
        Span<byte> header = _out.GetSpan(Http2FrameHeader.Size);
        Http2FrameWriter.WriteFrameHeader(header, payload.Length, type, flags, streamId);
        _out.Advance(Http2FrameHeader.Size);
        _out.Write(payload);
        return FlushAsync();
    }

    public Task SendDataAsync(int streamId, ReadOnlySpan<byte> data, bool endStream)
    {
        for (int offset = 0; offset < data.Length || (offset == 0 && data.IsEmpty); )
        {
            int n = Math.Min(16_384, data.Length - offset);
            Http2FrameWriter.WriteData(_out, streamId, data.Slice(offset, n), endStream && offset + n == data.Length);
            offset += n;
            if (data.IsEmpty)
            {
                break;
            }
        }
        return FlushAsync();
    }

    public Task SendRstAsync(int streamId, Http2ErrorCode code = Http2ErrorCode.CANCEL)
    {
        Http2FrameWriter.WriteRstStream(_out, streamId, code);
        return FlushAsync();
    }

    public Task SendWindowUpdateAsync(int streamId, int increment)
    {
        Http2FrameWriter.WriteWindowUpdate(_out, streamId, increment);
        return FlushAsync();
    }

    private readonly byte[] _headerBytes = new byte[Http2FrameHeader.Size];

    /// <summary>Next frame, or null when the server closed the connection.</summary>
    public async Task<Http2Frame?> ReadFrameAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TestDefaults.Timeout);
        try
        {
            await _stream.ReadExactlyAsync(_headerBytes, cts.Token);
        }
        catch (Exception e) when (e is EndOfStreamException or IOException)
        {
            return null;
        }
        int length = (_headerBytes[0] << 16) | (_headerBytes[1] << 8) | _headerBytes[2];
        var payload = new byte[length];
        await _stream.ReadExactlyAsync(payload, cts.Token);
        var frame = new Http2Frame((Http2FrameType)_headerBytes[3], (Http2Flags)_headerBytes[4],
            (int)(BinaryPrimitives.ReadUInt32BigEndian(_headerBytes.AsSpan(5)) & 0x7FFF_FFFF), payload);
        if (frame.Type == Http2FrameType.DATA && AutoWindowUpdate && length > 0)
        {
            Http2FrameWriter.WriteWindowUpdate(_out, 0, length);
            Http2FrameWriter.WriteWindowUpdate(_out, frame.StreamId, length);
            await FlushAsync();
        }
        return frame;
    }

    /// <summary>Reads until a frame matches; fails if the connection closes first.</summary>
    public async Task<Http2Frame> WaitForAsync(Func<Http2Frame, bool> match, TimeSpan? timeout = null)
    {
        var seen = new List<string>();
        using var cts = new CancellationTokenSource(timeout ?? TestDefaults.Timeout);
        while (true)
        {
            var frame = await ReadFrameAsync(timeout) ?? throw new InvalidOperationException("connection closed; saw: " + string.Join(", ", seen));
            if (match(frame))
            {
                return frame;
            }
            seen.Add(frame.ToString());
        }
    }

    public Task<Http2Frame> WaitForGoAwayAsync(TimeSpan? timeout = null) => WaitForAsync(f => f.Type == Http2FrameType.GOAWAY, timeout);

    public Task<Http2Frame> WaitForRstAsync(int streamId, TimeSpan? timeout = null) =>
        WaitForAsync(f => f.Type == Http2FrameType.RST_STREAM && f.StreamId == streamId, timeout);

    /// <summary>True when the server closes the connection (after whatever frames) within the timeout.</summary>
    public async Task<bool> WaitForCloseAsync(TimeSpan? timeout = null)
    {
        try
        {
            while (await ReadFrameAsync(timeout) is not null)
            {
            }
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>Reads frames until <paramref name="streamId"/> ends; other streams' frames are decoded and dropped.</summary>
    public async Task<Http2Response> ReadResponseAsync(int streamId)
    {
        int status = 0;
        var headers = new List<(string, string)>();
        var body = new MemoryStream();
        while (true)
        {
            var frame = await WaitForAsync(f => f.StreamId == streamId && f.Type is Http2FrameType.HEADERS or Http2FrameType.DATA or Http2FrameType.RST_STREAM or Http2FrameType.CONTINUATION
                || f.Type == Http2FrameType.GOAWAY);
            if (frame.Type is Http2FrameType.RST_STREAM or Http2FrameType.GOAWAY)
            {
                throw new InvalidOperationException($"stream {streamId} ended by {frame}");
            }
            if (frame.Type is Http2FrameType.HEADERS or Http2FrameType.CONTINUATION)
            {
                var sink = new ListSink { Fields = [] };
                Assert.Equal(HPackError.None, _decoder.Decode(frame.Payload, frame.Has(Http2Flags.END_HEADERS), ref sink));
                foreach (var (name, value) in sink.Fields)
                {
                    if (name == ":status")
                    {
                        status = int.Parse(value);
                    }
                    else
                    {
                        headers.Add((name, value));
                    }
                }
            }
            else
            {
                body.Write(frame.Payload);
            }
            if (frame.Has(Http2Flags.END_STREAM))
            {
                return new Http2Response(status, headers, body.ToArray());
            }
        }
    }

    /// <summary>Decodes a HEADERS frame's block (END_HEADERS expected) into its fields, pseudo-headers included.</summary>
    public List<(string Name, string Value)> DecodeHeaders(Http2Frame frame)
    {
        var sink = new ListSink { Fields = [] };
        Assert.Equal(HPackError.None, _decoder.Decode(frame.Payload, frame.Has(Http2Flags.END_HEADERS), ref sink));
        return sink.Fields;
    }

    private struct ListSink : IHeaderSink
    {
        public List<(string, string)> Fields;

        public void OnStaticIndexedHeader(int index) => Add(HPackStaticTable.Name(index), HPackStaticTable.Value(index));

        public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed) => Add(HPackStaticTable.Name(index), value);

        public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed) => Add(name, value);

        private readonly void Add(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value) =>
            Fields.Add((Encoding.ASCII.GetString(name), Encoding.ASCII.GetString(value)));
    }

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync();
        _decoder.Dispose();
    }
}
