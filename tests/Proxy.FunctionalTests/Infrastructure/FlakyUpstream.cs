using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>What a <see cref="FlakyUpstream"/> does in its current phase.</summary>
internal enum FlakyPhase
{
    Healthy,
    /// <summary>Its listening socket is closed: connections are refused by the kernel.</summary>
    Refuse,
    /// <summary>Reads each request, then aborts the connection with a RST.</summary>
    Reset,
    /// <summary>Answers 503.</summary>
    Status503,
}

/// <summary>
/// A keep-alive upstream on a fixed port that goes through failure phases in turn (refuses, resets, answers 503,
/// then is healthy again) every <c>phase</c>, for chaos runs. Unlike <see cref="FaultyUpstream"/> it can really
/// refuse: it closes its listening socket and binds the same port again afterwards.
/// </summary>
internal sealed class FlakyUpstream : IAsyncDisposable
{
    private static readonly FlakyPhase[] s_cycle = [FlakyPhase.Refuse, FlakyPhase.Healthy, FlakyPhase.Reset, FlakyPhase.Healthy, FlakyPhase.Status503, FlakyPhase.Healthy];
    private static readonly byte[] s_ok = Encoding.ASCII.GetBytes("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-upstream: flaky\r\n\r\nflaky");
    private static readonly byte[] s_unavailable = Encoding.ASCII.GetBytes("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy");

    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _connections = [];
    private readonly Task _cycle;
    private Socket? _listener;
    private volatile FlakyPhase _phase = FlakyPhase.Healthy;
    private long _served, _failed;

    /// <param name="phase">How long each phase lasts; <see cref="Timeout.InfiniteTimeSpan"/>: always healthy (a
    /// steady upstream that, unlike <see cref="RecordingUpstream"/>, keeps no record, so memory can be measured).</param>
    public FlakyUpstream(TimeSpan phase)
    {
        _listener = Listen(0);
        Port = ((IPEndPoint)_listener.LocalEndPoint!).Port;
        _ = AcceptLoopAsync(_listener);
        _cycle = CycleAsync(phase);
    }

    public int Port { get; }
    public string Address => $"http://127.0.0.1:{Port}";
    public FlakyPhase Phase => _phase;
    /// <summary>Requests answered 200 / requests failed on purpose (reset or 503).</summary>
    public long Served => Interlocked.Read(ref _served);
    public long Failed => Interlocked.Read(ref _failed);
    public int PhasesRun { get; private set; }

    private static Socket Listen(int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, port));
        socket.Listen(512);
        return socket;
    }

    private async Task CycleAsync(TimeSpan phase)
    {
        try
        {
            if (phase == Timeout.InfiniteTimeSpan)
            {
                return;
            }
            for (int i = 0; ; i = (i + 1) % s_cycle.Length)
            {
                await Task.Delay(phase, _stop.Token);
                var next = s_cycle[i];
                if (next == FlakyPhase.Refuse)
                {
                    // Close the listener and every open connection: pooled connections die, new ones are refused.
                    _phase = next;
                    _listener?.Close();
                    _listener = null;
                    CloseConnections();
                }
                else
                {
                    if (_listener is null)
                    {
                        _listener = Listen(Port);
                        _ = AcceptLoopAsync(_listener);
                    }
                    _phase = next;
                }
                PhasesRun++;
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void CloseConnections()
    {
        lock (_connections)
        {
            foreach (var c in _connections)
            {
                c.Close();
            }
            _connections.Clear();
        }
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_stop.Token);
            }
            catch (Exception)
            {
                return;
            }
            lock (_connections)
            {
                _connections.Add(client);
            }
            _ = ServeAsync(client);
        }
    }

    private async Task ServeAsync(Socket client)
    {
        var buffer = new byte[4096];
        int filled = 0;
        try
        {
            while (true)
            {
                int end;
                while ((end = buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0)
                {
                    int n = await client.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, _stop.Token);
                    if (n == 0)
                    {
                        return;
                    }
                    filled += n;
                }
                // GET requests only: no body to skip.
                int consumed = end + 4;
                buffer.AsSpan(consumed, filled - consumed).CopyTo(buffer);
                filled -= consumed;
                switch (_phase)
                {
                    case FlakyPhase.Reset:
                    case FlakyPhase.Refuse:
                        Interlocked.Increment(ref _failed);
                        client.LingerState = new LingerOption(true, 0);
                        return;
                    case FlakyPhase.Status503:
                        Interlocked.Increment(ref _failed);
                        await client.SendAsync(s_unavailable, SocketFlags.None, _stop.Token);
                        break;
                    default:
                        Interlocked.Increment(ref _served);
                        await client.SendAsync(s_ok, SocketFlags.None, _stop.Token);
                        break;
                }
            }
        }
        catch (Exception)
        {
        }
        finally
        {
            lock (_connections)
            {
                _connections.Remove(client);
            }
            client.Close();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _cycle;
        _listener?.Close();
        CloseConnections();
        _stop.Dispose();
    }
}
