using System.Text;

namespace Proxy.Pipeline.Filters;

/// <summary>The header names of a policy's <c>forward_identity</c> block; an empty name forwards nothing for that part.</summary>
internal sealed record IdentityForwardingOptions
{
    public string Subject { get; init; } = "";
    public string ClientId { get; init; } = "";
    public string Consumer { get; init; } = "";
    public string Plan { get; init; } = "";

    public bool IsEmpty => Subject.Length == 0 && ClientId.Length == 0 && Consumer.Length == 0 && Plan.Length == 0;
}

/// <summary>
/// Sends the verified identity upstream in headers, after an authentication policy passed: every configured name is
/// first removed from what the client sent (so a client cannot forge <c>x-consumer</c>), then set from
/// <see cref="RequestContext.Identity"/> when that part is known. Names are encoded once, at compile time.
/// </summary>
internal sealed class IdentityForwarding
{
    private readonly byte[] _subject;
    private readonly byte[] _clientId;
    private readonly byte[] _consumer;
    private readonly byte[] _plan;

    public IdentityForwarding(IdentityForwardingOptions options)
    {
        Options = options;
        _subject = Encoding.ASCII.GetBytes(options.Subject);
        _clientId = Encoding.ASCII.GetBytes(options.ClientId);
        _consumer = Encoding.ASCII.GetBytes(options.Consumer);
        _plan = Encoding.ASCII.GetBytes(options.Plan);
    }

    public IdentityForwardingOptions Options { get; }

    public void Apply(RequestContext context)
    {
        RequestIdentity identity = context.Identity;
        Forward(context, _subject, identity.Subject);
        Forward(context, _clientId, identity.ClientId);
        Forward(context, _consumer, identity.Consumer);
        Forward(context, _plan, identity.Plan);
    }

    private static void Forward(RequestContext context, byte[] name, ReadOnlySpan<byte> value)
    {
        if (name.Length == 0)
        {
            return;
        }
        context.RemoveUpstreamHeader(name);
        // Identity values reach here from a verified token or the config; a token's "sub" could still hold control
        // characters, which a header cannot carry: such a value is dropped rather than forwarded mangled.
        if (!value.IsEmpty && value.IndexOfAnyInRange((byte)0, (byte)0x1f) < 0 && !value.Contains((byte)0x7f))
        {
            context.AddUpstreamHeader(name, value);
        }
    }
}
