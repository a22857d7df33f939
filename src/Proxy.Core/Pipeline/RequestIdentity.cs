namespace Proxy.Pipeline;

/// <summary>
/// Who the request is from, as established by the authentication filters of its chain: the token's subject and
/// client id, the API key's consumer and plan. Empty until a filter sets it; reset before each request's chain runs.
/// Later filters (rate limits keyed by consumer, identity forwarding) read it.
/// </summary>
/// <remarks>
/// The spans point into arrays owned by the filter that set them (a cache entry or a compiled key), which are
/// immutable once published, so setting the identity allocates nothing. Like the context, do not keep a span past
/// the phase that read it.
/// </remarks>
public sealed class RequestIdentity
{
    private byte[]? _subject;
    private byte[]? _clientId;
    private byte[]? _consumer;
    private byte[]? _plan;

    internal RequestIdentity()
    {
    }

    /// <summary>The authenticated subject (a token's "sub"), empty when none.</summary>
    public ReadOnlySpan<byte> Subject => _subject;

    /// <summary>The OAuth client (a token's "client_id", else "azp"), empty when none.</summary>
    public ReadOnlySpan<byte> ClientId => _clientId;

    /// <summary>The consumer an API key maps to, empty when none.</summary>
    public ReadOnlySpan<byte> Consumer => _consumer;

    /// <summary>The plan of the consumer (an API key's plan), empty when none.</summary>
    public ReadOnlySpan<byte> Plan => _plan;

    /// <summary>True when no filter has set anything.</summary>
    public bool IsAnonymous => _subject is null && _clientId is null && _consumer is null && _plan is null;

    /// <summary>Sets the token identity; the arrays must not change afterwards (they are shared, not copied).</summary>
    internal void SetToken(byte[]? subject, byte[]? clientId)
    {
        _subject = subject;
        _clientId = clientId;
    }

    /// <summary>Sets the consumer identity; the arrays must not change afterwards (they are shared, not copied).</summary>
    internal void SetConsumer(byte[]? consumer, byte[]? plan)
    {
        _consumer = consumer;
        _plan = plan;
    }

    internal void Reset()
    {
        _subject = null;
        _clientId = null;
        _consumer = null;
        _plan = null;
    }
}
