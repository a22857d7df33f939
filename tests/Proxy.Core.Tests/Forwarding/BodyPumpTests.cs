using System.IO.Pipelines;
using System.Text;
using Proxy.Forwarding;

namespace Proxy.Core.Tests.Forwarding;

public class BodyPumpTests
{
    private static async Task<Pipe> SourceAsync(string bytes)
    {
        var source = new Pipe();
        await source.Writer.WriteAsync(Encoding.ASCII.GetBytes(bytes));
        return source;
    }

    private static string Written(Pipe destination)
    {
        destination.Writer.Complete();
        Assert.True(destination.Reader.TryRead(out ReadResult result));
        return Encoding.ASCII.GetString(result.Buffer);
    }

    [Fact]
    public async Task TryCopyBuffered_WholeBodyBuffered_CopiesItAndLeavesWhatFollows()
    {
        Pipe source = await SourceAsync("helloNEXT");
        var destination = new Pipe();
        var pump = new BodyPump();

        Assert.True(pump.TryCopyBuffered(source.Reader, destination.Writer, 5));

        Assert.Equal("hello", Written(destination));
        Assert.Equal(5, pump.BytesRead);
        Assert.True(source.Reader.TryRead(out ReadResult rest));
        Assert.Equal("NEXT", Encoding.ASCII.GetString(rest.Buffer));
    }

    [Fact]
    public async Task TryCopyBuffered_BodyNotAllThere_ConsumesNothingAndCopyAsyncFinishesIt()
    {
        Pipe source = await SourceAsync("hel");
        var destination = new Pipe();
        var pump = new BodyPump();

        Assert.False(pump.TryCopyBuffered(source.Reader, destination.Writer, 5));

        // The pump's own copy still sees the three bytes, then waits for the rest.
        ValueTask<PumpResult> copy = pump.CopyAsync(source.Reader, destination.Writer, BodyFraming.ContentLength, 5,
            BodyFraming.ContentLength, long.MaxValue, new NoTimer());
        Assert.False(copy.IsCompleted);
        await source.Writer.WriteAsync("lo"u8.ToArray());
        Assert.Equal(PumpResult.Completed, await copy);
        Assert.Equal("hello", Written(destination));
    }

    [Fact]
    public async Task TryCopyBuffered_CancelPending_LeavesTheCancelForTheNextRead()
    {
        Pipe source = await SourceAsync("hello");
        source.Reader.CancelPendingRead();
        var destination = new Pipe();
        var pump = new BodyPump();

        Assert.False(pump.TryCopyBuffered(source.Reader, destination.Writer, 5));

        ReadResult next = await source.Reader.ReadAsync();
        Assert.True(next.IsCanceled);
        Assert.Equal(5, next.Buffer.Length);
    }

    private sealed class NoTimer : IBodyPumpTimer
    {
        public void ArmRead(PipeReader source) { }
        public void ArmWrite() { }
        public void DisarmPump() { }
        public void LastFlush(BodyPump pump) { }
    }
}
