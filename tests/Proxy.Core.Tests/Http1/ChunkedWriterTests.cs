using System.Buffers;
using Proxy.Http1;
using static Proxy.Core.Tests.Http1.Http1TestBuffers;

namespace Proxy.Core.Tests.Http1;

public class ChunkedWriterTests
{
    [Theory]
    [InlineData(0L, "0\r\n")]
    [InlineData(1L, "1\r\n")]
    [InlineData(15L, "f\r\n")]
    [InlineData(16L, "10\r\n")]
    [InlineData(255L, "ff\r\n")]
    [InlineData(4096L, "1000\r\n")]
    [InlineData(long.MaxValue, "7fffffffffffffff\r\n")]
    public void WriteChunkHeader_Length_WritesHexAndCrlf(long length, string expected)
    {
        Span<byte> buffer = stackalloc byte[ChunkedWriter.MaxChunkHeaderLength];

        int written = ChunkedWriter.WriteChunkHeader(buffer, length);

        Assert.Equal(expected, Text(buffer[..written]));
    }

    [Fact]
    public void WriteChunkHeader_DestinationTooSmall_Throws()
        => Assert.Throws<ArgumentException>(() => ChunkedWriter.WriteChunkHeader(new byte[3], 0x100));

    [Fact]
    public void WriteChunkHeader_Negative_Throws()
        => Assert.Throws<ArgumentOutOfRangeException>(() => ChunkedWriter.WriteChunkHeader(new byte[18], -1));

    [Fact]
    public void Writer_Output_RoundTripsThroughDecoder()
    {
        byte[] payload = Bytes(new string('x', 5000));
        ArrayBufferWriter<byte> writer = new();
        for (int offset = 0; offset < payload.Length; offset += 1234)
        {
            int length = Math.Min(1234, payload.Length - offset);
            writer.Advance(ChunkedWriter.WriteChunkHeader(writer.GetSpan(ChunkedWriter.MaxChunkHeaderLength), length));
            writer.Write(payload.AsSpan(offset, length));
            writer.Write(ChunkedWriter.Crlf);
        }
        writer.Write(ChunkedWriter.LastChunk);

        ChunkedDecoder decoder = default;
        ReadOnlySequence<byte> rest = new(writer.WrittenMemory);
        List<byte> output = [];
        ChunkStatus status;
        while ((status = decoder.Read(rest, out ReadOnlySequence<byte> data, out SequencePosition consumed, out _)) == ChunkStatus.Data)
        {
            output.AddRange(data.ToArray());
            rest = rest.Slice(consumed);
        }
        Assert.Equal(ChunkStatus.Done, status);
        Assert.Equal(payload, output.ToArray());
    }
}
