using System.Buffers;
using Proxy.Http;
using Proxy.Http1;
using static Proxy.Core.Tests.Http1.Http1TestBuffers;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Core.Tests.Http1;

public class Http1RequestReaderTests
{
    private const string Browser =
        "GET /products/list?page=2&sort=price HTTP/1.1\r\n" +
        "Host: shop.example.com\r\n" +
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\n" +
        "Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n" +
        "Accept-Language: en-US,en;q=0.5\r\n" +
        "Accept-Encoding: gzip, deflate, br\r\n" +
        "Connection: keep-alive, X-Private\r\n" +
        "X-Private: secret\r\n" +
        "Cookie: session=abc123; theme=dark\r\n" +
        "Content-Length: 0\r\n" +
        "\r\n";

    private static readonly HttpLimits Small = new() { MaxRequestLine = 64, MaxHeaderBytes = 128, MaxHeaders = 4 };

    // ---- valid requests ----

    [Fact]
    public void TryRead_BrowserRequest_FillsEveryField()
    {
        var (status, reason, consumed, head) = Read(Browser);

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(Browser.Length, consumed);
        Assert.Equal(HttpMethod.Get, head.Method);
        Assert.Equal("GET", Text(head.MethodBytes));
        Assert.Equal("/products/list?page=2&sort=price", Text(head.Target));
        Assert.Equal("/products/list", Text(head.Path));
        Assert.Equal("page=2&sort=price", Text(head.Query));
        Assert.Equal(HttpVersion.Http11, head.Version);
        Assert.Equal(9, head.FieldCount);
        Assert.Equal("shop.example.com", Text(head.Host));
        Assert.Equal(KnownHeader.Host, head.Fields[head.HostIndex].Known);
        Assert.Equal(0, head.ContentLength);
        Assert.False(head.Chunked);
        Assert.Equal(ConnectionOptions.KeepAlive, head.Connection);
        Assert.True(head.KeepAlive);
        Assert.Equal(Browser, Text(head.Raw));
    }

    [Fact]
    public void TryRead_HopByHopFields_AreMarkedIncludingConnectionNominated()
    {
        var (_, _, _, head) = Read(Browser);

        string[] hop = ["Connection", "X-Private", "Content-Length"];
        for (int i = 0; i < head.FieldCount; i++)
        {
            Assert.Equal(hop.Contains(Text(head.Name(i))), head.Fields[i].HopByHop);
        }
    }

    [Fact]
    public void TryRead_ConnectionNamesFieldBeforeIt_MarksItHopByHop()
    {
        var (status, _, _, head) = Read("GET / HTTP/1.1\r\nX-A: 1\r\nHost: a\r\nconnection: x-a, host\r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.True(head.Fields[0].HopByHop);
        // Host is never nominated away: it is the routing key.
        Assert.False(head.Fields[1].HopByHop);
    }

    [Theory]
    [InlineData("Host", KnownHeader.Host, false)]
    [InlineData("Content-Type", KnownHeader.ContentType, false)]
    [InlineData("Date", KnownHeader.Date, false)]
    [InlineData("Server", KnownHeader.Server, false)]
    [InlineData("X-Forwarded-For", KnownHeader.XForwardedFor, false)]
    [InlineData("x-forwarded-proto", KnownHeader.XForwardedProto, false)]
    [InlineData("X-FORWARDED-HOST", KnownHeader.XForwardedHost, false)]
    [InlineData("Keep-Alive", KnownHeader.KeepAlive, true)]
    [InlineData("Proxy-Connection", KnownHeader.ProxyConnection, true)]
    [InlineData("TE", KnownHeader.TE, true)]
    [InlineData("Trailer", KnownHeader.Trailer, true)]
    [InlineData("Upgrade", KnownHeader.Upgrade, true)]
    [InlineData("Expect", KnownHeader.Expect, true)]
    [InlineData("Connection", KnownHeader.Connection, true)]
    [InlineData("X-Custom", KnownHeader.None, false)]
    [InlineData("Hosts", KnownHeader.None, false)]
    public void TryRead_KnownHeader_ResolvedAndMarked(string name, object expectedKnown, bool hopByHop)
    {
        KnownHeader known = (KnownHeader)expectedKnown;
        string extra = name.Equals("Host", StringComparison.OrdinalIgnoreCase) ? "" : "Host: a\r\n";
        var (status, reason, _, head) = Read($"GET / HTTP/1.1\r\n{extra}{name}: v\r\n\r\n");

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        HeaderField field = head.Fields[head.FieldCount - 1];
        Assert.Equal(known, field.Known);
        Assert.Equal(hopByHop, field.HopByHop);
    }

    [Theory]
    [InlineData("GET", HttpMethod.Get)]
    [InlineData("HEAD", HttpMethod.Head)]
    [InlineData("POST", HttpMethod.Post)]
    [InlineData("PUT", HttpMethod.Put)]
    [InlineData("DELETE", HttpMethod.Delete)]
    [InlineData("PATCH", HttpMethod.Patch)]
    [InlineData("TRACE", HttpMethod.Trace)]
    [InlineData("OPTIONS", HttpMethod.Options)]
    [InlineData("PROPFIND", HttpMethod.Custom)]
    [InlineData("get", HttpMethod.Custom)]
    [InlineData("M-SEARCH", HttpMethod.Custom)]
    // Enum, not HttpMethod: the engine's enums are internal, and a public test method cannot take an internal type.
    public void TryRead_Method_MapsToEnum(string method, Enum expected)
    {
        var (status, _, _, head) = Read($"{method} / HTTP/1.1\r\nHost: a\r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal((HttpMethod)expected, head.Method);
        Assert.Equal(method, Text(head.MethodBytes));
    }

    [Fact]
    public void TryRead_Http10WithoutHost_IsAccepted()
    {
        var (status, _, consumed, head) = Read("GET / HTTP/1.0\r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(18, consumed);
        Assert.Equal(HttpVersion.Http10, head.Version);
        Assert.Equal(-1, head.HostIndex);
        Assert.False(head.KeepAlive);
    }

    [Fact]
    public void TryRead_Http10KeepAlive_SetsFlag()
    {
        var (_, _, _, head) = Read("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");

        Assert.True(head.KeepAlive);
    }

    [Fact]
    public void TryRead_ConnectionList_SetsAllFlags()
    {
        var (_, _, _, head) = Read("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE ,, keep-alive\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");

        Assert.Equal(ConnectionOptions.Close | ConnectionOptions.KeepAlive | ConnectionOptions.Upgrade, head.Connection);
        Assert.True(head.HasUpgradeField);
        Assert.True(head.IsUpgrade);
        Assert.False(head.KeepAlive);
    }

    [Theory]
    [InlineData("HTTP/1.1", "100-continue", true)]
    [InlineData("HTTP/1.1", "100-Continue", true)]
    [InlineData("HTTP/1.1", "something-else", false)]
    [InlineData("HTTP/1.0", "100-continue", false)]
    public void TryRead_Expect_SetsExpectContinueOnlyFor11(string version, string expect, bool expected)
    {
        var (status, _, _, head) = Read($"POST / {version}\r\nHost: a\r\nExpect: {expect}\r\nContent-Length: 3\r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(expected, head.ExpectContinue);
    }

    [Theory]
    [InlineData("Content-Length: 42\r\n", 42)]
    [InlineData("Content-Length: 5, 5\r\n", 5)]
    [InlineData("Content-Length: 5\r\nContent-Length: 5\r\n", 5)]
    [InlineData("Content-Length: 007\r\n", 7)]
    [InlineData("Content-Length: 9223372036854775807\r\n", long.MaxValue)]
    [InlineData("", -1)]
    public void TryRead_ContentLength_Parsed(string fields, long expected)
    {
        var (status, reason, _, head) = Read($"POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(expected, head.ContentLength);
    }

    [Theory]
    [InlineData("Transfer-Encoding: chunked\r\n")]
    [InlineData("Transfer-Encoding: CHUNKED \r\n")]
    public void TryRead_Chunked_SetsChunked(string fields)
    {
        var (status, _, _, head) = Read($"POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.True(head.Chunked);
        Assert.Equal(-1, head.ContentLength);
        Assert.True(head.HasBody);
    }

    [Fact]
    public void TryRead_ValueWithOwsAndObsText_IsTrimmedAndKept()
    {
        var (status, _, _, head) = Read("GET / HTTP/1.1\r\nHost: a\r\nX-A: \t caf\u00e9 au\tlait \t\r\nX-Empty:\r\nX-Spaces:   \r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal("caf\u00e9 au\tlait", Text(head.Value(1)));
        Assert.Equal("", Text(head.Value(2)));
        Assert.Equal("", Text(head.Value(3)));
    }

    [Fact]
    public void TryRead_LeadingEmptyLines_AreSkippedAndConsumed()
    {
        const string request = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        var (status, _, consumed, head) = Read(request);

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(request.Length, consumed);
        Assert.Equal(request[4..], Text(head.Raw));
    }

    [Fact]
    public void TryRead_AbsoluteForm_TargetPointsAtPathAndQuery()
    {
        var (status, reason, _, head) = Read("GET http://Example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal("/a/b?q=1", Text(head.Target));
        Assert.Equal("/a/b", Text(head.Path));
        Assert.Equal("q=1", Text(head.Query));
    }

    /// <summary>RFC 9110 section 4.2: the scheme's default port is the same origin as no port.</summary>
    [Theory]
    [InlineData("GET http://a.com:80/x HTTP/1.1\r\nHost: a.com\r\n\r\n")]
    [InlineData("GET http://a.com/x HTTP/1.1\r\nHost: A.com:80\r\n\r\n")]
    [InlineData("GET https://a.com:443/x HTTP/1.1\r\nHost: a.com\r\n\r\n")]
    [InlineData("GET https://a.com/x HTTP/1.1\r\nHost: a.com:443\r\n\r\n")]
    [InlineData("GET http://[::1]:80/x HTTP/1.1\r\nHost: [::1]\r\n\r\n")]
    public void TryRead_AbsoluteFormWithDefaultPort_AgreesWithHostWithout(string request)
    {
        var (status, reason, _, head) = Read(request);

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal("/x", Text(head.Target));
    }

    [Fact]
    public void TryRead_AsteriskFormWithOptions_IsAccepted()
    {
        var (status, _, _, head) = Read("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal("*", Text(head.Target));
    }

    [Theory]
    [InlineData("example.com:443")]
    [InlineData("[::1]:8443")]
    [InlineData("10.0.0.1:80")]
    public void TryRead_ConnectAuthorityForm_IsAccepted(string authority)
    {
        var (status, reason, _, head) = Read($"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(HttpMethod.Connect, head.Method);
        Assert.Equal(authority, Text(head.Target));
    }

    [Theory]
    [InlineData("a")]
    [InlineData("example.com:8080")]
    [InlineData("[2001:db8::1]")]
    [InlineData("[2001:db8::1]:443")]
    [InlineData("xn--bcher-kva.example")]
    [InlineData("[fe80::1%25eth0]")]
    [InlineData("")]
    public void TryRead_ValidHost_IsAccepted(string host)
    {
        var (status, reason, _, _) = Read($"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
    }

    [Fact]
    public void TryRead_QueryWithDotSegments_IsAccepted()
    {
        var (status, _, _, _) = Read("GET /a/b.c/..d/.e?next=/x/../y HTTP/1.1\r\nHost: a\r\n\r\n");

        Assert.Equal(HeadStatus.Complete, status);
    }

    [Fact]
    public void TryRead_ManyFields_GrowsFieldArray()
    {
        string fields = string.Concat(Enumerable.Range(0, 80).Select(i => $"X-{i}: {i}\r\n"));
        var (status, _, _, head) = Read($"GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(81, head.FieldCount);
        Assert.Equal("79", Text(head.Value(80)));
    }

    [Fact]
    public void TryRead_ReusedHead_ResetsPreviousState()
    {
        RequestHead head = new();
        Read(new ReadOnlySequence<byte>(Bytes("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")), head);
        var (status, _, _) = Read(new ReadOnlySequence<byte>(Bytes("GET /y HTTP/1.0\r\n\r\n")), head);

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(Describe(Read("GET /y HTTP/1.0\r\n\r\n").Head), Describe(head));
    }

    // ---- framing across reads ----

    [Fact]
    public void TryRead_EveryPrefix_IsIncompleteAndConsumesNothing()
    {
        byte[] data = Bytes("\r\n" + Browser);
        RequestHead head = new();
        for (int length = 0; length < data.Length; length++)
        {
            ReadOnlySequence<byte> prefix = new(data, 0, length);
            var (status, reason, consumed) = Read(prefix, head);
            Assert.True(status == HeadStatus.Incomplete, $"prefix {length}: {status} {reason}");
            Assert.Equal(0, consumed);
        }
    }

    [Fact]
    public void TryRead_EveryPrefixSplitInTwo_IsIncomplete()
    {
        byte[] data = Bytes("GET /a HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n");
        RequestHead head = new();
        for (int length = 0; length < data.Length; length++)
        {
            for (int cut = 0; cut <= length; cut++)
            {
                var (status, _, consumed) = Read(Split(data[..length], cut), head);
                Assert.Equal(HeadStatus.Incomplete, status);
                Assert.Equal(0, consumed);
            }
        }
    }

    [Theory]
    [InlineData(Browser)]
    [InlineData("\r\n\r\nPOST http://a/b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")]
    [InlineData("GET / HTTP/1.0\r\n\r\n")]
    public void TryRead_EverySplitPoint_ParsesIdentically(string request)
    {
        byte[] data = Bytes(request + "NEXT");
        string expected = Describe(Read(request).Head);
        RequestHead head = new();
        for (int cut = 0; cut <= data.Length; cut++)
        {
            var (status, reason, consumed) = Read(Split(data, cut), head);
            Assert.True(status == HeadStatus.Complete, $"cut {cut}: {status} {reason}");
            Assert.Equal(request.Length, consumed);
            Assert.Equal(expected, Describe(head));
        }
        var (bStatus, _, bConsumed) = Read(BytePerSegment(data), head);
        Assert.Equal(HeadStatus.Complete, bStatus);
        Assert.Equal(request.Length, bConsumed);
        Assert.Equal(expected, Describe(head));
    }

    [Fact]
    public void TryRead_EverySplitPointOfInvalidHead_RejectsWithSameReason()
    {
        byte[] data = Bytes("GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n");
        RequestHead head = new();
        for (int cut = 0; cut <= data.Length; cut++)
        {
            var (status, reason, _) = Read(Split(data, cut), head);
            Assert.Equal(HeadStatus.Rejected, status);
            Assert.Equal(RejectReason.WhitespaceBeforeColon, reason);
        }
    }

    [Fact]
    public void TryRead_PipelinedHeads_ConsumesExactlyTheFirst()
    {
        const string first = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
        const string second = "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        ReadOnlySequence<byte> buffer = new(Bytes(first + second));
        RequestHead head = new();

        HeadStatus status = Http1RequestReader.TryRead(buffer, head, HttpLimits.Default, out SequencePosition consumed, out _);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(first.Length, Offset(buffer, consumed));
        Assert.Equal("/1", Text(head.Target));

        ReadOnlySequence<byte> rest = buffer.Slice(consumed);
        status = Http1RequestReader.TryRead(rest, head, HttpLimits.Default, out consumed, out _);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(second.Length, Offset(rest, consumed));
        Assert.Equal("/2", Text(head.Target));
    }

    // ---- rejections ----

    [Theory]
    // framing and line endings
    [InlineData("GET / HTTP/1.1\nHost: a\r\n\r\n", RejectReason.BareLineFeed)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\n\r\n", RejectReason.BareLineFeed)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: b\n\n\r\n\r\n", RejectReason.BareLineFeed)]
    [InlineData("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.BareLineFeed)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", RejectReason.BareCarriageReturn)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX\r: b\r\n\r\n", RejectReason.BareCarriageReturn)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX\rb\r\n\r\n", RejectReason.BareCarriageReturn)]
    [InlineData("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.BareCarriageReturn)]
    [InlineData("GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", RejectReason.BareCarriageReturn)]
    [InlineData("G\rT / HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.BareCarriageReturn)]
    // field lines
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n  folded\r\n\r\n", RejectReason.ObsoleteLineFolding)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tfolded\r\n\r\n", RejectReason.ObsoleteLineFolding)]
    [InlineData("GET / HTTP/1.1\r\n Host: a\r\n\r\n", RejectReason.ObsoleteLineFolding)]
    [InlineData("GET / HTTP/1.1\r\nHost : a\r\n\r\n", RejectReason.WhitespaceBeforeColon)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n", RejectReason.WhitespaceBeforeColon)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", RejectReason.InvalidHeaderName)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", RejectReason.InvalidHeaderName)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX y: b\r\n\r\n", RejectReason.InvalidHeaderName)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", RejectReason.InvalidHeaderName)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", RejectReason.InvalidHeaderValue)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: a\u0001b\r\n\r\n", RejectReason.InvalidHeaderValue)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: a\u007fb\r\n\r\n", RejectReason.InvalidHeaderValue)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nX: a\u001bb\r\n\r\n", RejectReason.InvalidHeaderValue)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, a b\r\n\r\n", RejectReason.InvalidHeaderValue)]
    // Host
    [InlineData("GET / HTTP/1.1\r\nX: a\r\n\r\n", RejectReason.MissingHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", RejectReason.MultipleHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", RejectReason.MultipleHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a:\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: []\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: internal%2Eexample.com\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: %61\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET / HTTP/1.1\r\nHost: a%20b\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET http://internal%2eexample.com/ HTTP/1.1\r\nHost: internal%2eexample.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET / HTTP/1.1\r\nHost: a,b\u0080\r\n\r\n", RejectReason.InvalidHost)]
    // Content-Length
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", RejectReason.ConflictingContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", RejectReason.ConflictingContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", RejectReason.InvalidContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", RejectReason.InvalidContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", RejectReason.InvalidContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", RejectReason.InvalidContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", RejectReason.InvalidContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", RejectReason.InvalidContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", RejectReason.InvalidContentLength)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", RejectReason.InvalidContentLength)]
    // Transfer-Encoding
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", RejectReason.ContentLengthWithTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", RejectReason.ContentLengthWithTransferEncoding)]
    [InlineData("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", RejectReason.UnsupportedTransferCoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", RejectReason.UnsupportedTransferCoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", RejectReason.InvalidTransferEncoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", RejectReason.UnsupportedTransferCoding)]
    [InlineData("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n", RejectReason.UnsupportedTransferCoding)]
    // request line
    [InlineData("GET / HTTP/2.0\r\nHost: a\r\n\r\n", RejectReason.UnsupportedVersion)]
    [InlineData("GET / HTTP/1.2\r\nHost: a\r\n\r\n", RejectReason.UnsupportedVersion)]
    [InlineData("GET / HTTP/0.9\r\nHost: a\r\n\r\n", RejectReason.UnsupportedVersion)]
    [InlineData("GET / http/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET / HTTP/1.10\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET / HTTP/1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET /\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestLine)]
    [InlineData("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidMethod)]
    [InlineData("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidMethod)]
    [InlineData("GE\u00c9T / HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidMethod)]
    // request target
    [InlineData("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET * HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET a.com:80 HTTP/1.1\r\nHost: a.com:80\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("CONNECT a.com HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("CONNECT http://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET http://a.com HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET http://a.com?x HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET http:///x HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET http://u@a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET ftp://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /a\u007f HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /caf\u00e9 HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /a\0 HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /api/../admin HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /api/./admin HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /api/.. HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /api/. HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /.. HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /api/..?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /api/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /api/.%2e/admin HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET http://a/x/../y HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    // one credential per request (RFC 9110 section 11.6.2)
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n", RejectReason.MultipleAuthorization)]
    [InlineData("GET / HTTP/1.1\r\nAuthorization: Basic YTpi\r\nHost: a\r\nAUTHORIZATION: Basic YTpi\r\n\r\n", RejectReason.MultipleAuthorization)]
    // percent-encoding that is not '%' HEXDIG HEXDIG (RFC 3986 section 2.1)
    [InlineData("GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /a% HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /a%4 HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /a%4?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    [InlineData("GET /%g1/x HTTP/1.1\r\nHost: a\r\n\r\n", RejectReason.InvalidRequestTarget)]
    // absolute-form and Host must agree
    [InlineData("GET http://a.com/ HTTP/1.1\r\nHost: b.com\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET http://a.com:81/ HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET http://a.com:443/ HTTP/1.1\r\nHost: a.com\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET https://a.com/ HTTP/1.1\r\nHost: a.com:80\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET http://a.com:8080/ HTTP/1.1\r\nHost: a.com:80\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET http://a.com/ HTTP/1.0\r\n\r\n", RejectReason.InvalidHost)]
    [InlineData("GET http://a.com/ HTTP/1.1\r\n\r\n", RejectReason.MissingHost)]
    public void TryRead_MalformedRequest_IsRejected(string request, Enum expected)
    {
        var (status, reason, consumed, _) = Read(request);

        Assert.Equal((RejectReason)expected, reason);
        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(0, consumed);
    }

    /// <summary>RFC 3986 section 6.2.2.2: escapes of unreserved characters are decoded in place (routing and the
    /// upstream see the same path); other escapes get upper-case hex digits (section 6.2.2.1); the query stays as sent.</summary>
    [Theory]
    [InlineData("/%61dmin/x", "/admin/x", "/admin/x")]
    [InlineData("/%41%5A%30%39%2D%2E%5F%7E", "/AZ09-._~", "/AZ09-._~")]
    [InlineData("/a%2Fb%20c%2fd", "/a%2Fb%20c%2Fd", "/a%2Fb%20c%2Fd")]
    [InlineData("/caf%c3%a9/%e2%82%AC?q=%c3%a9", "/caf%C3%A9/%E2%82%AC", "/caf%C3%A9/%E2%82%AC?q=%c3%a9")]
    [InlineData("/%61pi?q=%61&r=%zz", "/api", "/api?q=%61&r=%zz")]
    [InlineData("/users/%7ejoe?x", "/users/~joe", "/users/~joe?x")]
    [InlineData("/plain?%61", "/plain", "/plain?%61")]
    [InlineData("http://a.com/%61b?c", "/ab", "/ab?c")]
    public void TryRead_PercentEncodedUnreserved_DecodedInPath(string target, string path, string forwardedTarget)
    {
        var (status, reason, _, head) = Read($"GET {target} HTTP/1.1\r\nHost: a.com\r\nX-Next: 1\r\n\r\n");

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(path, System.Text.Encoding.ASCII.GetString(head.Path));
        Assert.Equal(forwardedTarget, System.Text.Encoding.ASCII.GetString(head.Target));
        Assert.True(head.TryGetHeader("x-next"u8, out ReadOnlySpan<byte> next) && next.SequenceEqual("1"u8));
    }

    [Theory]
    [InlineData(RejectReason.BareLineFeed, 400)]
    [InlineData(RejectReason.ContentLengthWithTransferEncoding, 400)]
    [InlineData(RejectReason.InvalidTransferEncoding, 400)]
    [InlineData(RejectReason.InvalidRequestTarget, 400)]
    [InlineData(RejectReason.MultipleAuthorization, 400)]
    [InlineData(RejectReason.RequestLineTooLong, 414)]
    [InlineData(RejectReason.HeadersTooLarge, 431)]
    [InlineData(RejectReason.TooManyHeaders, 431)]
    [InlineData(RejectReason.UnsupportedTransferCoding, 501)]
    [InlineData(RejectReason.UnsupportedVersion, 505)]
    public void RejectReason_StatusCode_MatchesRfc(Enum reason, int status)
        => Assert.Equal(status, ((RejectReason)reason).StatusCode());

    // ---- limits ----

    private static string RequestLine(int length)
        => "GET /" + new string('a', length - 5 - 9) + " HTTP/1.1";

    [Fact]
    public void TryRead_RequestLineAtLimit_IsAccepted()
    {
        var (status, reason, _, _) = Read(RequestLine(64) + "\r\nHost: a\r\n\r\n", Small);

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
    }

    [Fact]
    public void TryRead_RequestLineOverLimit_Returns414()
    {
        var (status, reason, _, _) = Read(RequestLine(65) + "\r\nHost: a\r\n\r\n", Small);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.RequestLineTooLong, reason);
        Assert.Equal(414, reason.StatusCode());
    }

    [Fact]
    public void TryRead_LeadingEmptyLinesCountTowardRequestLine_Returns414()
    {
        var (_, reason, _, _) = Read("\r\n" + RequestLine(63) + "\r\nHost: a\r\n\r\n", Small);

        Assert.Equal(RejectReason.RequestLineTooLong, reason);
    }

    [Theory]
    [InlineData(65, HeadStatus.Incomplete)]
    [InlineData(66, HeadStatus.Rejected)]
    [InlineData(10_000, HeadStatus.Rejected)]
    public void TryRead_UnterminatedRequestLine_RejectsOnceOverLimit(int bytes, object expectedStatus)
    {
        HeadStatus expected = (HeadStatus)expectedStatus;
        string partial = ("GET /" + new string('a', bytes))[..bytes];
        RequestHead head = new();
        for (int cut = 0; cut <= bytes; cut += Math.Max(1, bytes / 7))
        {
            var (status, reason, consumed) = Read(Split(Bytes(partial), cut), head, Small);
            Assert.Equal(expected, status);
            Assert.Equal(expected == HeadStatus.Rejected ? RejectReason.RequestLineTooLong : RejectReason.None, reason);
            Assert.Equal(0, consumed);
        }
    }

    [Fact]
    public void TryRead_OnlyEmptyLinesOverLimit_Returns414()
    {
        string crlfs = string.Concat(Enumerable.Repeat("\r\n", 40));
        var (status, reason, _, _) = Read(crlfs, Small);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.RequestLineTooLong, reason);
    }

    private static string Fields(int sectionBytes)
        => "Host: a\r\nX: " + new string('b', sectionBytes - 9 - 5) + "\r\n";

    [Fact]
    public void TryRead_HeaderSectionAtLimit_IsAccepted()
    {
        var (status, reason, _, head) = Read("GET / HTTP/1.1\r\n" + Fields(128) + "\r\n", Small);

        Assert.Equal(RejectReason.None, reason);
        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(2, head.FieldCount);
    }

    [Fact]
    public void TryRead_HeaderSectionOverLimit_Returns431()
    {
        var (status, reason, _, _) = Read("GET / HTTP/1.1\r\n" + Fields(129) + "\r\n", Small);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.HeadersTooLarge, reason);
        Assert.Equal(431, reason.StatusCode());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TryRead_UnterminatedHeaderSectionOverLimit_Returns431Early(bool split)
    {
        byte[] data = Bytes("GET / HTTP/1.1\r\nHost: a\r\nX: " + new string('b', 300));
        var (status, reason, _) = Read(split ? Split(data, 20, 100) : new ReadOnlySequence<byte>(data), new RequestHead(), Small);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.HeadersTooLarge, reason);
    }

    [Fact]
    public void TryRead_UnterminatedHeaderSectionWithinLimit_IsIncomplete()
    {
        string head = "GET / HTTP/1.1\r\n" + Fields(128);
        var (status, _, _, _) = Read(head + "\r", Small);

        Assert.Equal(HeadStatus.Incomplete, status);
    }

    [Fact]
    public void TryRead_ManyCompleteFieldLinesOverLimit_Returns431BeforeEnd()
    {
        string fields = string.Concat(Enumerable.Repeat("X: 0123456789012345678901234567890123456789\r\n", 4));
        var (status, reason, _, _) = Read("GET / HTTP/1.1\r\n" + fields, Small);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.HeadersTooLarge, reason);
    }

    /// <summary>
    /// A flood of tiny fields passes max_headers long before max_header_bytes: the reason says so (it said
    /// headers_too_large, since the size was checked on the unfinished head before any field was counted).
    /// </summary>
    [Fact]
    public void TryRead_FloodOfTinyFieldsOverBothLimits_ReturnsTooManyHeaders()
    {
        string fields = string.Concat(Enumerable.Repeat("X: 0123456789\r\n", 20));
        var (status, reason, _, _) = Read("GET / HTTP/1.1\r\n" + fields, Small);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.TooManyHeaders, reason);
        Assert.Equal(431, reason.StatusCode());
    }

    [Fact]
    public void TryRead_FieldsAtCountLimit_AreAccepted()
    {
        var (status, _, _, head) = Read("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", Small);

        Assert.Equal(HeadStatus.Complete, status);
        Assert.Equal(4, head.FieldCount);
    }

    [Fact]
    public void TryRead_FieldsOverCountLimit_Returns431()
    {
        var (status, reason, _, _) = Read("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", Small);

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.TooManyHeaders, reason);
        Assert.Equal(431, reason.StatusCode());
    }

    [Fact]
    public void TryRead_BareLineFeedWhileIncomplete_IsRejectedEarly()
    {
        var (status, reason, _, _) = Read("GET / HTTP/1.1\nHost: a\n");

        Assert.Equal(HeadStatus.Rejected, status);
        Assert.Equal(RejectReason.BareLineFeed, reason);
    }

    // ---- allocation ----

    [Fact]
    public void TryRead_WarmHead_AllocatesNothing()
    {
        ReadOnlySequence<byte> single = new(Bytes(Browser));
        ReadOnlySequence<byte> split = Split(Bytes(Browser), 100, 200);
        RequestHead head = new();
        HttpLimits limits = HttpLimits.Default;

        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            Http1RequestReader.TryRead(single, head, limits, out _, out _);
            Http1RequestReader.TryRead(split, head, limits, out _, out _);
        }, iterations: 100);
        Assert.Equal(0, allocated);
    }
}
