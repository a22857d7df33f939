using System.Buffers;
using System.Text;
using Proxy.Http2.HPack;
using Proxy.Http2.Server;

namespace Proxy.Core.Tests.Http2.Server;

public sealed class Http2RequestHeadTests
{
    private static readonly (string, string)[] s_get =
        [(":method", "GET"), (":scheme", "https"), (":authority", "example.test"), (":path", "/a?b=1")];

    internal static Http2RequestHead Feed(bool endStream, params (string Name, string Value)[] fields)
    {
        var head = new Http2RequestHead(32 * 1024);
        head.Reset(trailers: false);
        foreach (var (name, value) in fields)
        {
            head.OnField(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value));
        }
        head.Complete(endStream);
        return head;
    }

    internal static string Http11(Http2RequestHead head)
    {
        var output = new ArrayBufferWriter<byte>();
        head.WriteTo(output);
        Assert.Equal(head.Http1Length, output.WrittenCount);
        return Encoding.ASCII.GetString(output.WrittenSpan);
    }

    [Fact]
    public void WriteTo_GetWithoutBody_RequestLineHostAndFields()
    {
        var head = Feed(endStream: true, [.. s_get, ("accept", "*/*"), ("user-agent", "t/1")]);

        Assert.Equal(Http2RequestError.None, head.Error);
        Assert.Equal("GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\naccept: */*\r\nuser-agent: t/1\r\n\r\n", Http11(head));
    }

    [Fact]
    public void WriteTo_CookieCrumbs_JoinedWithSemicolon()
    {
        var head = Feed(endStream: true, [.. s_get, ("cookie", "a=1"), ("accept", "x"), ("cookie", "b=2")]);

        Assert.Equal("GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\naccept: x\r\ncookie: a=1; b=2\r\n\r\n", Http11(head));
    }

    [Fact]
    public void WriteTo_HostFieldBesideAuthority_AuthorityWins()
    {
        var head = Feed(endStream: true, [.. s_get, ("host", "other.test")]);

        Assert.Equal("GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\n\r\n", Http11(head));
    }

    [Fact]
    public void WriteTo_NoAuthority_HostFieldKept()
    {
        var head = Feed(endStream: true, (":method", "GET"), (":scheme", "http"), (":path", "/"), ("host", "h.test"));

        Assert.Equal("GET / HTTP/1.1\r\nhost: h.test\r\n\r\n", Http11(head));
    }

    [Fact]
    public void WriteTo_BodyWithoutLength_Chunked()
    {
        var head = Feed(endStream: false, [.. s_get]);

        Assert.True(head.Chunked);
        Assert.EndsWith("transfer-encoding: chunked\r\n\r\n", Http11(head), StringComparison.Ordinal);
    }

    [Fact]
    public void WriteTo_BodyWithLength_KeepsContentLength()
    {
        var head = Feed(endStream: false, [.. s_get, ("content-length", "12")]);

        Assert.False(head.Chunked);
        Assert.Equal(12, head.ContentLength);
        Assert.EndsWith("content-length: 12\r\n\r\n", Http11(head), StringComparison.Ordinal);
    }

    [Fact]
    public void Complete_TeTrailers_AcceptedAndKeptForTheForwarder()
    {
        // The forwarder reads it (te: trailers to HTTP/2 upstreams); the HTTP/1.1 upstream writer drops it as hop-by-hop.
        var head = Feed(endStream: true, [.. s_get, ("te", "trailers")]);

        Assert.Equal(Http2RequestError.None, head.Error);
        Assert.Contains("te: trailers\r\n", Http11(head), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("X-Upper", "1", nameof(Http2RequestError.UppercaseName))]
    [InlineData("bad name", "1", nameof(Http2RequestError.InvalidName))]
    [InlineData("connection", "close", nameof(Http2RequestError.ConnectionSpecific))]
    [InlineData("keep-alive", "5", nameof(Http2RequestError.ConnectionSpecific))]
    [InlineData("proxy-connection", "x", nameof(Http2RequestError.ConnectionSpecific))]
    [InlineData("upgrade", "h2c", nameof(Http2RequestError.ConnectionSpecific))]
    [InlineData("transfer-encoding", "chunked", nameof(Http2RequestError.ConnectionSpecific))]
    [InlineData("te", "gzip", nameof(Http2RequestError.InvalidTe))]
    [InlineData("x-a", "1\n2", nameof(Http2RequestError.InvalidValue))]
    [InlineData("x-a", "1\0", nameof(Http2RequestError.InvalidValue))]
    [InlineData("x-a", " 1", nameof(Http2RequestError.InvalidValue))]
    [InlineData("x-a", "1\t", nameof(Http2RequestError.InvalidValue))]
    [InlineData("content-length", "abc", nameof(Http2RequestError.InvalidContentLength))]
    [InlineData(":status", "200", nameof(Http2RequestError.PseudoAfterRegular))]
    public void Complete_InvalidField_Error(string name, string value, string expected)
    {
        var head = Feed(endStream: true, [.. s_get, ("accept", "*/*"), (name, value)]);

        Assert.Equal(expected, head.Error.ToString());
    }

    [Theory]
    [InlineData(":status", nameof(Http2RequestError.UnknownPseudo))]
    [InlineData(":protocol", nameof(Http2RequestError.UnknownPseudo))]
    [InlineData(":path", nameof(Http2RequestError.DuplicatePseudo))]
    public void Complete_BadPseudoHeader_Error(string name, string expected)
    {
        var head = Feed(endStream: true, [.. s_get, (name, "/x")]);

        Assert.Equal(expected, head.Error.ToString());
    }

    [Fact]
    public void Complete_PathWithSpace_InvalidPseudoValue()
    {
        var head = Feed(endStream: true, (":method", "GET"), (":scheme", "http"), (":path", "/a b"));

        Assert.Equal(Http2RequestError.InvalidPseudoValue, head.Error);
    }

    [Theory]
    [InlineData(":method")]
    [InlineData(":scheme")]
    [InlineData(":path")]
    public void Complete_MissingPseudoHeader_Error(string missing)
    {
        var head = Feed(endStream: true, [.. s_get.Where(f => f.Item1 != missing)]);

        Assert.Equal(Http2RequestError.MissingPseudo, head.Error);
    }

    [Fact]
    public void Complete_ContentLengthWithEndStream_Error()
    {
        var head = Feed(endStream: true, [.. s_get, ("content-length", "3")]);

        Assert.Equal(Http2RequestError.InvalidContentLength, head.Error);
    }

    [Fact]
    public void Complete_ConnectWithAuthorityOnly_Accepted()
    {
        var head = Feed(endStream: false, (":method", "CONNECT"), (":authority", "db.test:5432"));

        Assert.Equal(Http2RequestError.None, head.Error);
        Assert.StartsWith("CONNECT db.test:5432 HTTP/1.1\r\n", Http11(head), StringComparison.Ordinal);
    }

    [Fact]
    public void Trailers_PseudoHeader_Error()
    {
        var head = new Http2RequestHead(32 * 1024);
        head.Reset(trailers: true);
        head.OnField(":path"u8, "/"u8);

        Assert.Equal(Http2RequestError.PseudoInTrailers, head.Error);
    }

    [Fact]
    public void Convert_WarmBlock_AllocatesNothing()
    {
        var encoder = new HPackEncoder();
        var scratch = new byte[4096];
        byte[] Encode()
        {
            encoder.TryBeginHeaderBlock(scratch, out int length);
            foreach (var (name, value) in (ReadOnlySpan<(string, string)>)[.. s_get, ("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2"), ("user-agent", "bench")])
            {
                encoder.TryEncode(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), HPackIndexing.Auto, scratch.AsSpan(length), out int written);
                length += written;
            }
            return scratch.AsSpan(0, length).ToArray();
        }
        byte[] first = Encode();
        byte[] warm = Encode();
        using var decoder = new HPackDecoder();
        var head = new Http2RequestHead(32 * 1024);
        var output = new ArrayBufferWriter<byte>(1024);
        HPackError error = HPackError.None;
        void Convert(byte[] block)
        {
            head.Reset(trailers: false);
            Http2RequestHead.Sink sink = head.AsSink();
            error |= decoder.Decode(block, endHeaders: true, ref sink);
            head.Complete(endStream: true);
            output.ResetWrittenCount();
            head.WriteTo(output);
        }
        Convert(first);

        long allocated = SteadyStateAllocation.BestOfRounds(() => Convert(warm), iterations: 100);

        Assert.Equal(0, allocated);
        Assert.Equal(HPackError.None, error);
        Assert.Contains("cookie: a=1; b=2", Encoding.ASCII.GetString(output.WrittenSpan), StringComparison.Ordinal);
    }
}
