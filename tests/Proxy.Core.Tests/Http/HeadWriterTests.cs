using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using CsCheck;
using Proxy.Http;

namespace Proxy.Core.Tests.Http;

public class HeadWriterTests
{
    /// <summary>
    /// A pipe writer whose spans are at most <c>spanSize</c> bytes whatever the hint (as a pipe near the end of its
    /// block gives), so a head crosses spans, and that counts its GetSpan and Advance calls.
    /// </summary>
    private sealed class SmallSpanWriter(int spanSize) : PipeWriter
    {
        private byte[] _span = new byte[spanSize];
        private readonly List<byte> _written = [];
        private int _granted;

        public int GetSpanCalls { get; private set; }
        public int AdvanceCalls { get; private set; }
        public string Written => Encoding.ASCII.GetString(_written.ToArray());

        public override Span<byte> GetSpan(int sizeHint = 0)
        {
            GetSpanCalls++;
            _span = new byte[spanSize];
            _granted = spanSize;
            return _span;
        }

        public override Memory<byte> GetMemory(int sizeHint = 0) => throw new NotSupportedException();

        public override void Advance(int bytes)
        {
            Assert.InRange(bytes, 0, _granted);
            AdvanceCalls++;
            _written.AddRange(_span.AsSpan(0, bytes).ToArray());
            _granted = 0;
        }

        public override void CancelPendingFlush()
        {
        }

        public override void Complete(Exception? exception = null)
        {
        }

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default) => default;
    }

    private static string WriteHead(PipeWriter output)
    {
        var writer = new HeadWriter(output);
        writer.Write("HTTP/1.1 "u8);
        writer.WriteNumber(200);
        writer.Write(" OK\r\n"u8);
        writer.WriteField("content-type"u8, "text/plain"u8);
        writer.WriteField("x-long"u8, Encoding.ASCII.GetBytes(new string('v', 300)));
        writer.Write("content-length: "u8);
        writer.WriteNumber(1234567890123);
        writer.Write("\r\n"u8);
        Span<byte> free = writer.Reserve(64);
        "x-reserved: 1\r\n"u8.CopyTo(free);
        writer.Advance(15);
        writer.Write("\r\n"u8);
        writer.Commit();
        return "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-long: " + new string('v', 300)
            + "\r\ncontent-length: 1234567890123\r\nx-reserved: 1\r\n\r\n";
    }

    [Fact]
    public void OneSpan_OneGetSpanAndOneAdvance()
    {
        var output = new SmallSpanWriter(4096);
        string expected = WriteHead(output);
        Assert.Equal(expected, output.Written);
        Assert.Equal(1, output.GetSpanCalls);
        Assert.Equal(1, output.AdvanceCalls);
    }

    [Theory]
    [InlineData(64)]
    [InlineData(65)]
    [InlineData(100)]
    [InlineData(301)]
    public void SmallSpans_HeadCrossesThemIntact(int spanSize)
    {
        // At least 64: the head reserves 64 bytes once, and a pipe gives at least what is asked.
        var output = new SmallSpanWriter(spanSize);
        string expected = WriteHead(output);
        Assert.Equal(expected, output.Written);
        Assert.True(output.GetSpanCalls > 1);
        Assert.Equal(output.GetSpanCalls, output.AdvanceCalls);
    }

    [Fact]
    public void CommitWithNothingWritten_AdvancesNothing()
    {
        var output = new SmallSpanWriter(128);
        var writer = new HeadWriter(output);
        writer.Commit();
        writer.Commit();
        Assert.Equal(0, output.AdvanceCalls);
        Assert.Equal("", output.Written);
    }

    [Fact]
    public void AfterCommit_WritingGoesOnInANewSpan()
    {
        var output = new SmallSpanWriter(128);
        var writer = new HeadWriter(output);
        writer.Write("abc"u8);
        writer.Commit();
        writer.WriteField("n"u8, "v"u8);
        writer.Commit();
        Assert.Equal("abcn: v\r\n", output.Written);
        Assert.Equal(2, output.AdvanceCalls);
    }

    [Fact]
    public void Pipe_RandomPieces_ReadBackExactly()
    {
        Gen.Select(Gen.Int[1, 2000], Gen.String[Gen.Char['a', 'z'], 0, 5000].Array[1, 40]).Sample((hint, pieces) =>
        {
            var pipe = new Pipe(new PipeOptions(minimumSegmentSize: hint, pauseWriterThreshold: 0, useSynchronizationContext: false));
            var writer = new HeadWriter(pipe.Writer);
            foreach (string piece in pieces)
            {
                writer.Write(Encoding.ASCII.GetBytes(piece));
            }
            writer.Commit();
            pipe.Writer.FlushAsync().AsTask().GetAwaiter().GetResult();
            pipe.Reader.TryRead(out ReadResult result);
            string read = Encoding.ASCII.GetString(result.Buffer.ToArray());
            pipe.Reader.AdvanceTo(result.Buffer.End);
            return read == string.Concat(pieces);
        }, iter: 200);
    }
}
