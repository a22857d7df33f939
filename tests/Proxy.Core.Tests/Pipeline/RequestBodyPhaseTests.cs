using System.Buffers;
using System.Text;
using Proxy.Configuration;
using Proxy.Forwarding;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;
using Proxy.Transport;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The request-body phase: the chain's body array and limit, the request_body kind's checks and config, the buffer's sequence.</summary>
public class RequestBodyPhaseTests
{
    private sealed class BodyOnly(long max, FilterStatus status = FilterStatus.Continue) : IRequestBodyFilter
    {
        public int Calls;
        public long Seen = -1;

        public long MaxBodyBytes => max;

        public FilterStatus OnRequestBody(RequestContext context, ReadOnlySequence<byte> body)
        {
            Calls++;
            Seen = body.Length;
            return status == FilterStatus.Respond ? context.Respond(403, "no", "text/plain"u8, "no"u8) : status;
        }
    }

    private sealed class HeadersOnly : IRequestHeadersFilter
    {
        public FilterStatus OnRequestHeaders(RequestContext context) => FilterStatus.Continue;
    }

    private static string[] PolicyErrors(string policy) => ConfigLoader.LoadText(string.Join('\n',
        "policies:", "  p:", "    " + policy,
        "listeners:",
        "  - { name: public, address: \"127.0.0.1:8080\" }",
        "routes:",
        "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [p] }") + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    /// <summary>The same bytes as a sequence cut at <paramref name="cuts"/>, one segment per piece.</summary>
    private static ReadOnlySequence<byte> Split(byte[] bytes, params int[] cuts)
    {
        var first = new Segment(bytes.AsMemory(0, cuts.Length == 0 ? bytes.Length : cuts[0]), 0);
        Segment last = first;
        for (int i = 0; i < cuts.Length; i++)
        {
            int end = i + 1 < cuts.Length ? cuts[i + 1] : bytes.Length;
            last = last.Append(bytes.AsMemory(cuts[i], end - cuts[i]));
        }
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long index)
        {
            Memory = memory;
            RunningIndex = index;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }

    [Fact]
    public void Chain_BodyFilters_FormTheBodyPhaseAndTheSmallestLimitWins()
    {
        var headers = new HeadersOnly();
        var big = new BodyOnly(1000);
        var small = new BodyOnly(10);

        var chain = new FilterChain([headers, big, small], ["h", "big", "small"]);

        Assert.Equal<IProxyFilter>([big, small], chain.RequestBody);
        Assert.Equal<IProxyFilter>([headers], chain.RequestHeaders);
        Assert.Equal(10, chain.MaxRequestBodyBytes);
    }

    [Fact]
    public void Chain_NoBodyFilters_EmptyPhaseAndNoLimit()
    {
        var chain = new FilterChain([new HeadersOnly()], ["h"]);

        Assert.Empty(chain.RequestBody);
        Assert.Equal(long.MaxValue, chain.MaxRequestBodyBytes);
        Assert.Empty(FilterChain.Empty.RequestBody);
    }

    [Fact]
    public void RunRequestBody_FirstFilterResponds_LaterFiltersDoNotRun()
    {
        var (_, context) = FilterContexts.Create("POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
        var first = new BodyOnly(100, FilterStatus.Respond);
        var second = new BodyOnly(100);
        var chain = new FilterChain([first, second], ["a", "b"]);

        FilterStatus status = chain.RunRequestBody(context, new ReadOnlySequence<byte>("abc"u8.ToArray()));

        Assert.Equal(FilterStatus.Respond, status);
        Assert.Equal(3, first.Seen);
        Assert.Equal(0, second.Calls);
        Assert.Equal(403, context.ReplyStatus);
    }

    [Fact]
    public void RunRequestBody_FilterStopsWithoutReply_500()
    {
        var (_, context) = FilterContexts.Create("POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
        var chain = new FilterChain([new BodyOnly(100, FilterStatus.Pause)], ["a"]);

        Assert.Equal(FilterStatus.Respond, chain.RunRequestBody(context, ReadOnlySequence<byte>.Empty));
        Assert.Equal(500, context.ReplyStatus);
    }

    [Theory]
    [InlineData("{\"a\":[1,2.5e3,true,false,null,\"x\\u00e9y\"],\"b\":{}}", true)]
    [InlineData("  [ ]  ", true)]
    [InlineData("\"just a string\"", true)]
    [InlineData("{\"a\":1,}", false)]
    [InlineData("{\"a\":1} {}", false)]
    [InlineData("{\"a\":tru}", false)]
    [InlineData("{\"a\":\"\\u12g4\"}", false)]
    [InlineData("[1,2", false)]
    [InlineData("{\"a\":1 /* c */}", false)]
    public void IsWellFormedJson_EveryTwoWaySplit_SameAnswer(string json, bool valid)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(json);

        Assert.Equal(valid, RequestBodyFilter.IsWellFormedJson(new ReadOnlySequence<byte>(bytes)));
        for (int cut = 1; cut < bytes.Length; cut++)
        {
            Assert.Equal(valid, RequestBodyFilter.IsWellFormedJson(Split(bytes, cut)));
        }
        if (bytes.Length > 3)
        {
            // Single-byte segments: every token straddles a boundary.
            Assert.Equal(valid, RequestBodyFilter.IsWellFormedJson(Split(bytes, Enumerable.Range(1, bytes.Length - 1).ToArray())));
        }
    }

    [Fact]
    public void IsWellFormedJson_InvalidUtf8InString_False()
    {
        byte[] bytes = [(byte)'[', (byte)'"', 0xC3, 0x28, (byte)'"', (byte)']'];
        byte[] valid = [(byte)'[', (byte)'"', 0xC3, 0xA9, (byte)'"', (byte)']'];

        Assert.False(RequestBodyFilter.IsWellFormedJson(new ReadOnlySequence<byte>(bytes)));
        Assert.False(RequestBodyFilter.IsWellFormedJson(Split(bytes, 3)));
        Assert.True(RequestBodyFilter.IsWellFormedJson(Split(valid, 3)));
    }

    [Theory]
    [InlineData("application/json", "application/json")]
    [InlineData("application/json; charset=utf-8", "application/json")]
    [InlineData(" text/plain ;x=y", "text/plain")]
    public void MediaType_ParametersAndSpaces_Dropped(string value, string expected)
        => Assert.Equal(expected, Encoding.ASCII.GetString(RequestBodyFilter.MediaType(Encoding.ASCII.GetBytes(value))));

    [Theory]
    [InlineData("text/plain", "{}", 415)]
    [InlineData("application/json", "{", 400)]
    [InlineData("APPLICATION/JSON;charset=utf-8", "{}", 0)]
    public void Filter_ContentTypeAndJson_Answers(string contentType, string body, int status)
    {
        var (_, context) = FilterContexts.Create($"POST /r HTTP/1.1\r\nHost: a\r\nContent-Type: {contentType}\r\nContent-Length: {body.Length}\r\n\r\n");
        var filter = new RequestBodyFilter(1024, ["application/json"], json: true);

        FilterStatus result = filter.OnRequestBody(context, new ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(body)));

        Assert.Equal(status == 0 ? FilterStatus.Continue : FilterStatus.Respond, result);
        Assert.Equal(status, context.ReplyStatus);
    }

    [Fact]
    public void Filter_EmptyBody_PassesWithoutChecks()
    {
        var (_, context) = FilterContexts.Create("GET /r HTTP/1.1\r\nHost: a\r\n\r\n");
        var filter = new RequestBodyFilter(1024, ["application/json"], json: true);

        Assert.Equal(FilterStatus.Continue, filter.OnRequestBody(context, ReadOnlySequence<byte>.Empty));
    }

    [Fact]
    public void Config_RequestBodyPolicy_CompilesIntoTheRoutesBodyPhase()
    {
        var result = ConfigLoader.LoadText(string.Join('\n',
            "policies:", "  p: { request_body: { max_bytes: 2KiB, content_types: [application/json], json: true } }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [p] }") + "\n", "t.yaml");

        Assert.Empty(result.Errors);
        FilterChain chain = result.Snapshot!.Routes.InMatchOrder[0].Filters(0);
        Assert.Single(chain.RequestBody);
        Assert.Equal(2048, chain.MaxRequestBodyBytes);
    }

    [Theory]
    [InlineData("request_body: { max_bytes: lots }", "t.yaml:3:32: invalid size 'lots' for 'max_bytes'")]
    [InlineData("request_body: { max_bytes: 0 }", "t.yaml:3:32: invalid size '0' for 'max_bytes'")]
    [InlineData("request_body: { content_types: [json] }", "t.yaml:3:37: invalid media type 'json'")]
    [InlineData("request_body: { content_types: application/json }", "t.yaml:3:36: expected a list of media types")]
    [InlineData("request_body: { content_types: [] }", "t.yaml:3:21: request_body policy 'p' would refuse every body")]
    [InlineData("request_body: { json: yes }", "t.yaml:3:27: expected true or false for 'json'")]
    [InlineData("request_body: { max_byte: 1 }", "t.yaml:3:21: unknown key 'max_byte' in request_body; did you mean 'max_bytes'?")]
    public void Validate_BadRequestBody_ReportsPosition(string policy, string message)
    {
        var errors = PolicyErrors(policy);

        Assert.Single(errors);
        Assert.StartsWith(message, errors[0]);
    }

    [Fact]
    public void ReplayBuffer_AsSequence_SpansBlocksInOrderAndIsReusable()
    {
        var buffer = new RequestReplayBuffer(new BlockMemoryPool(64, maxRetained: 16));
        byte[] content = Enumerable.Range(0, 200).Select(i => (byte)i).ToArray();
        for (int round = 0; round < 2; round++)
        {
            buffer.Start(1000);
            buffer.Append(content.AsSpan(0, 70));
            buffer.Append(content.AsSpan(70));

            ReadOnlySequence<byte> sequence = buffer.AsSequence();

            Assert.False(sequence.IsSingleSegment);
            Assert.Equal(content, sequence.ToArray());
        }
        buffer.Reset();
        Assert.True(buffer.AsSequence().IsEmpty);
    }
}
