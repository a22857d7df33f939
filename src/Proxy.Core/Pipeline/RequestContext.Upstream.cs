using System.Text;
using Proxy.Http;

namespace Proxy.Pipeline;

// The request's fields one by one, and the edits filters make to the request sent upstream (identity forwarding:
// add the verified identity, drop any copy the client sent). Edits live in buffers kept with the pooled context,
// so a steady stream of requests allocates nothing once they have grown.
public sealed partial class RequestContext
{
    /// <summary>Cap on the fields filters add to the upstream request and the names they remove, together.</summary>
    public const int MaxUpstreamEditBytes = 8 * 1024;

    private byte[] _upstreamAdded = [];
    private int _upstreamAddedLength;
    // Removed names, lower-cased, each followed by '\n' (a byte no field name holds).
    private byte[] _upstreamRemoved = [];
    private int _upstreamRemovedLength;

    /// <summary>Number of header fields in the request, in the order received (repeated fields each count).</summary>
    public int FieldCount => _head.FieldCount;

    /// <summary>The name of field <paramref name="index"/> as sent (any case).</summary>
    public ReadOnlySpan<byte> FieldName(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)_head.FieldCount, nameof(index));
        return _head.Name(index);
    }

    /// <summary>The value of field <paramref name="index"/>, without surrounding whitespace.</summary>
    public ReadOnlySpan<byte> FieldValue(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)_head.FieldCount, nameof(index));
        return _head.Value(index);
    }

    /// <summary>
    /// Adds a field to the request the proxy sends upstream, after the client's own fields. Throws
    /// <see cref="ArgumentException"/> on CR, LF or NUL, or when the edits exceed <see cref="MaxUpstreamEditBytes"/>.
    /// </summary>
    public void AddUpstreamHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        if (name.IsEmpty || name.ContainsAny(s_fieldForbidden) || name.Contains((byte)':') || value.ContainsAny(s_fieldForbidden))
        {
            ThrowInvalidField();
        }
        int length = name.Length + value.Length + 4;
        Span<byte> span = ReserveEdit(ref _upstreamAdded, _upstreamAddedLength, length);
        HttpWriting.FormatField(span, name, value);
        _upstreamAddedLength += length;
    }

    /// <summary>
    /// Drops every field named <paramref name="name"/> (compared case-insensitively) that the client sent from the
    /// request the proxy sends upstream. Fields added with <see cref="AddUpstreamHeader"/> are kept.
    /// </summary>
    public void RemoveUpstreamHeader(ReadOnlySpan<byte> name)
    {
        if (name.IsEmpty || name.ContainsAny(s_fieldForbidden) || name.Contains((byte)':'))
        {
            ThrowInvalidField();
        }
        Span<byte> span = ReserveEdit(ref _upstreamRemoved, _upstreamRemovedLength, name.Length + 1);
        Ascii.ToLower(name, span, out _);
        span[name.Length] = (byte)'\n';
        _upstreamRemovedLength += name.Length + 1;
    }

    /// <summary>True when a filter added or removed upstream fields for this request.</summary>
    internal bool HasUpstreamEdits => _upstreamAddedLength != 0 || _upstreamRemovedLength != 0;

    /// <summary>The added fields, as "name: value\r\n" lines ready to write.</summary>
    internal ReadOnlySpan<byte> UpstreamAddedFields => _upstreamAdded.AsSpan(0, _upstreamAddedLength);

    /// <summary>True when the client's field <paramref name="name"/> must not be forwarded.</summary>
    internal bool IsRemovedUpstream(ReadOnlySpan<byte> name)
    {
        ReadOnlySpan<byte> removed = _upstreamRemoved.AsSpan(0, _upstreamRemovedLength);
        while (!removed.IsEmpty)
        {
            int end = removed.IndexOf((byte)'\n');
            if (Ascii.EqualsIgnoreCase(removed[..end], name))
            {
                return true;
            }
            removed = removed[(end + 1)..];
        }
        return false;
    }

    private void ResetUpstreamEdits()
    {
        _upstreamAddedLength = 0;
        _upstreamRemovedLength = 0;
    }

    private Span<byte> ReserveEdit(ref byte[] buffer, int offset, int length)
    {
        int needed = offset + length;
        if (_upstreamAddedLength + _upstreamRemovedLength + length > MaxUpstreamEditBytes)
        {
            ThrowEditsTooLarge();
        }
        if (needed > buffer.Length)
        {
            // Grows once per pooled context to what the route's filters need.
            Array.Resize(ref buffer, Math.Min(MaxUpstreamEditBytes, Math.Max(needed, Math.Max(256, buffer.Length * 2))));
        }
        return buffer.AsSpan(offset, length);
    }

    private static void ThrowEditsTooLarge() => throw new ArgumentException($"Upstream field edits are limited to {MaxUpstreamEditBytes} bytes.");
}
