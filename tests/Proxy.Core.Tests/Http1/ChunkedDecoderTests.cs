using System.Buffers;
using CsCheck;
using Proxy.Http;
using Proxy.Http1;
using static Proxy.Core.Tests.Http1.Http1TestBuffers;

namespace Proxy.Core.Tests.Http1;

public class ChunkedDecoderTests
{
    private const string Body = "5\r\nhello\r\n6;name=value;q=\"a b\"\r\n world\r\n000A\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n";
    private const string Payload = "hello world0123456789";

    private sealed record Outcome(ChunkStatus Status, RejectReason Reason, string Payload, long Consumed, long PayloadBytes);

    /// <summary>Drives the decoder like a connection loop: bytes arrive in pieces ending at <paramref name="arrivals"/>.</summary>
    private static Outcome Decode(byte[] data, params int[] arrivals)
    {
        ChunkedDecoder decoder = default;
        List<byte> output = [];
        long position = 0;
        int arrival = 0;
        int available = arrivals.Length > 0 ? arrivals[0] : data.Length;
        while (true)
        {
            ReadOnlySequence<byte> buffer = new(data, (int)position, available - (int)position);
            ChunkStatus status = decoder.Read(buffer, out ReadOnlySequence<byte> chunk, out SequencePosition consumed, out RejectReason reason);
            output.AddRange(chunk.ToArray());
            position += Offset(buffer, consumed);
            if (status == ChunkStatus.Data)
            {
                Assert.Equal(decoder.PayloadBytes, output.Count);
                continue;
            }
            if (status == ChunkStatus.NeedMore && available < data.Length)
            {
                Assert.Equal(available, position);
                available = ++arrival < arrivals.Length ? arrivals[arrival] : data.Length;
                continue;
            }
            return new Outcome(status, reason, Text(output.ToArray()), position, decoder.PayloadBytes);
        }
    }

    /// <summary>Decodes a (possibly multi-segment) buffer that holds everything.</summary>
    private static Outcome Decode(ReadOnlySequence<byte> buffer)
    {
        ChunkedDecoder decoder = default;
        List<byte> output = [];
        ReadOnlySequence<byte> rest = buffer;
        long total = 0;
        while (true)
        {
            ChunkStatus status = decoder.Read(rest, out ReadOnlySequence<byte> chunk, out SequencePosition consumed, out RejectReason reason);
            output.AddRange(chunk.ToArray());
            total += Offset(rest, consumed);
            rest = rest.Slice(consumed);
            if (status != ChunkStatus.Data)
            {
                return new Outcome(status, reason, Text(output.ToArray()), total, decoder.PayloadBytes);
            }
        }
    }

    [Fact]
    public void Read_WholeBody_DecodesPayloadAndStopsAtEnd()
    {
        Outcome outcome = Decode(Bytes(Body + "GET / HTTP/1.1\r\n"));

        Assert.Equal(ChunkStatus.Done, outcome.Status);
        Assert.Equal(Payload, outcome.Payload);
        Assert.Equal(Body.Length, outcome.Consumed);
        Assert.Equal(Payload.Length, outcome.PayloadBytes);
    }

    [Fact]
    public void Read_EveryArrivalSplit_DecodesIdentically()
    {
        byte[] data = Bytes(Body);
        for (int cut = 0; cut <= data.Length; cut++)
        {
            Outcome outcome = Decode(data, cut);
            Assert.Equal(ChunkStatus.Done, outcome.Status);
            Assert.Equal(Payload, outcome.Payload);
            Assert.Equal(data.Length, outcome.Consumed);
        }
    }

    [Fact]
    public void Read_ByteByByteArrival_DecodesIdentically()
    {
        byte[] data = Bytes(Body);
        Outcome outcome = Decode(data, Enumerable.Range(1, data.Length).ToArray());

        Assert.Equal(ChunkStatus.Done, outcome.Status);
        Assert.Equal(Payload, outcome.Payload);
    }

    [Fact]
    public void Read_EverySegmentSplit_DecodesIdentically()
    {
        byte[] data = Bytes(Body);
        for (int cut = 0; cut <= data.Length; cut++)
        {
            Outcome outcome = Decode(Split(data, cut));
            Assert.Equal(ChunkStatus.Done, outcome.Status);
            Assert.Equal(Payload, outcome.Payload);
            Assert.Equal(data.Length, outcome.Consumed);
        }
        Outcome perByte = Decode(BytePerSegment(data));
        Assert.Equal(Payload, perByte.Payload);
    }

    [Fact]
    public void Read_PartialChunk_ReturnsWhatIsAvailable()
    {
        ChunkedDecoder decoder = default;
        ReadOnlySequence<byte> buffer = new(Bytes("10\r\nabcd"));

        ChunkStatus status = decoder.Read(buffer, out ReadOnlySequence<byte> data, out SequencePosition consumed, out _);

        Assert.Equal(ChunkStatus.Data, status);
        Assert.Equal("abcd", Text(data.ToArray()));
        Assert.Equal(8, Offset(buffer, consumed));
        status = decoder.Read(buffer.Slice(consumed), out data, out _, out _);
        Assert.Equal(ChunkStatus.NeedMore, status);
        Assert.True(data.IsEmpty);
    }

    [Fact]
    public void Read_MaxSize_IsAccepted()
    {
        ChunkedDecoder decoder = default;
        ChunkStatus status = decoder.Read(new ReadOnlySequence<byte>(Bytes("7fffffffffffffff\r\nab")), out ReadOnlySequence<byte> data, out _, out _);

        Assert.Equal(ChunkStatus.Data, status);
        Assert.Equal(2, data.Length);
    }

    [Theory]
    [InlineData("5 ;ext\r\nhello\r\n0\r\n\r\n")]
    [InlineData("5\t;\text\r\nhello\r\n0\r\n\r\n")]
    [InlineData("5;a=\"\u00e9\"\r\nhello\r\n0;last\r\n\r\n")]
    [InlineData("00005\r\nhello\r\n00\r\n\r\n")]
    public void Read_ToleratedSyntax_Decodes(string body)
    {
        Outcome outcome = Decode(Bytes(body));

        Assert.Equal(RejectReason.None, outcome.Reason);
        Assert.Equal(ChunkStatus.Done, outcome.Status);
        Assert.Equal("hello", outcome.Payload);
    }

    [Theory]
    [InlineData("\r\n", RejectReason.InvalidChunkSize)]
    [InlineData(";ext\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("g\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("-5\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("+5\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("0x5\r\n", RejectReason.InvalidChunkSize)]
    [InlineData(" 5\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("5 \r\nhello\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("5\nhello\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("5\rhello\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("5;a\nhello\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("10000000000000000\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("00000000000000005\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("8000000000000000\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("ffffffffffffffff\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("5;a\u0001\r\nhello\r\n", RejectReason.InvalidChunkExtension)]
    [InlineData("5;a\u007f\r\nhello\r\n", RejectReason.InvalidChunkExtension)]
    [InlineData("5;a\0\r\nhello\r\n", RejectReason.InvalidChunkExtension)]
    [InlineData("5\r\nhelloX\r\n", RejectReason.InvalidChunkTerminator)]
    [InlineData("5\r\nhello\n0\r\n\r\n", RejectReason.InvalidChunkTerminator)]
    [InlineData("5\r\nhello\r0\r\n\r\n", RejectReason.InvalidChunkTerminator)]
    [InlineData("5\r\nhello\r\r\n", RejectReason.InvalidChunkTerminator)]
    [InlineData("0\r\nX : y\r\n\r\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\n: y\r\n\r\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\nX: y\r\n folded\r\n\r\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\nX: a\0b\r\n\r\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\nX: y\n\r\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\nX: y\r\r\n\r\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\nNoColon\r\n\r\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\n\n", RejectReason.InvalidTrailer)]
    [InlineData("0\r\n\rX", RejectReason.InvalidTrailer)]
    // Enum, not RejectReason: the engine's enums are internal, and a public test method cannot take an internal type.
    public void Read_MalformedBody_ReturnsError(string body, Enum reason)
    {
        var expected = (RejectReason)reason;
        byte[] data = Bytes(body);
        for (int cut = 0; cut <= data.Length; cut++)
        {
            Outcome outcome = Decode(data, cut);
            Assert.Equal(ChunkStatus.Error, outcome.Status);
            Assert.Equal(expected, outcome.Reason);
            Assert.Equal(400, outcome.Reason.StatusCode());
        }
    }

    [Theory]
    [InlineData("zz\r\nhello\r\n0\r\n\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("5\r\nhello\r\n10000000000000000\r\n", RejectReason.InvalidChunkSize)]
    [InlineData("5\r\nhelloX\r\n", RejectReason.InvalidChunkTerminator)]
    [InlineData("5\r\nhello\r\n0\r\nX: a\0b\r\n\r\n", RejectReason.InvalidTrailer)]
    public void FindError_MalformedPrefix_ReturnsReason(string body, Enum reason)
    {
        var expected = (RejectReason)reason;
        Assert.Equal(expected, ChunkedDecoder.FindError(new ReadOnlySequence<byte>(Bytes(body))));
        Assert.Equal(expected, ChunkedDecoder.FindError(BytePerSegment(Bytes(body))));
    }

    [Fact]
    public void FindError_WellFormedPrefixes_ReturnNone()
    {
        // Every prefix of a valid body (an incomplete chunk line, data cut short) is no error yet, nor the whole of it
        // with the next response behind it.
        byte[] data = Bytes(Body + "HTTP/1.1 200 OK\r\n");
        for (int length = 0; length <= data.Length; length++)
        {
            Assert.Equal(RejectReason.None, ChunkedDecoder.FindError(new ReadOnlySequence<byte>(data, 0, length)));
        }
    }

    [Fact]
    public void Read_LongExtension_ReturnsError()
    {
        Outcome outcome = Decode(Bytes("5;" + new string('a', ChunkedDecoder.MaxChunkLine) + "\r\nhello\r\n0\r\n\r\n"));

        Assert.Equal(ChunkStatus.Error, outcome.Status);
        Assert.Equal(RejectReason.InvalidChunkExtension, outcome.Reason);
    }

    /// <summary>
    /// One-byte chunks each with a long extension: max_body_bytes counts only the payload, so without a bound on the
    /// framing a client sends gigabytes of extensions for a few kilobytes of body (Go's CVE-2023-39326).
    /// </summary>
    [Fact]
    public void Read_TinyChunksWithLongExtensions_ReturnsFramingExcess()
    {
        string chunk = "1;e=" + new string('a', 4000) + "\r\nz\r\n";
        Outcome outcome = Decode(Bytes(string.Concat(Enumerable.Repeat(chunk, 64)) + "0\r\n\r\n"));

        Assert.Equal(ChunkStatus.Error, outcome.Status);
        Assert.Equal(RejectReason.ChunkFramingExcess, outcome.Reason);
        Assert.Equal(400, outcome.Reason.StatusCode());
        Assert.Equal("chunk_framing_excess", outcome.Reason.DetailsCode());
        Assert.InRange(outcome.PayloadBytes, 1, 8);
    }

    /// <summary>Streaming a byte per chunk is legitimate (4 bytes of framing each), as are a few long extensions.</summary>
    [Fact]
    public void Read_OneByteChunksAndSomeLongExtensions_Decodes()
    {
        string tiny = string.Concat(Enumerable.Repeat("1\r\nz\r\n", 100_000));
        string extended = string.Concat(Enumerable.Repeat("400;e=" + new string('a', 3000) + "\r\n" + new string('x', 0x400) + "\r\n", 10));
        Outcome outcome = Decode(Bytes(tiny + extended + "0\r\n\r\n"));

        Assert.Equal(ChunkStatus.Done, outcome.Status);
        Assert.Equal(100_000 + 10 * 0x400, outcome.PayloadBytes);
    }

    [Fact]
    public void Read_ExtensionJustUnderLimit_Decodes()
    {
        Outcome outcome = Decode(Bytes("5;" + new string('a', ChunkedDecoder.MaxChunkLine - 3) + "\r\nhello\r\n0\r\n\r\n"));

        Assert.Equal(ChunkStatus.Done, outcome.Status);
    }

    [Fact]
    public void Read_HugeTrailer_ReturnsError()
    {
        string trailers = string.Concat(Enumerable.Repeat("X-T: " + new string('v', 100) + "\r\n", 400));
        Outcome outcome = Decode(Bytes("0\r\n" + trailers + "\r\n"));

        Assert.Equal(ChunkStatus.Error, outcome.Status);
        Assert.Equal(RejectReason.InvalidTrailer, outcome.Reason);
    }

    [Fact]
    public void Read_Truncated_NeedsMore()
    {
        Outcome outcome = Decode(new ReadOnlySequence<byte>(Bytes("5\r\nhello\r\n0\r\nX: y\r\n")));

        Assert.Equal(ChunkStatus.NeedMore, outcome.Status);
        Assert.Equal("hello", outcome.Payload);
    }

    [Fact]
    public void Read_AfterDoneAndReset_DecodesNextBody()
    {
        ChunkedDecoder decoder = default;
        ReadOnlySequence<byte> first = new(Bytes("0\r\n\r\n"));
        Assert.Equal(ChunkStatus.Done, decoder.Read(first, out _, out _, out _));
        Assert.True(decoder.IsDone);
        Assert.Equal(ChunkStatus.Done, decoder.Read(ReadOnlySequence<byte>.Empty, out _, out _, out _));

        decoder.Reset();
        ChunkStatus status = decoder.Read(new ReadOnlySequence<byte>(Bytes("1\r\nz")), out ReadOnlySequence<byte> data, out _, out _);
        Assert.Equal(ChunkStatus.Data, status);
        Assert.Equal("z", Text(data.ToArray()));
        Assert.Equal(1, decoder.PayloadBytes);
    }

    [Fact]
    public void Read_GeneratedChunkingAndArrival_DecodesPayload()
    {
        Gen.Select(Gen.Byte.Array[0, 3000], Gen.Int[1, 700].Array[1, 8], Gen.Int[1, 300], Gen.Bool)
            .Sample((payload, chunkSizes, arrivalSize, upperHex) =>
            {
                List<byte> body = [];
                int offset = 0;
                for (int i = 0; offset < payload.Length; i++)
                {
                    int length = Math.Min(chunkSizes[i % chunkSizes.Length], payload.Length - offset);
                    string size = length.ToString(upperHex ? "X" : "x");
                    body.AddRange(Bytes(size + (i % 3 == 1 ? ";ext=1" : "") + "\r\n"));
                    body.AddRange(payload.AsSpan(offset, length).ToArray());
                    body.AddRange(Bytes("\r\n"));
                    offset += length;
                }
                body.AddRange(Bytes("0\r\nX-Checksum: 1\r\n\r\n"));
                byte[] data = body.ToArray();
                int[] arrivals = Enumerable.Range(1, data.Length / arrivalSize).Select(k => k * arrivalSize).ToArray();

                Outcome outcome = Decode(data, arrivals);

                Assert.Equal(ChunkStatus.Done, outcome.Status);
                Assert.Equal(data.Length, outcome.Consumed);
                Assert.Equal(Text(payload), outcome.Payload);
            }, iter: 300);
    }

    [Fact]
    public void Read_WarmBody_AllocatesNothing()
    {
        ReadOnlySequence<byte> buffer = Split(Bytes(Body), 7, 30);

        long allocated = SteadyStateAllocation.BestOfRounds(() => DecodeNoAlloc(buffer), iterations: 100);
        Assert.Equal(0, allocated);
    }

    private static void DecodeNoAlloc(ReadOnlySequence<byte> buffer)
    {
        ChunkedDecoder decoder = default;
        while (decoder.Read(buffer, out _, out SequencePosition consumed, out _) == ChunkStatus.Data)
        {
            buffer = buffer.Slice(consumed);
        }
        // The body has a trailer section: its pooled buffer goes back, as every owner of a decoder does.
        decoder.Reset();
    }
}
