using System.Buffers;
using Proxy.Http;
using Proxy.Http1;
using static Proxy.Core.Tests.Http1.Http1TestBuffers;

namespace Proxy.Core.Tests.Http1;

public class Http1ResponseReaderTests
{
    private const string Typical =
        "HTTP/1.1 200 OK\r\n" +
        "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n" +
        "Server: upstream\r\n" +
        "Content-Type: application/json\r\n" +
        "Content-Length: 17\r\n" +
        "Connection: keep-alive, X-Hop\r\n" +
        "X-Hop: 1\r\n" +
        "\r\n";

    private static (HeadStatus Status, RejectReason Reason, long Consumed, ResponseHead Head) Read(string response,
        int maxHeadBytes = 8192)
    {
        ResponseHead head = new();
        ReadOnlySequence<byte> buffer = new(Bytes(response));
        HeadStatus status = Http1ResponseReader.TryRead(buffer, head, maxHeadBytes, out SequencePosition consumed, out RejectReason reason);
        return (status, reason, Offset(buffer, consumed), head);
    }

    [Fact]
    public void TryRead_TypicalResponse_FillsFields()
    {
        var (status, reason, consumed, head) = Read(Typical + "{\"ok\":true}");

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(Typical.Length, consumed);
        Assert.Equal(HttpVersion.Http11, head.Version);
        Assert.Equal(200, head.StatusCode);
        Assert.Equal("OK", Text(head.Reason));
        Assert.Equal(17, head.ContentLength);
        Assert.Equal(ConnectionOptions.KeepAlive, head.Connection);
        Assert.Equal(6, head.FieldCount);
        Assert.Equal(KnownHeader.Date, head.Fields[0].Known);
        Assert.Equal(KnownHeader.Server, head.Fields[1].Known);
        Assert.Equal(KnownHeader.ContentType, head.Fields[2].Known);
        bool[] hop = [false, false, false, true, true, true];
        for (int i = 0; i < hop.Length; i++)
        {
            Assert.Equal(hop[i], head.Fields[i].HopByHop);
        }
    }

    [Theory]
    [InlineData("HTTP/1.1 204 No Content\r\n\r\n", 204, "No Content", HttpVersion.Http11)]
    [InlineData("HTTP/1.1 200\r\n\r\n", 200, "", HttpVersion.Http11)]
    [InlineData("HTTP/1.1 200 \r\n\r\n", 200, "", HttpVersion.Http11)]
    [InlineData("HTTP/1.0 404 Not\tFound \u00e9\r\n\r\n", 404, "Not\tFound \u00e9", HttpVersion.Http10)]
    [InlineData("HTTP/1.2 999 x\r\n\r\n", 999, "x", HttpVersion.Http11)]
    [InlineData("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 101, "Switching Protocols", HttpVersion.Http11)]
    public void TryRead_StatusLine_Parsed(string response, int code, string reasonPhrase, object version)
    {
        var (status, reason, _, head) = Read(response);

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(code, head.StatusCode);
        Assert.Equal(reasonPhrase, Text(head.Reason));
        Assert.Equal((HttpVersion)version, head.Version);
    }

    [Fact]
    public void TryRead_Chunked_SetsChunked()
    {
        var (status, _, _, head) = Read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.True(head.Chunked);
        Assert.Equal(-1, head.ContentLength);
    }

    [Fact]
    public void TryRead_Upgrade_SetsFlags()
    {
        var (_, _, _, head) = Read("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");

        Assert.True(head.HasUpgradeField);
        Assert.Equal(ConnectionOptions.Upgrade, head.Connection);
    }

    [Theory]
    [InlineData("HTTP/1.1 20 OK\r\n\r\n")]
    [InlineData("HTTP/1.1 2000 OK\r\n\r\n")]
    [InlineData("HTTP/1.1 099 OK\r\n\r\n")]
    [InlineData("HTTP/1.1 abc OK\r\n\r\n")]
    [InlineData("HTTP/2.0 200 OK\r\n\r\n")]
    [InlineData("HTTP/1.x 200 OK\r\n\r\n")]
    [InlineData("http/1.1 200 OK\r\n\r\n")]
    [InlineData("HTTP/1.1  200 OK\r\n\r\n")]
    [InlineData("HTTP/1.1 200OK\r\n\r\n")]
    [InlineData("HTTP/1.1 200 O\u0001K\r\n\r\n")]
    [InlineData("HTTP/1.1 200 O\rK\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\nX: y\r\n\r\n")]
    [InlineData("\r\nHTTP/1.1 200 OK\r\n\r\n")]
    [InlineData("ICY 200 OK\r\n\r\n")]
    public void TryRead_BadStatusLine_IsInvalidStatusLine(string response)
    {
        var (status, reason, _, _) = Read(response);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.InvalidStatusLine, reason);
        Assert.Equal(502, reason.StatusCode());
    }

    [Theory]
    [InlineData("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n")]
    [InlineData("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nX : y\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nX: y\r\n folded\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\nX: y\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\n: y\r\n\r\n")]
    public void TryRead_BadFields_IsInvalidResponse(string response)
    {
        var (status, reason, _, _) = Read(response);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.InvalidResponse, reason);
    }

    [Fact]
    public void TryRead_OverMaxHeadBytesWithoutEnd_IsInvalidResponse()
    {
        var (status, reason, _, _) = Read("HTTP/1.1 200 OK\r\nX: " + new string('a', 100), maxHeadBytes: 64);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.InvalidResponse, reason);
    }

    [Fact]
    public void TryRead_CompleteButOverMaxHeadBytes_IsInvalidResponse()
    {
        var (status, reason, _, _) = Read("HTTP/1.1 200 OK\r\nX: " + new string('a', 100) + "\r\n\r\n", maxHeadBytes: 64);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.InvalidResponse, reason);
    }

    [Fact]
    public void TryRead_ExactlyMaxHeadBytes_IsAccepted()
    {
        const string response = "HTTP/1.1 200 OK\r\nX: y\r\n\r\n";
        var (status, _, _, _) = Read(response + "body", maxHeadBytes: response.Length);

        Assert.Equal(HeadStatus.Complete, status);
    }

    [Fact]
    public void TryRead_EveryPrefix_IsIncomplete()
    {
        byte[] data = Bytes(Typical);
        ResponseHead head = new();
        for (int length = 0; length < data.Length; length++)
        {
            HeadStatus status = Http1ResponseReader.TryRead(new ReadOnlySequence<byte>(data, 0, length), head, 8192, out _, out _);
            Assert.Equal(HeadStatus.Incomplete, status);
        }
    }

    [Fact]
    public void TryRead_EverySplitPoint_ParsesIdentically()
    {
        byte[] data = Bytes(Typical + "{\"ok\":true}");
        string expected = Describe(Read(Typical).Head);
        ResponseHead head = new();
        for (int cut = 0; cut <= data.Length; cut++)
        {
            ReadOnlySequence<byte> buffer = Split(data, cut);
            HeadStatus status = Http1ResponseReader.TryRead(buffer, head, 8192, out SequencePosition consumed, out _);
            Assert.Equal(HeadStatus.Complete, status);
            Assert.Equal(Typical.Length, Offset(buffer, consumed));
            Assert.Equal(expected, Describe(head));
        }
    }

    [Fact]
    public void TryRead_WarmHead_AllocatesNothing()
    {
        ReadOnlySequence<byte> buffer = Split(Bytes(Typical), 40);
        ResponseHead head = new();

        long allocated = SteadyStateAllocation.BestOfRounds(() => Http1ResponseReader.TryRead(buffer, head, 8192, out _, out _), iterations: 100);
        Assert.Equal(0, allocated);
    }
}
