namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>Blocking clients side by side, each on a thread of its own (no thread-pool work that would allocate).</summary>
internal static class ParallelThreads
{
    /// <summary>
    /// Runs <paramref name="body"/>(i) for every i below <paramref name="count"/>, each on its own thread, and waits for
    /// all; the first failure is rethrown here (an exception left on a thread would end the test host).
    /// </summary>
    public static void RunEach(int count, Action<int> body)
    {
        var threads = new Thread[count];
        Exception? failure = null;
        for (int c = 0; c < count; c++)
        {
            int index = c;
            threads[c] = new Thread(() =>
            {
                try
                {
                    body(index);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref failure, e, null);
                }
            });
            threads[c].Start();
        }
        foreach (Thread thread in threads)
        {
            thread.Join();
        }
        if (failure is not null)
        {
            throw new InvalidOperationException("a client failed", failure);
        }
    }
}
