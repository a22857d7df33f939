using Proxy.Http;

namespace Proxy.Model;

/// <summary>
/// A route's <c>clusters:</c> list: a weighted split of its traffic over several clusters (Envoy's
/// weighted_clusters, nginx's split_clients). Weights are pre-summed at compile time, so a pick is one random
/// number and a scan of a handful of integers. The sums are 64-bit: many large weights may add up past
/// <see cref="int.MaxValue"/>, and an overflowed (negative) total would make every draw throw.
/// </summary>
internal sealed class WeightedClustersModel
{
    public WeightedClustersModel(ClusterModel[] clusters, int[] weights)
    {
        Clusters = clusters;
        Weights = weights;
        Cumulative = new long[weights.Length];
        long total = 0;
        for (int i = 0; i < weights.Length; i++)
        {
            total += weights[i];
            Cumulative[i] = total;
        }
        Total = total;
    }

    public ClusterModel[] Clusters { get; }
    public int[] Weights { get; }
    /// <summary>Running sums of <see cref="Weights"/>: cluster i takes draws in [Cumulative[i-1], Cumulative[i]).</summary>
    public long[] Cumulative { get; }
    public long Total { get; }

    /// <summary>Picks a cluster for one request; <paramref name="draw"/> is uniform in [0, <see cref="Total"/>).</summary>
    public ClusterModel Pick(long draw)
    {
        long[] cumulative = Cumulative;
        for (int i = 0; i < cumulative.Length; i++)
        {
            if (draw < cumulative[i])
            {
                return Clusters[i];
            }
        }
        return Clusters[^1];
    }
}

/// <summary>
/// A route's <c>canary:</c> block: requests carrying a given header or cookie go to <see cref="Cluster"/>,
/// whatever the weights say. Names and values are bytes prepared at compile time; the match reads the parsed head.
/// </summary>
internal sealed class CanaryModel
{
    public required ClusterModel Cluster { get; init; }
    /// <summary>Lower-case header name, or null when the canary is selected by cookie.</summary>
    public byte[]? HeaderName { get; init; }
    /// <summary>Cookie name (case-sensitive, RFC 6265 section 5.4), or null when selected by header.</summary>
    public byte[]? CookieName { get; init; }
    /// <summary>Exact value required (case-sensitive); null: presence is enough.</summary>
    public byte[]? Value { get; init; }

    public bool Matches(RequestHead head)
    {
        if (HeaderName is { } name)
        {
            for (int i = 0; i < head.FieldCount; i++)
            {
                if (head.Name(i).EqualsIgnoreCaseAscii(name) && (Value is null || head.Value(i).SequenceEqual(Value)))
                {
                    return true;
                }
            }
            return false;
        }
        return TryGetCookie(head, CookieName!, out ReadOnlySpan<byte> value) && (Value is null || value.SequenceEqual(Value));
    }

    /// <summary>
    /// Finds cookie <paramref name="name"/> in the request's Cookie fields (RFC 6265 section 4.2.1:
    /// <c>cookie-string = cookie-pair *( ";" SP cookie-pair )</c>; several Cookie fields are read in turn, as
    /// HTTP/2 sends them split). Whitespace around pairs is tolerated since clients vary.
    /// </summary>
    public static bool TryGetCookie(RequestHead head, ReadOnlySpan<byte> name, out ReadOnlySpan<byte> value)
    {
        for (int i = 0; i < head.FieldCount; i++)
        {
            if (!head.Name(i).EqualsIgnoreCaseAscii("cookie"u8))
            {
                continue;
            }
            ReadOnlySpan<byte> rest = head.Value(i);
            while (!rest.IsEmpty)
            {
                int semicolon = rest.IndexOf((byte)';');
                ReadOnlySpan<byte> pair = semicolon < 0 ? rest : rest[..semicolon];
                rest = semicolon < 0 ? default : rest[(semicolon + 1)..];
                pair = pair.Trim((byte)' ');
                int equals = pair.IndexOf((byte)'=');
                if (equals > 0 && pair[..equals].SequenceEqual(name))
                {
                    value = pair[(equals + 1)..];
                    // RFC 6265 section 4.1.1 allows the value to be wrapped in DQUOTEs.
                    if (value.Length >= 2 && value[0] == (byte)'"' && value[^1] == (byte)'"')
                    {
                        value = value[1..^1];
                    }
                    return true;
                }
            }
        }
        value = default;
        return false;
    }
}

/// <summary>
/// Upstream timeouts of a route or a cluster (docs/resilience.md, "Timeouts"). <see cref="TimeSpan.Zero"/> means
/// "not set here": a route's unset timeout takes the cluster's, a cluster's unset request timeout means none.
/// </summary>
internal readonly record struct UpstreamTimeouts(TimeSpan Request, TimeSpan Response, TimeSpan StreamIdle)
{
    /// <summary>This value where set, else <paramref name="fallback"/>'s.</summary>
    public UpstreamTimeouts Over(UpstreamTimeouts fallback) => new(
        Request > TimeSpan.Zero ? Request : fallback.Request,
        Response > TimeSpan.Zero ? Response : fallback.Response,
        StreamIdle > TimeSpan.Zero ? StreamIdle : fallback.StreamIdle);
}

internal enum AffinityMode : byte
{
    Cookie,
    Header,
}

/// <summary>
/// A cluster's <c>session_affinity:</c> block (docs/resilience.md, "Session affinity"): requests carrying a
/// destination's key in a cookie or header go back to that destination while it is available. Keys and the
/// Set-Cookie fields are encoded per destination at compile time.
/// </summary>
internal sealed class SessionAffinityModel
{
    public required AffinityMode Mode { get; init; }
    /// <summary>Cookie name as configured, or the header name in lower case.</summary>
    public required byte[] Name { get; init; }
    public TimeSpan Ttl { get; init; }
    /// <summary>The cluster's destinations, in order; <see cref="Keys"/> and <see cref="SetCookieFields"/> share the index.</summary>
    public required Upstream.DestinationState[] Destinations { get; init; }
    /// <summary>
    /// Per destination: 16 hex digits of a 64-bit FNV-1a hash of its address. Stable across restarts and reloads
    /// (it depends on the address only) and reveals nothing of the address.
    /// </summary>
    public required byte[][] Keys { get; init; }
    /// <summary>Per destination: <c>set-cookie: {name}={key}; Path=/; HttpOnly[; Max-Age=ttl]\r\n</c> (cookie mode).</summary>
    public byte[][] SetCookieFields { get; init; } = [];

    /// <summary>The request's affinity value (cookie or header); false when it has none.</summary>
    public bool TryGetValue(RequestHead head, out ReadOnlySpan<byte> value)
    {
        if (Mode == AffinityMode.Cookie)
        {
            return CanaryModel.TryGetCookie(head, Name, out value);
        }
        return head.TryGetHeader(Name, out value);
    }

    /// <summary>
    /// The destination the request is pinned to, if it is among <paramref name="candidates"/> (available now):
    /// the one whose key equals the value; in header mode, a value that is no key (a user or session id the client
    /// sends) picks by rendezvous hashing over the candidates, so a value keeps its destination while that stays up
    /// and only the values of a destination that leaves move. Null: let the balancer pick (and, in cookie mode,
    /// set a fresh cookie).
    /// </summary>
    public Upstream.DestinationState? Find(RequestHead head, Upstream.DestinationState[] candidates)
    {
        if (!TryGetValue(head, out ReadOnlySpan<byte> value) || value.IsEmpty)
        {
            return null;
        }
        for (int i = 0; i < Keys.Length; i++)
        {
            if (value.SequenceEqual(Keys[i]))
            {
                Upstream.DestinationState pinned = Destinations[i];
                return Array.IndexOf(candidates, pinned) >= 0 ? pinned : null;
            }
        }
        if (Mode == AffinityMode.Cookie || candidates.Length == 0)
        {
            return null;
        }
        ulong valueHash = Fnv1a(value);
        Upstream.DestinationState? best = null;
        ulong bestScore = 0;
        foreach (Upstream.DestinationState candidate in candidates)
        {
            int index = Array.IndexOf(Destinations, candidate);
            ulong score = Mix(valueHash ^ (index >= 0 ? KeyHash(index) : 0));
            if (best is null || score > bestScore)
            {
                best = candidate;
                bestScore = score;
            }
        }
        return best;
    }

    /// <summary>The Set-Cookie field that pins to <paramref name="destination"/>; null in header mode.</summary>
    public byte[]? SetCookieFor(Upstream.DestinationState destination)
    {
        if (Mode != AffinityMode.Cookie)
        {
            return null;
        }
        int index = Array.IndexOf(Destinations, destination);
        return index >= 0 ? SetCookieFields[index] : null;
    }

    private ulong KeyHash(int index) => Fnv1a(Keys[index]);

    public static ulong Fnv1a(ReadOnlySpan<byte> bytes)
    {
        ulong hash = 14695981039346656037UL;
        foreach (byte b in bytes)
        {
            hash = (hash ^ b) * 1099511628211UL;
        }
        return hash;
    }

    /// <summary>A finaliser (splitmix64's) so that scores of nearby inputs are unrelated.</summary>
    private static ulong Mix(ulong x)
    {
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9UL;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebUL;
        return x ^ (x >> 31);
    }
}
