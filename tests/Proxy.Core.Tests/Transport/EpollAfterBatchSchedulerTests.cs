using System.Collections.Concurrent;
using Proxy.Transport;
using Proxy.Transport.Epoll;

namespace Proxy.Core.Tests.Transport;

/// <summary>
/// <see cref="EpollEngine.AfterBatch"/>: on an engine thread, work waits for the end of the engine's pass and then runs
/// on that same thread, in order; anywhere else it goes to the thread pool.
/// </summary>
public class EpollAfterBatchSchedulerTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task OnAnEngineThread_WorkRunsAfterThePass_OnThatThread_InOrder()
    {
        var (server, client) = LoopbackPair.Create();
        using var _ = client;
        var stream = new EpollSocketStream(server);
        try
        {
            (string? engineThread, string? ranOn, string[] order) = await ScheduleFromTheEngineThread(stream, client);

            Assert.True(engineThread?.StartsWith("proxy-epoll-", StringComparison.Ordinal) == true, $"ran on {engineThread ?? "an unnamed thread"} ({string.Join(",", order)})");
            Assert.Equal(engineThread, ranOn);
            Assert.Equal(["scheduled", "first", "second"], order);
        }
        finally
        {
            SocketPipes.Close(server, stream);
        }
    }

    /// <summary>Waits for a read, so that the rest runs inline in the engine's pass, and schedules two items from there.</summary>
    private static async Task<(string? EngineThread, string? RanOn, string[] Order)> ScheduleFromTheEngineThread(
        EpollSocketStream stream, System.Net.Sockets.Socket client)
    {
        ValueTask<int> read = stream.ReadAsync(new byte[16]);
        // Sent once this method waits: a read that completed before the await would go on on this thread instead.
        Task send = Task.Delay(100).ContinueWith(_ => client.Send("x"u8), TaskScheduler.Default);
        await read.ConfigureAwait(false);

        string? engineThread = Thread.CurrentThread.Name;
        var order = new ConcurrentQueue<string>();
        var done = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        EpollEngine.AfterBatch.Schedule(_ => order.Enqueue("first"), null);
        EpollEngine.AfterBatch.Schedule(_ =>
        {
            order.Enqueue("second");
            done.SetResult(Thread.CurrentThread.Name);
        }, null);
        order.Enqueue("scheduled");

        string? ranOn = await done.Task.WaitAsync(s_timeout).ConfigureAwait(false);
        await send.ConfigureAwait(false);
        return (engineThread, ranOn, order.ToArray());
    }

    [Fact]
    public async Task OffTheEngineThreads_WorkGoesToTheThreadPool()
    {
        var done = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);

        EpollEngine.AfterBatch.Schedule(_ => done.SetResult(Thread.CurrentThread.IsThreadPoolThread), null);

        Assert.True(await done.Task.WaitAsync(s_timeout));
    }
}
