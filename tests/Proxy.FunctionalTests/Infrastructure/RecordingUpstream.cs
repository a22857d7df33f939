using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>Scripted behaviour of an upstream for one accepted connection.</summary>
internal delegate Task UpstreamHandler(UpstreamConnection connection, CancellationToken cancellationToken);

/// <summary>
/// A raw TCP upstream on 127.0.0.1:0 that records every byte it receives per connection, counts connections and
/// runs a scripted <see cref="UpstreamHandler"/> on each (see <see cref="UpstreamBehaviors"/>).
/// </summary>
internal sealed class RecordingUpstream : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly UpstreamHandler _handler;
    private readonly CancellationTokenSource _stopping = new();
    private readonly List<UpstreamConnection> _connections = [];
    private readonly List<HttpMessage> _requests = [];
    private readonly List<Task> _connectionTasks = [];
    private readonly Task _acceptLoop;
    private readonly int _recordLimit;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private RecordingUpstream(UpstreamHandler handler, int recordLimit)
    {
        _handler = handler;
        _recordLimit = recordLimit;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start(backlog: 512);
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _acceptLoop = AcceptLoopAsync();
    }

    /// <param name="recordLimit">Bytes kept per connection (the rest is only counted), so big bodies stay cheap.</param>
    public static RecordingUpstream Start(UpstreamHandler handler, int recordLimit = 1024 * 1024) => new(handler, recordLimit);

    public int Port { get; }

    /// <summary>The cluster destination address to put in the proxy's config.</summary>
    public string Address => $"http://127.0.0.1:{Port}";

    public int ConnectionCount
    {
        get { lock (_connections) { return _connections.Count; } }
    }

    public UpstreamConnection[] Connections
    {
        get { lock (_connections) { return [.. _connections]; } }
    }

    /// <summary>Every request parsed by a behaviour, across connections, in the order they completed.</summary>
    public HttpMessage[] Requests
    {
        get { lock (_connections) { return [.. _requests]; } }
    }

    /// <summary>Everything received on every connection (up to the record limit each), as Latin-1 text.</summary>
    public string ReceivedText
    {
        get
        {
            var sb = new StringBuilder();
            foreach (var c in Connections)
            {
                sb.Append(c.ReceivedText);
            }
            return sb.ToString();
        }
    }

    /// <summary>Errors raised by behaviours (for example the tests' parser refusing what the proxy forwarded).</summary>
    public Exception[] Errors => Connections.Where(c => c.Error is not null).Select(c => c.Error!).ToArray();

    /// <summary>Waits until at least <paramref name="count"/> requests have been parsed.</summary>
    public Task<HttpMessage> WaitForRequestAsync(int count = 1, TimeSpan? timeout = null) =>
        WaitUntilAsync(() =>
        {
            lock (_connections)
            {
                return _requests.Count >= count ? _requests[count - 1] : null;
            }
        }, timeout, $"{count} upstream request(s)");

    /// <summary>Waits until at least <paramref name="count"/> connections have been accepted.</summary>
    public Task<UpstreamConnection> WaitForConnectionAsync(int count = 1, TimeSpan? timeout = null) =>
        WaitUntilAsync(() =>
        {
            lock (_connections)
            {
                return _connections.Count >= count ? _connections[count - 1] : null;
            }
        }, timeout, $"{count} upstream connection(s)");

    internal void OnRequest(HttpMessage request)
    {
        lock (_connections)
        {
            _requests.Add(request);
        }
        Signal();
    }

    internal void Signal()
    {
        TaskCompletionSource changed;
        lock (_connections)
        {
            changed = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        changed.TrySetResult();
    }

    private async Task<T> WaitUntilAsync<T>(Func<T?> probe, TimeSpan? timeout, string what)
        where T : class
    {
        using var cts = new CancellationTokenSource(timeout ?? TestDefaults.Timeout);
        while (true)
        {
            Task changed;
            lock (_connections)
            {
                changed = _changed.Task;
            }
            if (probe() is { } result)
            {
                return result;
            }
            try
            {
                await changed.WaitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"Timed out waiting for {what}; upstream has {ConnectionCount} connection(s), {Requests.Length} request(s).");
            }
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptSocketAsync(_stopping.Token);
            }
            catch (Exception) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            socket.NoDelay = true;
            UpstreamConnection connection;
            lock (_connections)
            {
                connection = new UpstreamConnection(this, socket, _connections.Count, _recordLimit);
                _connections.Add(connection);
                _connectionTasks.Add(RunConnectionAsync(connection));
            }
            Signal();
        }
    }

    private async Task RunConnectionAsync(UpstreamConnection connection)
    {
        await Task.Yield();
        try
        {
            await _handler(connection, _stopping.Token);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !_stopping.IsCancellationRequested)
        {
            connection.Error = ex;
        }
        catch (OperationCanceledException)
        {
        }
        finally
        {
            connection.Close();
            Signal();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stopping.Cancel();
        _listener.Stop();
        Task[] tasks;
        lock (_connections)
        {
            tasks = [_acceptLoop, .. _connectionTasks];
        }
        foreach (var c in Connections)
        {
            c.Close();
        }
        try
        {
            await Task.WhenAll(tasks).WaitAsync(TestDefaults.Timeout);
        }
        catch (Exception)
        {
            // Behaviours end on cancellation or on the closed socket; what they threw is already recorded.
        }
        _stopping.Dispose();
    }
}

/// <summary>One accepted upstream connection: what it received, and helpers for behaviours.</summary>
internal sealed class UpstreamConnection
{
    private readonly RecordingUpstream _owner;
    private readonly RecordingStream _stream;
    private readonly TaskCompletionSource _peerClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<HttpMessage> _requests = [];
    private int _closed;

    internal UpstreamConnection(RecordingUpstream owner, Socket socket, int index, int recordLimit)
    {
        _owner = owner;
        Socket = socket;
        Index = index;
        _stream = new RecordingStream(new NetworkStream(socket, ownsSocket: false), recordLimit, () => _peerClosed.TrySetResult());
        Reader = new WireReader(_stream);
    }

    public int Index { get; }
    public Socket Socket { get; }
    public WireReader Reader { get; }
    public Exception? Error { get; internal set; }

    /// <summary>Bytes received so far (only the first record-limit bytes are kept).</summary>
    public byte[] Received => _stream.Recorded;
    public long ReceivedCount => _stream.Total;
    public string ReceivedText => Encoding.Latin1.GetString(Received);

    /// <summary>Completes when the peer (the proxy) closed its side or the connection ended.</summary>
    public Task PeerClosed => _peerClosed.Task;

    public HttpMessage[] Requests
    {
        get { lock (_requests) { return [.. _requests]; } }
    }

    /// <summary>Reads one request with the tests' own parser; null when the proxy closed the connection first.</summary>
    public async Task<HttpMessage?> ReadRequestAsync(CancellationToken cancellationToken, IBodySink? sink = null)
    {
        var request = await Http1Wire.ReadRequestAsync(Reader, sink, cancellationToken);
        if (request is not null)
        {
            lock (_requests)
            {
                _requests.Add(request);
            }
            _owner.OnRequest(request);
        }
        return request;
    }

    public Task WriteAsync(string text, CancellationToken cancellationToken) => WriteAsync(Encoding.Latin1.GetBytes(text), cancellationToken);

    public async Task WriteAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken) =>
        await _stream.WriteAsync(bytes, cancellationToken);

    /// <summary>Waits for the proxy to close its side, discarding anything else it sends; false on timeout.</summary>
    public async Task<bool> WaitForPeerCloseAsync(TimeSpan timeout)
    {
        try
        {
            using var cts = new CancellationTokenSource(timeout);
            var buffer = new byte[4096];
            while (await _stream.ReadAsync(buffer, cts.Token) > 0)
            {
            }
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        catch (IOException)
        {
            return true;
        }
    }

    /// <summary>Aborts the connection with a TCP RST (linger 0), as a crashing upstream would.</summary>
    public void Reset()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
        {
            try
            {
                Socket.LingerState = new LingerOption(true, 0);
            }
            catch (SocketException)
            {
            }
            Socket.Close();
            _peerClosed.TrySetResult();
        }
    }

    /// <summary>Graceful close (FIN).</summary>
    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
        {
            try
            {
                Socket.Shutdown(SocketShutdown.Both);
            }
            catch (SocketException)
            {
            }
            catch (ObjectDisposedException)
            {
            }
            Socket.Close();
            _peerClosed.TrySetResult();
        }
    }

    /// <summary>Passes reads through and keeps a capped copy of every received byte.</summary>
    private sealed class RecordingStream(Stream inner, int recordLimit, Action onEnd) : Stream
    {
        private readonly MemoryStream _recorded = new();

        public long Total { get; private set; }

        public byte[] Recorded
        {
            get { lock (_recorded) { return _recorded.ToArray(); } }
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            int n;
            try
            {
                n = await inner.ReadAsync(buffer, cancellationToken);
            }
            catch (IOException)
            {
                onEnd();
                throw;
            }
            if (n == 0)
            {
                onEnd();
                return 0;
            }
            lock (_recorded)
            {
                Total += n;
                var keep = (int)Math.Min(n, Math.Max(0, recordLimit - _recorded.Length));
                _recorded.Write(buffer.Span[..keep]);
            }
            return n;
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
            inner.WriteAsync(buffer, cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("Use async reads.");
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    }
}
