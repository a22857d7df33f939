using System.Buffers;
using System.Runtime.CompilerServices;

namespace Proxy.Http;

/// <summary>Flags taken from <c>Connection</c>, <c>Upgrade</c> and <c>Expect</c>.</summary>
[Flags]
internal enum ConnectionOptions : byte
{
    None = 0,
    Close = 1,
    KeepAlive = 2,
    Upgrade = 4,
}

/// <summary>
/// What a parsed request head and a parsed response head share: the raw bytes, copied once into <see cref="Buffer"/>,
/// and the field table of offsets into them, with the framing and connection facts the parsers take from the fields.
/// </summary>
internal abstract class MessageHead
{
    public byte[] Buffer;
    public int Length;

    public HeaderField[] Fields;
    public int FieldCount;

    /// <summary>Declared body length, or -1 when the message has no Content-Length.</summary>
    public long ContentLength = -1;
    public bool Chunked;
    public ConnectionOptions Connection;
    /// <summary>True when the Upgrade field is present (with <see cref="ConnectionOptions.Upgrade"/> it asks for a tunnel).</summary>
    public bool HasUpgradeField;
    public HttpVersion Version;

    protected MessageHead(int initialBuffer, int initialFields)
    {
        Buffer = new byte[initialBuffer];
        Fields = new HeaderField[initialFields];
    }

    public ReadOnlySpan<byte> Raw => Buffer.AsSpan(0, Length);

    /// <summary>Whether the peer wants the connection kept after this exchange (RFC 9112 section 9.3).</summary>
    public bool KeepAlive => Version == HttpVersion.Http11
        ? (Connection & ConnectionOptions.Close) == 0
        : (Connection & (ConnectionOptions.KeepAlive | ConnectionOptions.Close)) == ConnectionOptions.KeepAlive;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ReadOnlySpan<byte> Name(int index)
    {
        ref readonly HeaderField f = ref Fields[index];
        return Buffer.AsSpan(f.NameStart, f.NameLength);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ReadOnlySpan<byte> Value(int index)
    {
        ref readonly HeaderField f = ref Fields[index];
        return Buffer.AsSpan(f.ValueStart, f.ValueLength);
    }

    /// <summary>First field whose name equals <paramref name="lowerCaseName"/> (ASCII case-insensitive).</summary>
    public bool TryGetHeader(ReadOnlySpan<byte> lowerCaseName, out ReadOnlySpan<byte> value)
    {
        for (int i = 0; i < FieldCount; i++)
        {
            if (Name(i).EqualsIgnoreCaseAscii(lowerCaseName))
            {
                value = Value(i);
                return true;
            }
        }
        value = default;
        return false;
    }

    /// <summary>Makes room for a head of <paramref name="length"/> bytes (control path: grows rarely, never shrinks).</summary>
    public Span<byte> PrepareBuffer(int length)
    {
        if (Buffer.Length < length)
        {
            Buffer = new byte[Math.Max(length, Buffer.Length * 2)];
        }
        Length = length;
        return Buffer.AsSpan(0, length);
    }

    /// <summary>Adds a field slot and returns it by reference.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref HeaderField AddField()
    {
        if (FieldCount == Fields.Length)
        {
            Array.Resize(ref Fields, Fields.Length * 2);
        }
        ref HeaderField f = ref Fields[FieldCount++];
        f = default;
        return ref f;
    }

    /// <summary>Clears what both kinds of head share.</summary>
    protected void ResetShared()
    {
        Length = 0;
        Version = HttpVersion.Unknown;
        FieldCount = 0;
        ContentLength = -1;
        Chunked = false;
        Connection = ConnectionOptions.None;
        HasUpgradeField = false;
    }
}

/// <summary>
/// A parsed request head. The raw bytes (request line through the empty line) are copied once into
/// <see cref="Buffer"/>; everything else is offsets into it, so parsing, routing and forwarding read
/// the same bytes and nothing is materialised as strings. One instance per connection (or per HTTP/2
/// stream), reset between requests; the buffer grows to the header limit at most and is kept.
/// </summary>
internal sealed class RequestHead : MessageHead
{
    private const int InitialBuffer = 1024;
    private const int InitialFields = 32;

    public RequestHead() : base(InitialBuffer, InitialFields)
    {
    }

    public HttpMethod Method;
    public int MethodStart, MethodLength;
    /// <summary>Request target as sent (origin-form: path and query).</summary>
    public int TargetStart, TargetLength;
    /// <summary>Length of the path part of the target (up to '?' or the end).</summary>
    public int PathLength;

    /// <summary>Index into <see cref="MessageHead.Fields"/> of the Host field, or -1.</summary>
    public int HostIndex = -1;
    public bool ExpectContinue;

    public ReadOnlySpan<byte> MethodBytes => Buffer.AsSpan(MethodStart, MethodLength);
    public ReadOnlySpan<byte> Target => Buffer.AsSpan(TargetStart, TargetLength);
    public ReadOnlySpan<byte> Path => Buffer.AsSpan(TargetStart, PathLength);

    /// <summary>Query string without the leading '?', empty when there is none.</summary>
    public ReadOnlySpan<byte> Query => PathLength < TargetLength
        ? Buffer.AsSpan(TargetStart + PathLength + 1, TargetLength - PathLength - 1)
        : default;

    public ReadOnlySpan<byte> Host => HostIndex >= 0 ? Value(HostIndex) : default;

    /// <summary>True when the request has a body to read (length or chunked).</summary>
    public bool HasBody => Chunked || ContentLength > 0;

    public bool IsUpgrade => HasUpgradeField && (Connection & ConnectionOptions.Upgrade) != 0;

    /// <summary>
    /// The request's X-Request-Id (the client's when valid, else generated; see <see cref="RequestId"/>), set by the
    /// connection once the head is parsed. Kept here so the upstream writer sees it with the head it serialises.
    /// </summary>
    public readonly byte[] RequestIdBuffer = new byte[RequestId.MaxLength];
    public int RequestIdLength;
    /// <summary>True when the proxy made the id: the client's field (absent or invalid) is then not forwarded.</summary>
    public bool RequestIdGenerated;

    public ReadOnlySpan<byte> RequestIdValue => RequestIdBuffer.AsSpan(0, RequestIdLength);

    public void Reset()
    {
        ResetShared();
        RequestIdLength = 0;
        RequestIdGenerated = false;
        Method = HttpMethod.Custom;
        MethodStart = MethodLength = TargetStart = TargetLength = PathLength = 0;
        HostIndex = -1;
        ExpectContinue = false;
    }
}

/// <summary>
/// A parsed upstream response head.
/// </summary>
internal sealed class ResponseHead : MessageHead
{
    public ResponseHead() : base(1024, 32)
    {
    }

    public int StatusCode;
    /// <summary>Reason phrase offsets (may be empty).</summary>
    public int ReasonStart, ReasonLength;

    public ReadOnlySpan<byte> Reason => Buffer.AsSpan(ReasonStart, ReasonLength);

    public void Reset()
    {
        ResetShared();
        StatusCode = 0;
        ReasonStart = ReasonLength = 0;
    }
}

internal static class AsciiExtensions
{
    /// <summary>ASCII case-insensitive equality; <paramref name="lowerCase"/> must already be lower case.</summary>
    public static bool EqualsIgnoreCaseAscii(this ReadOnlySpan<byte> value, ReadOnlySpan<byte> lowerCase)
        => System.Text.Ascii.EqualsIgnoreCase(value, lowerCase);
}
