using System.Buffers;
using System.Text;
using Proxy.Http;
using Proxy.Http1;

namespace Proxy.Core.Tests.Trailers;

public class TrailerSectionTests
{
    private const string Body = "5\r\nhello\r\n0\r\nGrpc-Status: 0\r\ngrpc-message:  ok \r\nContent-Length: 5\r\nX-Sum: abc\r\n\r\n";

    private static (ChunkStatus Status, string Payload, string Section) DecodeSplit(byte[] data, int split)
    {
        ChunkedDecoder decoder = default;
        var payload = new List<byte>();
        int position = 0;
        int available = split;
        while (true)
        {
            ReadOnlySequence<byte> buffer = new(data, position, available - position);
            ChunkStatus status = decoder.Read(buffer, out ReadOnlySequence<byte> chunk, out SequencePosition consumed, out _);
            payload.AddRange(chunk.ToArray());
            position += (int)buffer.Slice(0, consumed).Length;
            if (status == ChunkStatus.Data)
            {
                continue;
            }
            if (status == ChunkStatus.NeedMore && available < data.Length)
            {
                available = data.Length;
                continue;
            }
            string section = Encoding.ASCII.GetString(decoder.TrailerSection);
            decoder.Reset();
            return (status, Encoding.ASCII.GetString(payload.ToArray()), section);
        }
    }

    [Fact]
    public void ChunkedDecoder_TrailersAtEverySplit_KeepsWholeSection()
    {
        byte[] data = Encoding.ASCII.GetBytes(Body);
        for (int split = 0; split <= data.Length; split++)
        {
            var (status, payload, section) = DecodeSplit(data, split);
            Assert.Equal(ChunkStatus.Done, status);
            Assert.Equal("hello", payload);
            Assert.Equal("Grpc-Status: 0\r\ngrpc-message:  ok \r\nContent-Length: 5\r\nX-Sum: abc\r\n", section);
        }
    }

    [Fact]
    public void ChunkedDecoder_NoTrailers_SectionEmpty()
    {
        var (status, _, section) = DecodeSplit(Encoding.ASCII.GetBytes("3\r\nabc\r\n0\r\n\r\n"), 4);
        Assert.Equal(ChunkStatus.Done, status);
        Assert.Equal("", section);
    }

    [Fact]
    public void ChunkedDecoder_LargeSection_GrowsPooledBufferAndKeepsEveryByte()
    {
        string field = "x-big: " + new string('a', 3000) + "\r\n";
        string expected = string.Concat(Enumerable.Repeat(field, 5));
        var (status, _, section) = DecodeSplit(Encoding.ASCII.GetBytes("0\r\n" + expected + "\r\n"), 1000);
        Assert.Equal(ChunkStatus.Done, status);
        Assert.Equal(expected, section);
    }

    [Fact]
    public void ChunkedDecoder_SectionOverCap_Rejected()
    {
        string huge = "0\r\nx: " + new string('a', ChunkedDecoder.MaxTrailerBytes) + "\r\n\r\n";
        var (status, _, _) = DecodeSplit(Encoding.ASCII.GetBytes(huge), 10);
        Assert.Equal(ChunkStatus.Error, status);
    }

    [Fact]
    public void TrailerFields_ForbiddenFields_AreSkipped()
    {
        byte[] section = Encoding.ASCII.GetBytes(
            "grpc-status: 0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nConnection: close\r\n"
            + "Keep-Alive: 5\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: x\r\nX-Sum:\tabc  \r\n");
        var names = new List<string>();
        var values = new List<string>();
        var fields = new TrailerFields(section);
        while (fields.MoveNext(out ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value, out _))
        {
            names.Add(Encoding.ASCII.GetString(name));
            values.Add(Encoding.ASCII.GetString(value));
        }
        Assert.Equal(["grpc-status", "X-Sum"], names);
        Assert.Equal(["0", "abc"], values);
    }

    [Fact]
    public void TrailerFields_WriteHttp1_CopiesKeptLinesAsSent()
    {
        byte[] section = Encoding.ASCII.GetBytes("A: 1\r\nhost: h\r\nB:2\r\n");
        var output = new ArrayBufferWriter<byte>();
        TrailerFields.WriteHttp1(output, section);
        Assert.Equal("A: 1\r\nB:2\r\n", Encoding.ASCII.GetString(output.WrittenSpan));
    }

    [Theory]
    [InlineData("content-length", true)]
    [InlineData("TRANSFER-ENCODING", true)]
    [InlineData("host", true)]
    [InlineData("te", true)]
    [InlineData("connection", true)]
    [InlineData("grpc-status", false)]
    [InlineData("x-checksum", false)]
    public void TrailerFilter_Names_ForbiddenAsSpecified(string name, bool forbidden)
        => Assert.Equal(forbidden, TrailerFilter.IsForbidden(Encoding.ASCII.GetBytes(name)));
}
