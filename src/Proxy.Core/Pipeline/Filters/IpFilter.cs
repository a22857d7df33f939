using System.Net;
using System.Runtime.CompilerServices;
using System.Text;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// The built-in <c>ip_filter</c> policy: allow and deny lists of CIDRs matched against the client's address. Deny wins
/// over allow; an empty allow list allows every address that is not denied. The client's address is the socket
/// peer's, unless the peer is one of <c>trusted_proxies</c>: then it is the right-most X-Forwarded-For entry that is
/// not itself a trusted proxy. Refused requests get 403 with an RFC 9457 problem body.
/// </summary>
internal sealed class IpFilter : IRequestHeadersFilter
{
    public const string DetailsCode = "ip_denied";
    public const string ForwardedForInvalidCode = "ip_forwarded_for_invalid";

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();

    private readonly CidrSet _allow;
    private readonly CidrSet _deny;
    private readonly CidrSet _trusted;
    private readonly byte[] _body;
    private readonly byte[] _invalidBody;
    private readonly PolicyDecisionCounts _counts;

    /// <param name="policyName">The policy, named in answers.</param>
    /// <param name="allow">Networks allowed; empty: every network not denied.</param>
    /// <param name="deny">Networks denied (deny wins).</param>
    /// <param name="trustedProxies">Peers whose X-Forwarded-For is read.</param>
    /// <param name="running">On a reload, the running <c>ip_filter</c> filter of the same policy name, if any: its
    /// decision counts go on (<see cref="PolicyDecisionCounts"/>).</param>
    public IpFilter(string policyName, IReadOnlyList<IPNetwork> allow, IReadOnlyList<IPNetwork> deny, IReadOnlyList<IPNetwork>? trustedProxies = null,
        IpFilter? running = null)
    {
        PolicyName = policyName;
        _counts = PolicyDecisionCounts.ContinueFrom(running?._counts);
        _allow = new CidrSet(allow);
        _deny = new CidrSet(deny);
        _trusted = new CidrSet(trustedProxies ?? []);
        _body = RateLimitFilter.BuildProblem(403, "Forbidden", $"The client address is not allowed by policy '{policyName}'.");
        _invalidBody = RateLimitFilter.BuildProblem(403, "Forbidden", $"The client address cannot be determined from X-Forwarded-For (policy '{policyName}').");
    }

    public string PolicyName { get; }

    /// <summary>Requests refused since the policy was first compiled (a reload that keeps it keeps counting).</summary>
    public long DeniedCount => Volatile.Read(ref _counts.Denied);

    public bool IsAllowed(IPAddress address) => !_deny.Contains(address) && (_allow.IsEmpty || _allow.Contains(address));

    private bool IsAllowed(UInt128 value, bool isV4) => !_deny.Contains(value, isV4) && (_allow.IsEmpty || _allow.Contains(value, isV4));

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        IPAddress peer = context.ClientAddress;
        if (_trusted.IsEmpty || !_trusted.Contains(peer))
        {
            return IsAllowed(peer) ? FilterStatus.Continue : Deny(context, _body, DetailsCode);
        }
        return ClientFromForwardedFor(context, out UInt128 client, out bool isV4) switch
        {
            ForwardedClient.Peer => IsAllowed(peer) ? FilterStatus.Continue : Deny(context, _body, DetailsCode),
            ForwardedClient.Found => IsAllowed(client, isV4) ? FilterStatus.Continue : Deny(context, _body, DetailsCode),
            _ => Deny(context, _invalidBody, ForwardedForInvalidCode),
        };
    }

    private enum ForwardedClient : byte
    {
        /// <summary>No X-Forwarded-For: the trusted peer itself is the client.</summary>
        Peer,
        Found,
        /// <summary>An entry at or right of the client's position is not an address.</summary>
        Invalid,
    }

    /// <summary>
    /// Walks X-Forwarded-For from the right (the entry the trusted peer appended first), across repeated fields
    /// (RFC 9110 section 5.3: their values join in order), skipping trusted proxies; the first untrusted entry is the
    /// client. When every entry is trusted, the left-most one is the client. Entries left of the client are never
    /// read: anything there was written by the client and cannot be trusted.
    /// </summary>
    private ForwardedClient ClientFromForwardedFor(RequestContext context, out UInt128 client, out bool isV4)
    {
        client = 0;
        isV4 = false;
        bool any = false;
        for (int f = context.FieldCount - 1; f >= 0; f--)
        {
            if (!Ascii.EqualsIgnoreCase(context.FieldName(f), "x-forwarded-for"u8))
            {
                continue;
            }
            ReadOnlySpan<byte> list = context.FieldValue(f);
            while (true)
            {
                int comma = list.LastIndexOf((byte)',');
                // RFC 9110 section 5.6.1: OWS around list elements is any run of SP and HTAB, in any mix.
                ReadOnlySpan<byte> entry = list[(comma + 1)..].Trim(" \t"u8);
                if (!entry.IsEmpty)
                {
                    if (!IpText.TryParse(entry, out client, out isV4))
                    {
                        return ForwardedClient.Invalid;
                    }
                    any = true;
                    if (!_trusted.Contains(client, isV4))
                    {
                        return ForwardedClient.Found;
                    }
                }
                if (comma < 0)
                {
                    break;
                }
                list = list[..comma];
            }
        }
        // Every entry was a trusted proxy: the left-most is the closest thing to the client we know.
        return any ? ForwardedClient.Found : ForwardedClient.Peer;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Deny(RequestContext context, byte[] body, string details)
    {
        Interlocked.Increment(ref _counts.Denied);
        return context.Respond(403, details, s_problemJson, body);
    }
}
