namespace Proxy.Http2.FlowControl;

/// <summary>
/// One flow-control window (RFC 9113 section 5.2 and 6.9): the connection's or a stream's, in one direction.
/// The window may go negative after SETTINGS_INITIAL_WINDOW_SIZE shrinks (section 6.9.2) but never above
/// 2^31-1 (section 6.9.1). A mutable struct held in a field of its owner; not thread-safe.
/// </summary>
internal struct FlowControlWindow
{
    public const int MaxSize = int.MaxValue; // 2^31-1
    public const int DefaultInitialSize = 65_535;

    private int _available;

    public FlowControlWindow(int initialSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(initialSize);
        _available = initialSize;
    }

    /// <summary>Octets that may be sent (or received) now; negative after a shrinking SETTINGS.</summary>
    public readonly int Available => _available;

    /// <summary>
    /// Receiving side: the peer sent <paramref name="length"/> flow-controlled octets (a DATA frame's whole
    /// length, padding included). More than the window allows is FLOW_CONTROL_ERROR; the window is unchanged then.
    /// </summary>
    public Http2ErrorCode TryConsume(int length)
    {
        if (length < 0 || length > _available)
        {
            return Http2ErrorCode.FLOW_CONTROL_ERROR;
        }
        _available -= length;
        return Http2ErrorCode.NO_ERROR;
    }

    /// <summary>Sending side: takes up to <paramref name="wanted"/> octets of the window, returns how many (0 when exhausted).</summary>
    public int Take(int wanted)
    {
        int take = Math.Clamp(_available, 0, Math.Max(wanted, 0));
        _available -= take;
        return take;
    }

    /// <summary>
    /// WINDOW_UPDATE: adds <paramref name="increment"/> (1..2^31-1, already checked by the frame reader). Above
    /// 2^31-1 is FLOW_CONTROL_ERROR (section 6.9.1: a stream error for a stream window, a connection error for
    /// the connection window); the window is unchanged then.
    /// </summary>
    public Http2ErrorCode TryAdd(int increment)
    {
        long sum = (long)_available + increment;
        if (increment < 0 || sum > MaxSize)
        {
            return Http2ErrorCode.FLOW_CONTROL_ERROR;
        }
        _available = (int)sum;
        return Http2ErrorCode.NO_ERROR;
    }

    /// <summary>
    /// SETTINGS_INITIAL_WINDOW_SIZE changed from <paramref name="oldInitialSize"/> to <paramref name="newInitialSize"/>:
    /// every stream window moves by the difference (section 6.9.2), possibly below zero. Above 2^31-1 is a
    /// connection FLOW_CONTROL_ERROR; the window is unchanged then.
    /// </summary>
    public Http2ErrorCode TryApplyInitialSizeChange(uint oldInitialSize, uint newInitialSize)
    {
        long sum = _available + ((long)newInitialSize - oldInitialSize);
        if (sum > MaxSize || sum < int.MinValue)
        {
            return Http2ErrorCode.FLOW_CONTROL_ERROR;
        }
        _available = (int)sum;
        return Http2ErrorCode.NO_ERROR;
    }
}
