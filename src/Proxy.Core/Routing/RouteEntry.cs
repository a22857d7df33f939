using System.Text;
using Proxy.Http;
using Proxy.Model;

namespace Proxy.Routing;

/// <summary>What one match attempt reads from the request, computed once per request.</summary>
internal readonly ref struct MatchContext
{
    public MatchContext(RequestHead request, int listenerIndex)
    {
        Request = request;
        Host = HostPredicate.MatchName(request.Host);
        Query = request.Query;
        ListenerIndex = listenerIndex;
    }

    public RequestHead Request { get; }
    /// <summary>The Host field value without its port and one trailing dot (<see cref="HostPredicate.MatchName"/>).</summary>
    public ReadOnlySpan<byte> Host { get; }
    public ReadOnlySpan<byte> Query { get; }
    public int ListenerIndex { get; }
}

/// <summary>
/// A route compiled for matching: its path template plus every other predicate pre-encoded as bytes,
/// so checking a request compares spans and allocates nothing. Immutable; shared by all requests.
/// </summary>
internal sealed class RouteEntry
{
    private readonly byte[][] _exactHosts;
    private readonly byte[][] _wildcardSuffixes;
    private readonly bool _anyHost;
    private readonly byte[][] _methods;
    private readonly HeaderMatchModel[] _headers;
    private readonly QueryMatchModel[] _query;
    private readonly ulong _listenerMask;

    private RouteEntry(RouteModel route, int index)
    {
        Route = route;
        Index = index;
        RouteMatchModel match = route.Match;
        Template = RouteTemplate.Parse(match.Path);

        var exact = new List<byte[]>();
        var wildcards = new List<byte[]>();
        bool anyWildcard = false;
        foreach (string configured in match.Hosts)
        {
            string host = configured.ToLowerInvariant();
            if (host == "*")
            {
                anyWildcard = _anyHost = true;
            }
            else if (host.StartsWith("*.", StringComparison.Ordinal) && host.IndexOf('*', 1) < 0)
            {
                anyWildcard = true;
                wildcards.Add(Encoding.ASCII.GetBytes(host[1..]));
            }
            else if (host.Contains('*'))
            {
                throw new FormatException($"route '{route.Id}': host '{configured}' is not an exact name or '*.suffix'");
            }
            else
            {
                exact.Add(Encoding.ASCII.GetBytes(host));
            }
        }
        _exactHosts = [.. exact];
        _wildcardSuffixes = [.. wildcards];
        HostRank = match.Hosts.Length == 0 ? 2 : anyWildcard ? 1 : 0;

        _methods = new byte[match.Methods.Length][];
        for (int i = 0; i < _methods.Length; i++)
        {
            _methods[i] = Encoding.ASCII.GetBytes(match.Methods[i]);
        }
        _headers = match.Headers;
        _query = match.Query;
        _listenerMask = route.ListenerMask;
        PredicateCount = (_methods.Length > 0 ? 1 : 0) + _headers.Length + _query.Length;
    }

    public RouteModel Route { get; }
    /// <summary>Position in the list given to Build; the last tie-breaker.</summary>
    public int Index { get; }
    public RouteTemplate Template { get; }
    /// <summary>0: only exact hosts; 1: some wildcard; 2: any host. Lower is tried first.</summary>
    public int HostRank { get; }
    /// <summary>One for a method list, plus one per header and query predicate. Higher is tried first.</summary>
    public int PredicateCount { get; }

    public static RouteEntry[] CreateAll(IReadOnlyList<RouteModel> routes)
    {
        var entries = new RouteEntry[routes.Count];
        for (int i = 0; i < entries.Length; i++)
        {
            entries[i] = new RouteEntry(routes[i], i);
        }
        return entries;
    }

    /// <summary>
    /// Precedence: path shape, then exact hosts before wildcards before none, then more predicates,
    /// then file order. Negative when <paramref name="a"/> is tried first.
    /// </summary>
    public static int Compare(RouteEntry a, RouteEntry b)
    {
        int c = RouteTemplate.ComparePrecedence(a.Template, b.Template);
        if (c == 0)
        {
            c = a.HostRank.CompareTo(b.HostRank);
        }
        if (c == 0)
        {
            c = b.PredicateCount.CompareTo(a.PredicateCount);
        }
        if (c == 0)
        {
            c = a.Route.Order.CompareTo(b.Route.Order);
        }
        return c != 0 ? c : a.Index.CompareTo(b.Index);
    }

    /// <summary>Every predicate except the path, which the caller has already matched.</summary>
    public bool Accepts(in MatchContext context)
    {
        if (_listenerMask != 0
            && ((uint)context.ListenerIndex >= 64 || (_listenerMask & (1UL << context.ListenerIndex)) == 0))
        {
            return false;
        }
        if (HostRank != 2 && !HostMatches(context.Host))
        {
            return false;
        }
        if (_methods.Length != 0 && !MethodMatches(context.Request.MethodBytes))
        {
            return false;
        }
        foreach (HeaderMatchModel header in _headers)
        {
            if (HeaderPresent(context.Request, header.NameLower, header.Present ? header.Value : null) != header.Present)
            {
                return false;
            }
        }
        foreach (QueryMatchModel query in _query)
        {
            if (QueryPresent(context.Query, query.NameBytes, query.Present ? query.Value : null) != query.Present)
            {
                return false;
            }
        }
        return true;
    }

    private bool HostMatches(ReadOnlySpan<byte> host)
    {
        if (_anyHost)
        {
            return !host.IsEmpty;
        }
        foreach (byte[] exact in _exactHosts)
        {
            if (Ascii.EqualsIgnoreCase(host, exact))
            {
                return true;
            }
        }
        foreach (byte[] suffix in _wildcardSuffixes)
        {
            // "*.example.org" needs at least one label before ".example.org".
            if (host.Length > suffix.Length && Ascii.EqualsIgnoreCase(host[^suffix.Length..], suffix))
            {
                return true;
            }
        }
        return false;
    }

    private bool MethodMatches(ReadOnlySpan<byte> method)
    {
        foreach (byte[] configured in _methods)
        {
            if (method.SequenceEqual(configured))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// True when some field has the name (and the exact value, when one is given). With Present=false
    /// the caller passes no value and wants the opposite: no field of that name at all.
    /// </summary>
    private static bool HeaderPresent(RequestHead request, byte[] nameLower, byte[]? value)
    {
        for (int i = 0; i < request.FieldCount; i++)
        {
            if (Ascii.EqualsIgnoreCase(request.Name(i), nameLower)
                && (value is null || request.Value(i).SequenceEqual(value)))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Walks "a=1&amp;b&amp;c=3" without splitting into strings; a part without '=' has an empty value.</summary>
    private static bool QueryPresent(ReadOnlySpan<byte> query, byte[] name, byte[]? value)
    {
        while (!query.IsEmpty)
        {
            int amp = query.IndexOf((byte)'&');
            ReadOnlySpan<byte> part = amp < 0 ? query : query[..amp];
            int eq = part.IndexOf((byte)'=');
            ReadOnlySpan<byte> key = eq < 0 ? part : part[..eq];
            if (!part.IsEmpty && key.SequenceEqual(name)
                && (value is null || (eq < 0 ? default : part[(eq + 1)..]).SequenceEqual(value)))
            {
                return true;
            }
            if (amp < 0)
            {
                break;
            }
            query = query[(amp + 1)..];
        }
        return false;
    }

    /// <summary>Whether this route's non-path predicates hold for every request that <paramref name="other"/>'s hold for.</summary>
    public bool CoversPredicatesOf(RouteEntry other)
        => ListenersCover(other) && HostsCover(other) && MethodsCover(other)
            && HeadersCover(_headers, other._headers) && QueryCovers(_query, other._query);

    private bool ListenersCover(RouteEntry other)
        => _listenerMask == 0 || (other._listenerMask != 0 && (other._listenerMask & ~_listenerMask) == 0);

    private bool HostsCover(RouteEntry other)
    {
        if (HostRank == 2 || _anyHost)
        {
            // "*" admits every non-empty Host; a route without hosts also admits a missing one.
            return HostRank == 2 || other.HostRank != 2;
        }
        if (other.HostRank == 2 || other._anyHost)
        {
            return false;
        }
        foreach (byte[] host in other._exactHosts)
        {
            if (!HostMatches(host))
            {
                return false;
            }
        }
        foreach (byte[] suffix in other._wildcardSuffixes)
        {
            // "*.example.org" covers "*.api.example.org": every name under the latter is under the former.
            bool covered = false;
            foreach (byte[] mine in _wildcardSuffixes)
            {
                covered |= suffix.AsSpan().EndsWith(mine);
            }
            if (!covered)
            {
                return false;
            }
        }
        return true;
    }

    private bool MethodsCover(RouteEntry other)
    {
        if (_methods.Length == 0)
        {
            return true;
        }
        if (other._methods.Length == 0)
        {
            return false;
        }
        foreach (byte[] method in other._methods)
        {
            if (!MethodMatches(method))
            {
                return false;
            }
        }
        return true;
    }

    private static bool HeadersCover(HeaderMatchModel[] mine, HeaderMatchModel[] theirs)
        => PredicatesCover(mine, theirs, static h => (h.NameLower, h.Present, h.Value));

    private static bool QueryCovers(QueryMatchModel[] mine, QueryMatchModel[] theirs)
        => PredicatesCover(mine, theirs, static q => (q.NameBytes, q.Present, q.Value));

    // Every one of my predicates must be implied by one of theirs: the same requirement, or for a
    // bare presence check, any positive predicate on the same name. Config time only.
    private static bool PredicatesCover<T>(T[] mine, T[] theirs, Func<T, (byte[] Name, bool Present, byte[]? Value)> view)
    {
        foreach (T mineItem in mine)
        {
            var m = view(mineItem);
            bool implied = false;
            foreach (T theirItem in theirs)
            {
                var t = view(theirItem);
                implied |= t.Name.AsSpan().SequenceEqual(m.Name) && Implies(t.Present, t.Value, m.Present, m.Value);
            }
            if (!implied)
            {
                return false;
            }
        }
        return true;
    }

    private static bool Implies(bool theirPresent, byte[]? theirValue, bool myPresent, byte[]? myValue)
    {
        if (theirPresent != myPresent)
        {
            return false;
        }
        // Absence ignores the value; presence with a value needs the same value; bare presence is
        // implied by any positive predicate on the name.
        return !myPresent || myValue is null || (theirValue is not null && theirValue.AsSpan().SequenceEqual(myValue));
    }

    public override string ToString() => Route.Id;
}

internal static class HostPredicate
{
    /// <summary>
    /// The host part of a Host field value (RFC 9110 section 7.2: uri-host [ ":" port ]). An IPv6
    /// literal keeps its brackets, so its colons are not mistaken for the port separator.
    /// </summary>
    public static ReadOnlySpan<byte> StripPort(ReadOnlySpan<byte> host)
    {
        if (!host.IsEmpty && host[0] == (byte)'[')
        {
            int close = host.IndexOf((byte)']');
            return close < 0 ? host : host[..(close + 1)];
        }
        int colon = host.LastIndexOf((byte)':');
        return colon < 0 ? host : host[..colon];
    }

    /// <summary>
    /// The name host routes are matched against: the port removed, then one trailing dot. "example.com." is the fully
    /// qualified spelling of "example.com" (RFC 1034 section 3.1), served by the same upstream: were it not stripped, it
    /// would miss the route for "example.com" and its policies (nginx strips it before server_name matching, Envoy
    /// has strip_trailing_host_dot). The forwarded Host field is left as sent.
    /// </summary>
    public static ReadOnlySpan<byte> MatchName(ReadOnlySpan<byte> host)
    {
        host = StripPort(host);
        return host.Length > 1 && host[^1] == (byte)'.' ? host[..^1] : host;
    }
}
