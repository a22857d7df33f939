using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Proxy.Transport;

namespace Proxy.Http2.Server;

/// <summary>
/// The in-memory transport one HTTP/2 stream's bridged HTTP/1.1 exchange runs over. Input is the synthesised
/// request (head, then body as the client's DATA arrives); Output is the HTTP/1.1 response the stream turns
/// into HEADERS and DATA. Reads of the input are counted so the stream can open its receive window as the
/// request body is consumed (RFC 9113 section 6.9). Pooled with its stream; the pipes are reset between uses.
/// </summary>
internal sealed class Http2StreamTransport : ClientTransport
{
    private readonly Http2Stream _stream;
    private readonly CountingReader _input;

    public override bool IsStream => true;

    public Http2StreamTransport(Http2Stream stream, ClientTransport connection)
        : base(connection.RemoteEndPoint)
    {
        _stream = stream;
        _isSecure = connection.IsSecure;
        _connection = connection;
        _input = new CountingReader(this);
    }

    private readonly bool _isSecure;
    /// <summary>The client connection carrying this stream (TLS details: the verified client certificate).</summary>
    private readonly ClientTransport _connection;

    public override bool IsSecure => _isSecure;

    public override string? ClientCertificateSubject => _connection.ClientCertificateSubject;

    public override byte[]? ClientCertificateSubjectBytes => _connection.ClientCertificateSubjectBytes;

    public override PipeReader Input => _input;

    public override PipeWriter Output => _stream.ResponsePipe.Writer;

    /// <summary>Nothing to half-close: the stream's end is its END_STREAM.</summary>
    public override void ShutdownSend()
    {
    }

    /// <summary>The HTTP/1.1 side gave up (write timeout, broken exchange): the stream is reset.</summary>
    public override void Abort() => _stream.AbortFromBridge();

    public override void Dispose()
    {
    }

    /// <summary>Total octets the HTTP/1.1 side consumed from the input since the stream started.</summary>
    internal long Consumed;

    /// <summary>A <see cref="PipeReader"/> over the request pipe that reports consumed octets to the stream.</summary>
    private sealed class CountingReader(Http2StreamTransport owner) : PipeReader
    {
        private ReadOnlySequence<byte> _last;

        private PipeReader Inner => owner._stream.RequestPipe.Reader;

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            long length = _last.Slice(_last.Start, consumed).Length;
            _last = default;
            Inner.AdvanceTo(consumed, examined);
            if (length > 0)
            {
                owner.Consumed += length;
                owner._stream.OnRequestConsumed(owner.Consumed);
            }
        }

        public override void CancelPendingRead() => Inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => Inner.Complete(exception);

        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            ValueTask<ReadResult> pending = Inner.ReadAsync(cancellationToken);
            if (pending.IsCompletedSuccessfully)
            {
                ReadResult result = pending.Result;
                _last = result.Buffer;
                return new ValueTask<ReadResult>(result);
            }
            return ReadSlowAsync(pending);
        }

        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        private async ValueTask<ReadResult> ReadSlowAsync(ValueTask<ReadResult> pending)
        {
            ReadResult result = await pending.ConfigureAwait(false);
            _last = result.Buffer;
            return result;
        }

        public override bool TryRead(out ReadResult result)
        {
            if (Inner.TryRead(out result))
            {
                _last = result.Buffer;
                return true;
            }
            return false;
        }
    }
}
