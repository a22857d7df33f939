using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>
/// A small buffered reader over a stream, for the tests' own HTTP/1.1 parser. It is deliberately independent of the
/// engine's codecs: a bug shared by the proxy and its tests would hide itself.
/// </summary>
internal sealed class WireReader
{
    private readonly Stream _stream;
    private readonly byte[] _buffer;
    private int _start;
    private int _end;

    public WireReader(Stream stream, int bufferSize = 64 * 1024)
    {
        _stream = stream;
        _buffer = new byte[bufferSize];
    }

    /// <summary>True once the peer has closed its sending side (a read returned 0).</summary>
    public bool EndOfStream { get; private set; }

    public int Buffered => _end - _start;

    /// <summary>Reads more bytes into the buffer; false at end of stream.</summary>
    public async ValueTask<bool> FillAsync(CancellationToken cancellationToken)
    {
        if (EndOfStream)
        {
            return false;
        }
        if (_start > 0 && _start == _end)
        {
            _start = _end = 0;
        }
        if (_end == _buffer.Length)
        {
            if (_start == 0)
            {
                throw new InvalidDataException("Line longer than the test reader's buffer.");
            }
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        var n = await _stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken);
        if (n == 0)
        {
            EndOfStream = true;
            return false;
        }
        _end += n;
        return true;
    }

    /// <summary>
    /// Reads one line ending in CRLF and returns it without the CRLF (Latin-1). Null when the stream ends before the
    /// first byte of the line. A bare LF is a protocol error here: the proxy must emit CRLF (RFC 9112 section 2.2).
    /// </summary>
    public async ValueTask<string?> ReadLineAsync(CancellationToken cancellationToken)
    {
        var scanned = 0;
        while (true)
        {
            var span = _buffer.AsSpan(_start + scanned, _end - _start - scanned);
            var lf = span.IndexOf((byte)'\n');
            if (lf >= 0)
            {
                var lineEnd = _start + scanned + lf;
                if (lineEnd == _start || _buffer[lineEnd - 1] != (byte)'\r')
                {
                    throw new InvalidDataException("Bare LF in message: " + Peek());
                }
                var line = Encoding.Latin1.GetString(_buffer, _start, lineEnd - 1 - _start);
                _start = lineEnd + 1;
                return line;
            }
            scanned = _end - _start;
            if (!await FillAsync(cancellationToken))
            {
                if (_end == _start)
                {
                    return null;
                }
                throw new EndOfStreamException("Stream ended inside a line: " + Peek());
            }
        }
    }

    /// <summary>Moves exactly <paramref name="count"/> bytes to <paramref name="sink"/>.</summary>
    public async ValueTask ReadExactlyAsync(long count, IBodySink sink, CancellationToken cancellationToken)
    {
        while (count > 0)
        {
            if (_end == _start && !await FillAsync(cancellationToken))
            {
                throw new EndOfStreamException($"Stream ended with {count} body bytes missing.");
            }
            var take = (int)Math.Min(count, _end - _start);
            sink.Write(_buffer.AsSpan(_start, take));
            _start += take;
            count -= take;
        }
    }

    /// <summary>Moves every byte up to the end of the stream to <paramref name="sink"/>.</summary>
    public async ValueTask ReadToEndAsync(IBodySink sink, CancellationToken cancellationToken)
    {
        while (true)
        {
            if (_end > _start)
            {
                sink.Write(_buffer.AsSpan(_start, _end - _start));
                _start = _end;
            }
            if (!await FillAsync(cancellationToken))
            {
                return;
            }
        }
    }

    /// <summary>Takes whatever is already buffered, without reading.</summary>
    public byte[] TakeBuffered()
    {
        var bytes = _buffer.AsSpan(_start, _end - _start).ToArray();
        _start = _end;
        return bytes;
    }

    private string Peek() => Encoding.Latin1.GetString(_buffer, _start, Math.Min(_end - _start, 200));
}
