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
        ClientCertificateMissing = connection.ClientCertificateMissing;
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

    /// <summary>
    /// The stream's whole request is <paramref name="request"/> (a head with END_STREAM): the input serves it and then
    /// its end, without the request pipe. Called by <see cref="Http2Stream.Start"/> before the bridge runs.
    /// </summary>
    internal void ServeFixed(ReadOnlyMemory<byte> request) => _input.ServeFixed(request);

    /// <summary>The input reads the request pipe (a body follows the head). Called by <see cref="Http2Stream.Start"/>.</summary>
    internal void ServePipe() => _input.ServePipe();

    /// <summary>
    /// Readies the input for the next stream: false when the HTTP/1.1 side never completed it (an exchange that did
    /// not end cleanly may still read it, so the stream object must not carry another request).
    /// </summary>
    /// <exception cref="InvalidOperationException">The request pipe was in use and one of its ends is not completed.</exception>
    internal bool ResetInput() => _input.Reset();

    /// <summary>
    /// A <see cref="PipeReader"/> over the request that reports consumed octets to the stream. A request without a
    /// body (END_STREAM on its HEADERS: most GETs) is read from the stream's own buffer: going through the request
    /// pipe cost a block rented and returned and about seven acquisitions of the pipe's lock per request (write,
    /// complete, read, advance, the read that sees the end, complete, reset), the most frequent lock in the S4 profile.
    /// <para>Concurrency: the HTTP/1.1 side reads; <see cref="CancelPendingRead"/> may come from any thread. A fixed
    /// read never waits, so a cancellation is a flag the next read reports, as the pipe does when no read is pending.</para>
    /// </summary>
    private sealed class CountingReader(Http2StreamTransport owner) : PipeReader
    {
        private ReadOnlySequence<byte> _last;
        private bool _fixedMode;
        private ReadOnlyMemory<byte> _fixed;
        private int _fixedOffset;
        private bool _fixedCompleted;
        private volatile bool _cancelNext;

        private PipeReader Inner => owner._stream.RequestPipe.Reader;

        public void ServeFixed(ReadOnlyMemory<byte> request)
        {
            _fixed = request;
            _fixedOffset = 0;
            _fixedCompleted = false;
            _cancelNext = false;
            _last = default;
            _fixedMode = true;
        }

        public void ServePipe()
        {
            _fixed = default;
            _cancelNext = false;
            _last = default;
            _fixedMode = false;
        }

        public bool Reset()
        {
            if (_fixedMode)
            {
                return _fixedCompleted;
            }
            owner._stream.RequestPipe.Reset();
            return true;
        }

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            long length = _last.Slice(_last.Start, consumed).Length;
            _last = default;
            if (_fixedMode)
            {
                _fixedOffset += (int)length;
            }
            else
            {
                Inner.AdvanceTo(consumed, examined);
            }
            if (length > 0)
            {
                owner.Consumed += length;
                owner._stream.OnRequestConsumed(owner.Consumed);
            }
        }

        public override void CancelPendingRead()
        {
            if (_fixedMode)
            {
                _cancelNext = true;
            }
            else
            {
                Inner.CancelPendingRead();
            }
        }

        public override void Complete(Exception? exception = null)
        {
            if (_fixedMode)
            {
                _fixedCompleted = true;
            }
            else
            {
                Inner.Complete(exception);
            }
        }

        /// <summary>What is left of the fixed request, and its end (the client's END_STREAM).</summary>
        private ReadResult ReadFixed()
        {
            bool cancelled = _cancelNext;
            if (cancelled)
            {
                _cancelNext = false;
            }
            ReadOnlySequence<byte> buffer = new(_fixed[_fixedOffset..]);
            _last = buffer;
            return new ReadResult(buffer, cancelled, isCompleted: true);
        }

        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            if (_fixedMode)
            {
                return new ValueTask<ReadResult>(ReadFixed());
            }
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
            if (_fixedMode)
            {
                result = ReadFixed();
                return true;
            }
            if (Inner.TryRead(out result))
            {
                _last = result.Buffer;
                return true;
            }
            return false;
        }
    }
}
