using System.Net;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// The built-in <c>ip_filter</c> policy: allow and deny lists of CIDRs matched against the socket peer's address.
/// Deny wins over allow; an empty allow list allows every address that is not denied. Refused requests get 403 with
/// an RFC 9457 problem body.
/// </summary>
internal sealed class IpFilter : IRequestHeadersFilter
{
    public const string DetailsCode = "ip_denied";

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();

    private readonly CidrSet _allow;
    private readonly CidrSet _deny;
    private readonly byte[] _body;
    private long _denied;

    public IpFilter(string policyName, IReadOnlyList<IPNetwork> allow, IReadOnlyList<IPNetwork> deny)
    {
        PolicyName = policyName;
        _allow = new CidrSet(allow);
        _deny = new CidrSet(deny);
        _body = RateLimitFilter.BuildProblem(403, "Forbidden", $"The client address is not allowed by policy '{policyName}'.");
    }

    public string PolicyName { get; }

    /// <summary>Requests refused since the policy was compiled.</summary>
    public long DeniedCount => Volatile.Read(ref _denied);

    public bool IsAllowed(IPAddress address) => !_deny.Contains(address) && (_allow.IsEmpty || _allow.Contains(address));

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        if (IsAllowed(context.ClientAddress))
        {
            return FilterStatus.Continue;
        }
        Interlocked.Increment(ref _denied);
        return context.Respond(403, DetailsCode, s_problemJson, _body);
    }
}
