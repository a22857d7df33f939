using System.Buffers;
using System.Text;
using BenchmarkDotNet.Attributes;
using Proxy.Http;
using Proxy.Http2.HPack;
using Proxy.Http2.Server;

namespace Proxy.Benchmarks.Http2;

/// <summary>
/// What a WebSocket over HTTP/2 costs the proxy once per tunnel (RFC 8441): a warm extended CONNECT block decoded,
/// validated and written as the HTTP/1.1 upgrade with a fresh Sec-WebSocket-Key (a CSPRNG read), and the
/// Sec-WebSocket-Accept computation (SHA-1 + base64, RFC 6455 section 4.2.2) done for the 101 in either direction.
/// </summary>
[MemoryDiagnoser]
public class WebSocketHandshakeBenchmarks
{
    private static readonly (string Name, string Value)[] s_connect =
    [
        (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "chat.example.com"),
        (":path", "/socket?room=lobby"), ("sec-websocket-version", "13"), ("origin", "https://chat.example.com"),
        ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"), ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
    ];

    private byte[] _warmBlock = [];
    private HPackDecoder _decoder = null!;
    private readonly Http2RequestHead _head = new(32 * 1024);
    private readonly ArrayBufferWriter<byte> _output = new(4096);
    private readonly byte[] _accept = new byte[WebSocketHandshake.AcceptLength];

    [GlobalSetup]
    public void Setup()
    {
        var encoder = new HPackEncoder();
        var block = new byte[4096];
        byte[] first = Encode(encoder, block);
        _warmBlock = Encode(encoder, block);
        _decoder = new HPackDecoder();
        _head.Reset(trailers: false);
        Http2RequestHead.Sink sink = _head.AsSink();
        _decoder.Decode(first, endHeaders: true, ref sink);
    }

    private static byte[] Encode(HPackEncoder encoder, byte[] block)
    {
        encoder.TryBeginHeaderBlock(block, out int length);
        foreach (var (name, value) in s_connect)
        {
            encoder.TryEncode(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), HPackIndexing.Auto, block.AsSpan(length), out int written);
            length += written;
        }
        return block.AsSpan(0, length).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup() => _decoder.Dispose();

    [Benchmark]
    public int ExtendedConnectToHttp11Upgrade()
    {
        _head.Reset(trailers: false);
        Http2RequestHead.Sink sink = _head.AsSink();
        _decoder.Decode(_warmBlock, endHeaders: true, ref sink);
        _head.Complete(endStream: false);
        _output.ResetWrittenCount();
        _head.WriteTo(_output);
        return _output.WrittenCount;
    }

    [Benchmark]
    public bool ComputeAccept() => WebSocketHandshake.TryComputeAccept("dGhlIHNhbXBsZSBub25jZQ=="u8, _accept);
}
