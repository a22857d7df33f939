using System.Buffers;
using System.Text;
using Proxy.Http;
using Proxy.Http2.Server;

namespace Proxy.Core.Tests.Http2.Server;

/// <summary>RFC 8441 extended CONNECT, translated to the HTTP/1.1 upgrade the bridge runs.</summary>
public sealed class Http2ExtendedConnectTests
{
    // The request-head tests' helpers: feed decoded fields, then render the HTTP/1.1 head the bridge reads.
    private static Http2RequestHead Feed(bool endStream, params (string Name, string Value)[] fields)
        => Http2RequestHeadTests.Feed(endStream, fields);

    private static string Http11(Http2RequestHead head) => Http2RequestHeadTests.Http11(head);

    private static readonly (string, string)[] s_connect =
        [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "chat.test"), (":path", "/ws?room=1")];

    [Fact]
    public void WriteTo_WebSocketConnect_GetUpgradeWithOurKeyAndNoChunking()
    {
        var head = Feed(endStream: false, [.. s_connect, ("sec-websocket-version", "13"), ("sec-websocket-key", "client-key"), ("origin", "https://a")]);

        Assert.Equal(Http2RequestError.None, head.Error);
        Assert.True(head.IsExtendedConnect);
        Assert.True(head.IsWebSocket);
        Assert.False(head.IsConnect);
        Assert.False(head.Chunked);
        string key = Encoding.ASCII.GetString(head.WebSocketKey);
        Assert.Equal(16, Convert.FromBase64String(key).Length);
        Assert.Equal("GET /ws?room=1 HTTP/1.1\r\nhost: chat.test\r\nsec-websocket-version: 13\r\norigin: https://a\r\n"
            + $"connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: {key}\r\n\r\n", Http11(head));
    }

    [Fact]
    public void Complete_TwoRequests_FreshKeyEach()
    {
        var head = Feed(endStream: false, s_connect);
        string first = Encoding.ASCII.GetString(head.WebSocketKey);
        head.Reset(trailers: false);
        foreach (var (name, value) in s_connect)
        {
            head.OnField(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value));
        }
        head.Complete(endStream: false);

        Assert.NotEqual(first, Encoding.ASCII.GetString(head.WebSocketKey));
    }

    [Fact]
    public void WriteTo_OtherProtocol_UpgradeWithoutWebSocketKey()
    {
        var head = Feed(endStream: false, (":method", "CONNECT"), (":protocol", "connect-udp"), (":scheme", "https"),
            (":authority", "a.test"), (":path", "/x"));

        Assert.Equal(Http2RequestError.None, head.Error);
        Assert.False(head.IsWebSocket);
        Assert.Equal("GET /x HTTP/1.1\r\nhost: a.test\r\nconnection: upgrade\r\nupgrade: connect-udp\r\n\r\n", Http11(head));
    }

    [Theory]
    [InlineData(":path")]
    [InlineData(":scheme")]
    [InlineData(":authority")]
    public void Complete_MissingPseudoHeader_MissingPseudo(string missing)
    {
        var head = Feed(endStream: false, [.. s_connect.Where(f => f.Item1 != missing)]);

        Assert.Equal(Http2RequestError.MissingPseudo, head.Error);
    }

    [Fact]
    public void Complete_ProtocolOnGet_UnknownPseudo()
    {
        var head = Feed(endStream: true, (":method", "GET"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "a"), (":path", "/"));

        Assert.Equal(Http2RequestError.UnknownPseudo, head.Error);
    }

    [Fact]
    public void Complete_EndStreamOnHeaders_Error()
    {
        var head = Feed(endStream: true, s_connect);

        Assert.NotEqual(Http2RequestError.None, head.Error);
    }

    [Fact]
    public void Complete_PlainConnect_StillAuthorityOnly()
    {
        var head = Feed(endStream: false, (":method", "CONNECT"), (":authority", "db.test:5432"), (":path", "/"));

        Assert.Equal(Http2RequestError.MissingPseudo, head.Error);
    }
}
