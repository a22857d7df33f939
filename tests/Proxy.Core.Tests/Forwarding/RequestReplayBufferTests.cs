using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using Proxy.Configuration;
using Proxy.Forwarding;
using Proxy.Model;
using Proxy.Transport;

namespace Proxy.Core.Tests.Forwarding;

public class RequestReplayBufferTests
{
    private static byte[] Pattern(int length)
    {
        var bytes = new byte[length];
        for (int i = 0; i < length; i++)
        {
            bytes[i] = (byte)(i * 31 + 7);
        }
        return bytes;
    }

    private static byte[] Kept(RequestReplayBuffer buffer)
    {
        var bytes = new List<byte>();
        for (int i = 0; i < buffer.SegmentCount; i++)
        {
            bytes.AddRange(buffer.GetSegment(i).ToArray());
        }
        return [.. bytes];
    }

    private static async Task<byte[]> WrittenAsync(Action<PipeWriter> write)
    {
        var pipe = new Pipe();
        write(pipe.Writer);
        await pipe.Writer.CompleteAsync();
        var stream = new MemoryStream();
        await pipe.Reader.CopyToAsync(stream);
        return stream.ToArray();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(100)]
    [InlineData(64)]
    [InlineData(65)]
    [InlineData(1000)]
    public void Append_AcrossBlockBoundaries_KeepsEveryByteInOrder(int length)
    {
        var pool = new BlockMemoryPool(64, maxRetained: 16);
        var buffer = new RequestReplayBuffer(pool);
        buffer.Start(limit: 4096);
        byte[] body = Pattern(length);

        // Uneven pieces, some spanning blocks, as a pump's reads would hand them over.
        for (int at = 0; at < length; at += 37)
        {
            Assert.True(buffer.Append(new ReadOnlySequence<byte>(body, at, Math.Min(37, length - at))));
        }

        Assert.False(buffer.IsOverLimit);
        Assert.Equal(length, buffer.Length);
        Assert.Equal(body, Kept(buffer));
        Assert.Equal((length + 63) / 64, buffer.SegmentCount);
    }

    [Fact]
    public void Append_PastLimit_DropsCopyAndReturnsBlocks()
    {
        var pool = new BlockMemoryPool(64, maxRetained: 16);
        var buffer = new RequestReplayBuffer(pool);
        buffer.Start(limit: 200);

        Assert.True(buffer.Append(Pattern(150)));
        Assert.Equal(0, pool.Retained);
        Assert.False(buffer.Append(Pattern(51)));

        Assert.True(buffer.IsOverLimit);
        Assert.Equal(0, buffer.Length);
        Assert.Equal(0, buffer.SegmentCount);
        Assert.Equal(3, pool.Retained);
        // Once over, later bytes are not kept either.
        Assert.False(buffer.Append(Pattern(1)));
    }

    [Fact]
    public void Append_ExactlyAtLimit_StaysReplayable()
    {
        var buffer = new RequestReplayBuffer(new BlockMemoryPool(64, maxRetained: 16));
        buffer.Start(limit: 128);

        Assert.True(buffer.Append(Pattern(128)));

        Assert.False(buffer.IsOverLimit);
        Assert.Equal(128, buffer.Length);
    }

    [Fact]
    public void SetTrailers_CountedAgainstLimit()
    {
        var buffer = new RequestReplayBuffer(new BlockMemoryPool(64, maxRetained: 16));
        buffer.Start(limit: 100);
        buffer.Append(Pattern(90));

        Assert.False(buffer.SetTrailers("x-checksum: 1234\r\n"u8));

        Assert.True(buffer.IsOverLimit);
        Assert.True(buffer.TrailerSection.IsEmpty);
    }

    [Fact]
    public void Reset_AfterUse_ReturnsEveryBlockAndClearsOverLimit()
    {
        var pool = new BlockMemoryPool(64, maxRetained: 16);
        var buffer = new RequestReplayBuffer(pool);
        long heldBefore = RequestReplayBuffer.BlocksHeld;
        buffer.Start(limit: 1000);
        buffer.Append(Pattern(300));
        buffer.SetTrailers("a: b\r\n"u8);

        buffer.Reset();

        Assert.Equal(5, pool.Retained);
        Assert.Equal(0, buffer.Length);
        Assert.True(buffer.TrailerSection.IsEmpty);
        Assert.False(buffer.IsOverLimit);
        // Other tests may hold blocks concurrently; this buffer's own are all given back.
        Assert.True(RequestReplayBuffer.BlocksHeld <= heldBefore);
    }

    [Fact]
    public void Start_WarmBuffer_RentsFromPoolWithoutAllocating()
    {
        var pool = new BlockMemoryPool(1024, maxRetained: 16);
        var buffer = new RequestReplayBuffer(pool);
        byte[] body = Pattern(3000);
        var sequence = new ReadOnlySequence<byte>(body);

        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            buffer.Start(64 * 1024);
            buffer.Append(sequence);
            buffer.Reset();
        }, iterations: 100);

        Assert.Equal(0, allocated);
    }

    [Fact]
    public async Task WriteHttp1_ContentLength_WritesContentAsIs()
    {
        var buffer = new RequestReplayBuffer(new BlockMemoryPool(64, maxRetained: 16));
        buffer.Start(limit: 1000);
        byte[] body = Pattern(150);
        buffer.Append(body);

        byte[] written = await WrittenAsync(w => buffer.WriteHttp1(w, BodyFraming.ContentLength));

        Assert.Equal(body, written);
    }

    [Fact]
    public async Task WriteHttp1_ChunkedWithTrailers_OneChunkThenLastChunkAndTrailers()
    {
        var buffer = new RequestReplayBuffer(new BlockMemoryPool(64, maxRetained: 16));
        buffer.Start(limit: 1000);
        buffer.Append("hello, "u8);
        buffer.Append("world"u8);
        buffer.SetTrailers("x-checksum: 42\r\n"u8);

        byte[] written = await WrittenAsync(w => buffer.WriteHttp1(w, BodyFraming.Chunked));

        Assert.Equal("c\r\nhello, world\r\n0\r\nx-checksum: 42\r\n\r\n", Encoding.ASCII.GetString(written));
    }

    [Fact]
    public async Task WriteHttp1_ChunkedEmpty_WritesLastChunkOnly()
    {
        var buffer = new RequestReplayBuffer(new BlockMemoryPool(64, maxRetained: 16));
        buffer.Start(limit: 1000);

        byte[] written = await WrittenAsync(w => buffer.WriteHttp1(w, BodyFraming.Chunked));

        Assert.Equal("0\r\n\r\n", Encoding.ASCII.GetString(written));
    }

    private static ConfigLoadResult Load(string retry) => ConfigLoader.LoadText(
        "listeners:\n  - { name: public, address: \"127.0.0.1:8080\" }\nclusters:\n  backend:\n"
        + "    destinations: [\"http://127.0.0.1:9000\"]\n" + retry + "\n", "t.yaml");

    [Theory]
    [InlineData("    retry: { attempts: 1 }", 64 * 1024)]
    [InlineData("    retry: { max_replay_body_bytes: 1MiB }", 1024 * 1024)]
    [InlineData("    retry: { max_replay_body_bytes: 0 }", 0)]
    [InlineData("    retry: { max_replay_body_bytes: 512 }", 512)]
    public void Load_MaxReplayBodyBytes_Compiles(string retry, long expected)
    {
        var result = Load(retry);

        Assert.Empty(result.Errors);
        Assert.Equal(expected, result.Snapshot!.Clusters["backend"].Retry!.MaxReplayBodyBytes);
    }

    [Theory]
    [InlineData("    retry: { max_replay_body_bytes: lots }")]
    [InlineData("    retry: { max_replay_body_bytes: 1GiB }")]
    [InlineData("    retry: { max_replay_body_bytes: -1 }")]
    public void Load_MaxReplayBodyBytesInvalid_ReportsError(string retry)
    {
        var result = Load(retry);

        Assert.Contains(result.Errors, e => e.ToString().Contains("max_replay_body_bytes", StringComparison.Ordinal));
    }
}
