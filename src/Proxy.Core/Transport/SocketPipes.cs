using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;

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
        pool: BlockMemoryPool.Large, bufferSize: BlockMemoryPool.Large.BlockSize, minimumReadSize: 2048, leaveOpen: true,
        useZeroByteReads: false);

    private static readonly StreamPipeWriterOptions s_writerOptions = new(
        pool: BlockMemoryPool.Large, minimumBufferSize: BlockMemoryPool.Large.BlockSize, leaveOpen: true);

    public static (NetworkStream Stream, PipeReader Input, PipeWriter Output) Create(Socket socket, bool upstream = false)
    {
        var stream = new NetworkStream(socket, ownsSocket: false);
        var (input, output) = Create(stream, upstream);
        return (stream, input, output);
    }

    /// <summary>Pipes over any stream (an SslStream over the socket's NetworkStream) with the same options.</summary>
    public static (PipeReader Input, PipeWriter Output) Create(Stream stream, bool upstream = false)
        => (PipeReader.Create(stream, upstream ? s_upstreamReaderOptions : s_readerOptions), PipeWriter.Create(stream, s_writerOptions));
}
