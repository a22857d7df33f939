using System.Text;
using Proxy.Http;
using Proxy.Model;

namespace Proxy.Core.Tests.Routing;

/// <summary>
/// Reference matcher written from the spec in docs/routing.md with strings and lists, sharing no code
/// with the trie: sort every route by precedence, then return the first whose predicates all hold.
/// </summary>
internal sealed class NaiveRouter
{
    private readonly List<RouteModel> _ordered;

    public NaiveRouter(IReadOnlyList<RouteModel> routes)
    {
        _ordered = [.. routes];
        _ordered.Sort(Compare);
    }

    public IReadOnlyList<RouteModel> Ordered => _ordered;

    public RouteModel? Match(RequestHead request, int listener)
    {
        string path = Encoding.Latin1.GetString(request.Path);
        string query = Encoding.Latin1.GetString(request.Query);
        string method = Encoding.Latin1.GetString(request.MethodBytes);
        var headers = new List<(string Name, string Value)>();
        for (int i = 0; i < request.FieldCount; i++)
        {
            headers.Add((Encoding.Latin1.GetString(request.Name(i)), Encoding.Latin1.GetString(request.Value(i))));
        }
        string host = headers.FirstOrDefault(h => h.Name.Equals("host", StringComparison.OrdinalIgnoreCase)).Value ?? "";
        if (host.StartsWith('['))
        {
            host = host[..(host.IndexOf(']') + 1)];
        }
        else if (host.Contains(':'))
        {
            host = host[..host.LastIndexOf(':')];
        }
        host = host.ToLowerInvariant();

        foreach (RouteModel route in _ordered)
        {
            RouteMatchModel m = route.Match;
            if (route.ListenerMask != 0 && (listener >= 64 || ((route.ListenerMask >> listener) & 1) == 0))
            {
                continue;
            }
            if (!PathMatches(m.Path, path))
            {
                continue;
            }
            if (m.Hosts.Length > 0 && !m.Hosts.Any(h => h.StartsWith("*.") ? host.EndsWith(h[1..]) && host.Length > h.Length - 1 : host == h))
            {
                continue;
            }
            if (m.Methods.Length > 0 && !m.Methods.Contains(method))
            {
                continue;
            }
            if (!m.Headers.All(h => h.Present == headers.Any(f =>
                    f.Name.Equals(h.Name, StringComparison.OrdinalIgnoreCase)
                    && (!h.Present || h.Value is null || f.Value == Encoding.Latin1.GetString(h.Value)))))
            {
                continue;
            }
            var parameters = query.Split('&').Where(p => p.Length > 0)
                .Select(p => p.Contains('=') ? (Name: p[..p.IndexOf('=')], Value: p[(p.IndexOf('=') + 1)..]) : (Name: p, Value: ""))
                .ToList();
            if (!m.Query.All(q => q.Present == parameters.Any(p =>
                    p.Name == q.Name && (!q.Present || q.Value is null || p.Value == Encoding.Latin1.GetString(q.Value)))))
            {
                continue;
            }
            return route;
        }
        return null;
    }

    private static string[] Segments(string? template) => template is null ? ["{**}"] : template[1..].Split('/');

    private static int Kind(string segment) => segment.StartsWith("{*") ? 2 : segment.StartsWith('{') ? 1 : 0;

    private static bool PathMatches(string? template, string path)
    {
        string[] t = Segments(template);
        if (!path.StartsWith('/'))
        {
            return t.Length == 1 && Kind(t[0]) == 2;
        }
        string[] p = path[1..].Split('/');
        for (int i = 0; i < t.Length; i++)
        {
            switch (Kind(t[i]))
            {
                case 2:
                    return true;
                case 1:
                    if (i >= p.Length || p[i].Length == 0)
                    {
                        return false;
                    }
                    break;
                default:
                    if (i >= p.Length || p[i] != t[i])
                    {
                        return false;
                    }
                    break;
            }
        }
        return p.Length == t.Length;
    }

    private static int Compare(RouteModel a, RouteModel b)
    {
        string[] sa = Segments(a.Match.Path), sb = Segments(b.Match.Path);
        for (int i = 0; i < Math.Max(sa.Length, sb.Length); i++)
        {
            int ka = i < sa.Length ? Kind(sa[i]) : -1;
            int kb = i < sb.Length ? Kind(sb[i]) : -1;
            if (ka != kb)
            {
                return ka.CompareTo(kb);
            }
        }
        int c = HostRank(a).CompareTo(HostRank(b));
        if (c != 0)
        {
            return c;
        }
        c = Predicates(b).CompareTo(Predicates(a));
        return c != 0 ? c : a.Order.CompareTo(b.Order);
    }

    private static int HostRank(RouteModel r)
        => r.Match.Hosts.Length == 0 ? 2 : r.Match.Hosts.Any(h => h.Contains('*')) ? 1 : 0;

    private static int Predicates(RouteModel r)
        => (r.Match.Methods.Length > 0 ? 1 : 0) + r.Match.Headers.Length + r.Match.Query.Length;
}
