using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Proxy.Transport.Epoll;

namespace Proxy.Transport;

/// <summary>
/// Pipe options shared by every socket. Reads use a zero-byte read before renting a buffer, so an idle
/// connection holds no receive memory; writes go straight to the socket on flush (no extra copy thread).
/// </summary>
internal static class SocketPipes
{
    private static readonly StreamPipeReaderOptions s_readerOptions = new(
        pool: BlockMemoryPool.Small, bufferSize: BlockMemoryPool.Small.BlockSize, minimumReadSize: 1024, leaveOpen: true,
        useZeroByteReads: true);

    // Upstream connections are few and busy: reading straight into a block saves the extra recv() of a
    // zero-byte read on every response. Idle pooled connections are capped by max_connections.
    private static readonly StreamPipeReaderOptions s_upstreamReaderOptions = new(
        pool: BlockMemoryPool.UpstreamRead, bufferSize: BlockMemoryPool.UpstreamRead.BlockSize, minimumReadSize: 2048, leaveOpen: true,
        useZeroByteReads: false);

    private static readonly StreamPipeWriterOptions s_writerOptions = new(
        pool: BlockMemoryPool.Large, minimumBufferSize: BlockMemoryPool.Large.BlockSize, leaveOpen: true);

    /// <summary>
    /// PROXY_SOCKET_ENGINE=epoll (Linux): sockets are driven by our edge-triggered <see cref="EpollEngine"/> instead of
    /// the runtime's engine. Read once at start-up; default is the runtime's engine.
    /// </summary>
    public static bool UseEpoll { get; } = EpollEngine.IsSupported
        && string.Equals(Environment.GetEnvironmentVariable("PROXY_SOCKET_ENGINE"), "epoll", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The stream over a connected socket (for plain pipes, or under an SslStream): an <see cref="EpollSocketStream"/>
    /// when <see cref="UseEpoll"/>, else a <see cref="NetworkStream"/>. Neither owns the socket; close it through
    /// <see cref="Abort"/> or <see cref="Close"/>, which leave the engine before the fd goes.
    /// </summary>
    public static Stream OpenStream(Socket socket)
        => UseEpoll ? new EpollSocketStream(socket) : new NetworkStream(socket, ownsSocket: false);

    /// <summary>
    /// Connects an outgoing socket and returns its stream: through the epoll engine when enabled (the runtime's
    /// ConnectAsync would register the fd with the runtime's engine too), else ConnectAsync and a NetworkStream.
    /// </summary>
    public static async ValueTask<Stream> ConnectAsync(Socket socket, EndPoint endPoint, CancellationToken cancellationToken)
    {
        if (UseEpoll)
        {
            return await EpollSocketStream.ConnectAsync(socket, endPoint, cancellationToken).ConfigureAwait(false);
        }
        await socket.ConnectAsync(endPoint, cancellationToken).ConfigureAwait(false);
        return new NetworkStream(socket, ownsSocket: false);
    }

    /// <summary>
    /// Abortive close (RST), safe from any thread, pending reads and writes fail. An epoll stream leaves its engine
    /// first: Socket.Close spins while the stream's handle reference is held (on the engine thread, for ever).
    /// </summary>
    public static void Abort(Socket socket, Stream? stream)
    {
        if (stream is EpollSocketStream epoll)
        {
            epoll.Dispose();
        }
        socket.Close(0);
    }

    /// <summary>Graceful close: the stream first (see <see cref="Abort"/>), then the socket.</summary>
    public static void Close(Socket socket, Stream? stream)
    {
        stream?.Dispose();
        socket.Dispose();
    }

    public static (Stream Stream, PipeReader Input, PipeWriter Output) Create(Socket socket, bool upstream = false)
    {
        Stream stream = OpenStream(socket);
        var (input, output) = Create(stream, upstream);
        return (stream, input, output);
    }

    /// <summary>
    /// Pipes over a stream with the same options. Over an <see cref="EpollSocketStream"/> (plain TCP on our engine) the
    /// pipes work on the socket itself (<see cref="EpollPipeReader"/>, <see cref="EpollPipeWriter"/>): no
    /// StreamPipeReader/Writer and no async state machine per read or flush. Over anything else (an SslStream, a
    /// NetworkStream) they are the framework's stream pipes.
    /// </summary>
    public static (PipeReader Input, PipeWriter Output) Create(Stream stream, bool upstream = false)
    {
        if (stream is EpollSocketStream epoll)
        {
            var input = upstream
                ? new EpollPipeReader(epoll, BlockMemoryPool.UpstreamRead, useZeroByteReads: false, minimumReadSize: 2048)
                : new EpollPipeReader(epoll, BlockMemoryPool.Small, useZeroByteReads: true, minimumReadSize: 1024);
            return (input, new EpollPipeWriter(epoll, BlockMemoryPool.Large));
        }
        return (PipeReader.Create(stream, upstream ? s_upstreamReaderOptions : s_readerOptions), PipeWriter.Create(stream, s_writerOptions));
    }

    /// <summary>
    /// Pipes of a client connection over TLS. On our engine the reader is an <see cref="EpollPipeReader"/> that waits
    /// on the socket before it asks the SslStream (no async state machine of the SslStream's per request; see that
    /// class); the writer is an <see cref="EpollPipeWriter"/> that hands each block to the SslStream, and whose flush
    /// completes synchronously while the socket takes the bytes.
    /// </summary>
    public static (PipeReader Input, PipeWriter Output) CreateTls(SslStream ssl, Stream network)
    {
        if (network is EpollSocketStream epoll)
        {
            return (new EpollPipeReader(epoll, ssl, BlockMemoryPool.Small, minimumReadSize: 1024), new EpollPipeWriter(epoll, ssl, BlockMemoryPool.Large));
        }
        return Create(ssl);
    }
}
