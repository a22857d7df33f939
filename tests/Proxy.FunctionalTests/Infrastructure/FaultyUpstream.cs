namespace Proxy.FunctionalTests.Infrastructure;

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
            await connection.WriteAsync(Wire.Response(Status, Name, ("x-upstream", Name)), ct);
            if (request.ConnectionHas("close"))
            {
                return;
            }
        }
    }

    public ValueTask DisposeAsync() => Recording.DisposeAsync();
}
