namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>The checks the live fuzz tests share.</summary>
internal static class FuzzAssert
{
    /// <summary>
    /// A control request right after a fuzz case gets its own answer (the upstream answers <c>/control/{i}</c> with
    /// "answer to /control/{i}"): nothing of the broken exchange reached it through the pool.
    /// </summary>
    public static async Task ControlAnsweredAsync(TestProxy proxy, int index, int seed, string upstreamSent)
    {
        await using var control = await proxy.ConnectAsync();
        await control.SendAsync($"GET /control/{index} HTTP/1.1\r\nHost: a\r\n\r\n");
        var answer = await control.ReadResponseAsync(timeout: TimeSpan.FromSeconds(10));
        Assert.True(answer.Status == 200 && answer.BodyText == $"answer to /control/{index}",
            $"case {index} (seed {seed + index}): the next request got {answer.Status} '{answer.BodyText}'; upstream had sent: {upstreamSent}");
    }

    /// <summary>Every client has gone: within 15 s the proxy holds no connection of theirs (a stuck exchange would keep one).</summary>
    public static async Task AllConnectionsReleasedAsync(TestProxy proxy)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (proxy.Server.OpenConnections > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        Assert.True(proxy.Server.OpenConnections == 0, $"{proxy.Server.OpenConnections} connection(s) still open after every client left");
    }
}
