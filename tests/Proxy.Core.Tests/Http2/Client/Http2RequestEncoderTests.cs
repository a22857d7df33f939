using System.Text;
using Proxy.Http;
using Proxy.Http2.Client;
using Proxy.Http2.HPack;

namespace Proxy.Core.Tests.Http2.Client;

/// <summary>The request head as an HTTP/2 field block, and a response block back into a <see cref="ResponseHead"/>.</summary>
public class Http2RequestEncoderTests
{
    private sealed class Collect : IHeaderSink
    {
        public List<(string Name, string Value)> Fields { get; } = [];

        public void OnStaticIndexedHeader(int index)
            => Fields.Add((Encoding.ASCII.GetString(HPackStaticTable.Name(index)), Encoding.ASCII.GetString(HPackStaticTable.Value(index))));

        public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed)
            => Fields.Add((Encoding.ASCII.GetString(HPackStaticTable.Name(index)), Encoding.ASCII.GetString(value)));

        public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed)
            => Fields.Add((Encoding.ASCII.GetString(name), Encoding.ASCII.GetString(value)));
    }

    private static RequestHead Head(string method, string target, long contentLength = -1)
    {
        var head = new RequestHead();
        byte[] m = Encoding.ASCII.GetBytes(method), t = Encoding.ASCII.GetBytes(target);
        Span<byte> buffer = head.PrepareBuffer(m.Length + t.Length);
        m.CopyTo(buffer);
        t.CopyTo(buffer[m.Length..]);
        head.MethodStart = 0;
        head.MethodLength = m.Length;
        head.TargetStart = m.Length;
        head.TargetLength = t.Length;
        head.ContentLength = contentLength;
        return head;
    }

    private static List<(string Name, string Value)> Encode(HPackEncoder encoder, HPackDecoder decoder, RequestHead head, string lines,
        bool contentLength = false, bool teTrailers = false)
    {
        byte[] fieldLines = Encoding.ASCII.GetBytes(lines);
        var block = new byte[Http2RequestEncoder.MaxBlockLength(head, 16, fieldLines.Length)];
        Assert.True(Http2RequestEncoder.TryEncode(encoder, head, "http"u8, "api.test:8080"u8, fieldLines, contentLength, teTrailers, block, out int written));
        var sink = new Collect();
        Assert.Equal(HPackError.None, decoder.Decode(block.AsSpan(0, written), endHeaders: true, ref sink));
        return sink.Fields;
    }

    [Fact]
    public void TryEncode_Head_PseudoHeadersFirstThenLowercaseFieldsWithoutConnectionFields()
    {
        var fields = Encode(new HPackEncoder(), new HPackDecoder(), Head("POST", "/greet.Greeter/SayHello?x=1", 5),
            "Host: api.test:8080\r\nContent-Type: application/grpc\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\n"
            + "Upgrade: h2c\r\nTE: gzip\r\nX-Forwarded-For: 10.0.0.1\r\n", contentLength: true, teTrailers: true);

        Assert.Equal(
            [(":method", "POST"), (":scheme", "http"), (":authority", "api.test:8080"), (":path", "/greet.Greeter/SayHello?x=1"),
             ("content-type", "application/grpc"), ("x-forwarded-for", "10.0.0.1"), ("te", "trailers"), ("content-length", "5")],
            fields);
    }

    [Fact]
    public void TryEncode_WithProtocol_ExtendedConnectWithoutWebSocketKey()
    {
        var head = Head("GET", "/ws?room=1");
        byte[] lines = "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nUpgrade: websocket\r\nOrigin: http://a\r\n"u8.ToArray();
        var block = new byte[Http2RequestEncoder.MaxBlockLength(head, 16, lines.Length)];

        Assert.True(Http2RequestEncoder.TryEncode(new HPackEncoder(), head, "http"u8, "api.test"u8, lines, false, false, block, out int written,
            "websocket"u8));
        var sink = new Collect();
        Assert.Equal(HPackError.None, new HPackDecoder().Decode(block.AsSpan(0, written), endHeaders: true, ref sink));

        // RFC 8441 section 4 and 5: CONNECT + :protocol, :scheme and :path kept, no key (nor the upgrade field).
        Assert.Equal(
            [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":authority", "api.test"), (":path", "/ws?room=1"),
             ("sec-websocket-version", "13"), ("origin", "http://a")],
            sink.Fields);
    }

    [Fact]
    public void TryEncode_SameHeadTwice_SecondBlockUsesDynamicTableAndIsSmaller()
    {
        var encoder = new HPackEncoder();
        var decoder = new HPackDecoder();
        var head = Head("GET", "/a");
        byte[] lines = "user-agent: test-agent/1.0\r\nx-custom: some-longer-value-0123456789\r\n"u8.ToArray();
        var block = new byte[512];
        Assert.True(Http2RequestEncoder.TryEncode(encoder, head, "https"u8, "h"u8, lines, false, false, block, out int first));
        var sink = new Collect();
        decoder.Decode(block.AsSpan(0, first), true, ref sink);
        Assert.True(Http2RequestEncoder.TryEncode(encoder, head, "https"u8, "h"u8, lines, false, false, block, out int second));
        var again = new Collect();
        Assert.Equal(HPackError.None, decoder.Decode(block.AsSpan(0, second), true, ref again));

        Assert.True(second < first / 2, $"second block {second} bytes, first {first}");
        Assert.Equal(sink.Fields, again.Fields);
    }

    [Fact]
    public void ResponseFieldSink_StatusAndFields_FillResponseHeadWithFramingFlagged()
    {
        var encoder = new HPackEncoder();
        var block = new byte[256];
        int used = 0;
        foreach (var (name, value) in new[] { (":status", "404"), ("content-length", "12"), ("grpc-status", "5"), ("connection", "close") })
        {
            Assert.True(encoder.TryEncode(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), HPackIndexing.Auto, block.AsSpan(used), out int n));
            used += n;
        }
        var head = new ResponseHead();
        var sink = new ResponseFieldSink(head, trailers: false);

        Assert.Equal(HPackError.None, new HPackDecoder().Decode(block.AsSpan(0, used), true, ref sink));

        Assert.False(sink.Malformed);
        Assert.Equal(404, head.StatusCode);
        Assert.Equal(12, head.ContentLength);
        Assert.Equal(3, head.FieldCount);
        Assert.True(head.Fields[0].HopByHop);  // content-length: the forwarder frames the body itself
        Assert.False(head.Fields[1].HopByHop);
        Assert.True(head.Fields[2].HopByHop);
        Assert.True(head.TryGetHeader("grpc-status"u8, out var status) && status.SequenceEqual("5"u8));
    }

    [Theory]
    [InlineData(":path", "/x", false)]
    [InlineData(":status", "20", false)]
    [InlineData(":status", "200", true)]
    public void ResponseFieldSink_PseudoHeaders_OnlyStatusInHeadAndNeverInTrailers(string name, string value, bool trailers)
    {
        var sink = new ResponseFieldSink(new ResponseHead(), trailers);
        sink.OnHeader(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), false);
        Assert.True(sink.Malformed);
    }
}
