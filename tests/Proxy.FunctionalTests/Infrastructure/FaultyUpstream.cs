namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>How a <see cref="FaultyUpstream"/> misbehaves on ordinary requests (beyond its status and delay).</summary>
internal enum UpstreamFault
{
    None,
    /// <summary>Reads the request, then aborts the connection with a RST before any byte of the answer.</summary>
    ResetBeforeHead,
    /// <summary>Never answers (the connection stays open).</summary>
    StallHead,
    /// <summary>Sends the head and half of a 64-byte body, then stalls with the connection open.</summary>
    StallBody,
    /// <summary>Sends a 64-byte body one byte every <see cref="FaultyUpstream.TrickleInterval"/>.</summary>
    TrickleBody,
}

/// <summary>
/// A keep-alive upstream whose faults a test switches while it runs: the status of ordinary requests, the status
/// of its health endpoint, and a delay before each ordinary answer. Answers carry <c>x-upstream: {name}</c> and the
/// body "{name}", so a test can tell which destination served a request.
/// </summary>
internal sealed class FaultyUpstream : IAsyncDisposable
{
    private volatile int _status = 200;
    private volatile int _healthStatus = 200;
    private long _delayMs;
    private volatile UpstreamFault _fault;

    private FaultyUpstream(string name, string healthPath)
    {
        Name = name;
        HealthPath = healthPath;
        Recording = RecordingUpstream.Start(HandleAsync);
    }

    public static FaultyUpstream Start(string name, string healthPath = "/healthz") => new(name, healthPath);

    public string Name { get; }
    public string HealthPath { get; }
    public RecordingUpstream Recording { get; }
    public string Address => Recording.Address;

    /// <summary>Status of every request but the health endpoint's.</summary>
    public int Status { get => _status; set => _status = value; }

    /// <summary>Status of the health endpoint.</summary>
    public int HealthStatus { get => _healthStatus; set => _healthStatus = value; }

    public TimeSpan Delay
    {
        get => TimeSpan.FromMilliseconds(Interlocked.Read(ref _delayMs));
        set => Interlocked.Exchange(ref _delayMs, (long)value.TotalMilliseconds);
    }

    public UpstreamFault Fault { get => _fault; set => _fault = value; }

    /// <summary>Pause between body bytes for <see cref="UpstreamFault.TrickleBody"/>.</summary>
    public TimeSpan TrickleInterval { get; set; } = TimeSpan.FromMilliseconds(50);

    /// <summary>Requests received other than health probes.</summary>
    public int TrafficCount => Recording.Requests.Count(r => r.Target != HealthPath);

    /// <summary>Health probes received.</summary>
    public int ProbeCount => Recording.Requests.Count(r => r.Target == HealthPath);

    private async Task HandleAsync(UpstreamConnection connection, CancellationToken ct)
    {
        while (await connection.ReadRequestAsync(ct) is { } request)
        {
            if (request.Target == HealthPath)
            {
                await connection.WriteAsync(Wire.Response(HealthStatus, "health", ("connection", "close")), ct);
                return;
            }
            if (Delay > TimeSpan.Zero)
            {
                await Task.Delay(Delay, ct);
            }
            switch (Fault)
            {
                case UpstreamFault.ResetBeforeHead:
                    connection.Reset();
                    return;
                case UpstreamFault.StallHead:
                    await Task.Delay(Timeout.Infinite, ct);
                    return;
                case UpstreamFault.StallBody:
                    await connection.WriteAsync($"HTTP/1.1 {Status} OK\r\ncontent-length: 64\r\nx-upstream: {Name}\r\n\r\n" + new string('a', 32), ct);
                    await Task.Delay(Timeout.Infinite, ct);
                    return;
                case UpstreamFault.TrickleBody:
                    await connection.WriteAsync($"HTTP/1.1 {Status} OK\r\ncontent-length: 64\r\nx-upstream: {Name}\r\n\r\n", ct);
                    for (int i = 0; i < 64; i++)
                    {
                        await Task.Delay(TrickleInterval, ct);
                        await connection.WriteAsync("a", ct);
                    }
                    continue;
            }
            await connection.WriteAsync(Wire.Response(Status, Name, ("x-upstream", Name)), ct);
            if (request.ConnectionHas("close"))
            {
                return;
            }
        }
    }

    public ValueTask DisposeAsync() => Recording.DisposeAsync();
}
