namespace Proxy.Pipeline;

/// <summary>
/// Who the request is, as verified by an authentication filter earlier in the chain (a JWT's <c>sub</c> and
/// <c>client_id</c>, an API key's consumer and plan). Later filters read it: <c>rate_limit</c> keys on it
/// (<c>jwt:sub</c>, <c>jwt:client_id</c>, <c>consumer</c>) and picks the plan from <see cref="Plan"/>. Empty until a
/// filter sets it; cleared before each request's chain runs.
/// </summary>
/// <remarks>
/// The setters copy the bytes into one buffer owned by the pooled request context (grown once, then reused), so a
/// filter may pass a span into its own cache entry, a decoded token or a stack buffer, and nothing is allocated in
/// steady state. Values are opaque bytes (UTF-8 as the token or key store had them); an empty value means "not set".
/// Setting a field again replaces it. Like the context, this object belongs to one request at a time: do not keep it.
/// </remarks>
public sealed class RequestIdentity
{
    /// <summary>Cap on the bytes of all four fields together: identities are short; a larger one is refused.</summary>
    public const int MaxBytes = 16 * 1024;

    private const int Fields = 4;
    private const int SubjectField = 0;
    private const int ClientIdField = 1;
    private const int ConsumerField = 2;
    private const int PlanField = 3;

    // Each field is a slice (offset, length) of _buffer; a replaced value leaves its old bytes unused until the next
    // request resets the write position.
    private byte[] _buffer = [];
    private int _used;
    private readonly int[] _offsets = new int[Fields];
    private readonly int[] _lengths = new int[Fields];

    internal RequestIdentity()
    {
    }

    /// <summary>True when any field is set.</summary>
    public bool IsSet => (_lengths[0] | _lengths[1] | _lengths[2] | _lengths[3]) != 0;

    /// <summary>The verified subject (a JWT's <c>sub</c> claim); empty when unknown.</summary>
    public ReadOnlySpan<byte> Subject => Get(SubjectField);

    /// <summary>The OAuth client (a JWT's <c>client_id</c> or <c>azp</c> claim); empty when unknown.</summary>
    public ReadOnlySpan<byte> ClientId => Get(ClientIdField);

    /// <summary>The consumer the credentials belong to (an API key's owner); empty when unknown.</summary>
    public ReadOnlySpan<byte> Consumer => Get(ConsumerField);

    /// <summary>The consumer's plan name (<c>free</c>, <c>pro</c>), matched against a rate_limit policy's <c>plans</c>; empty when unknown.</summary>
    public ReadOnlySpan<byte> Plan => Get(PlanField);

    /// <summary>Sets <see cref="Subject"/> (copied). Throws <see cref="ArgumentException"/> past <see cref="MaxBytes"/> in all.</summary>
    public void SetSubject(ReadOnlySpan<byte> value) => Set(SubjectField, value);

    /// <summary>Sets <see cref="ClientId"/> (copied).</summary>
    public void SetClientId(ReadOnlySpan<byte> value) => Set(ClientIdField, value);

    /// <summary>Sets <see cref="Consumer"/> (copied).</summary>
    public void SetConsumer(ReadOnlySpan<byte> value) => Set(ConsumerField, value);

    /// <summary>Sets <see cref="Plan"/> (copied).</summary>
    public void SetPlan(ReadOnlySpan<byte> value) => Set(PlanField, value);

    /// <summary>True when no filter has set anything.</summary>
    public bool IsAnonymous => !IsSet;

    /// <summary>Sets the token identity (the built-in JWT filter: <c>sub</c>, and <c>client_id</c> or <c>azp</c>).</summary>
    internal void SetToken(byte[]? subject, byte[]? clientId)
    {
        SetSubject(subject);
        SetClientId(clientId);
    }

    /// <summary>Sets the consumer identity (the built-in API key filter: the key's consumer and plan).</summary>
    internal void SetConsumer(byte[]? consumer, byte[]? plan)
    {
        SetConsumer((ReadOnlySpan<byte>)consumer);
        SetPlan(plan);
    }

    /// <summary>Forgets every field (the context calls this before each request's chain).</summary>
    internal void Reset()
    {
        if (_used == 0)
        {
            return;
        }
        _used = 0;
        Array.Clear(_lengths);
    }

    private ReadOnlySpan<byte> Get(int field) => _buffer.AsSpan(_offsets[field], _lengths[field]);

    private void Set(int field, ReadOnlySpan<byte> value)
    {
        if (value.Length <= _lengths[field])
        {
            // A value no longer than the one it replaces reuses its bytes (a filter that runs twice on one context).
            value.CopyTo(_buffer.AsSpan(_offsets[field]));
            _lengths[field] = value.Length;
            return;
        }
        int needed = _used + value.Length;
        if (needed > MaxBytes)
        {
            ThrowTooLarge();
        }
        if (needed > _buffer.Length)
        {
            // Grows once per pooled context to the largest identity seen (bounded by MaxBytes).
            Array.Resize(ref _buffer, Math.Min(MaxBytes, Math.Max(needed, Math.Max(256, _buffer.Length * 2))));
        }
        value.CopyTo(_buffer.AsSpan(_used));
        _offsets[field] = _used;
        _lengths[field] = value.Length;
        _used = needed;
    }

    private static void ThrowTooLarge() => throw new ArgumentException($"A request identity is limited to {MaxBytes} bytes.");
}
