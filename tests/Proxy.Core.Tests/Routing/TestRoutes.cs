using System.Text;
using Proxy.Model;

namespace Proxy.Core.Tests.Routing;

/// <summary>Builds RouteModels the way the config compiler will (Order = file index).</summary>
internal static class TestRoutes
{
    public static RouteModel Route(
        string id,
        string? path = null,
        string[]? hosts = null,
        string[]? methods = null,
        HeaderMatchModel[]? headers = null,
        QueryMatchModel[]? query = null,
        ulong listeners = 0)
        => new()
        {
            Id = id,
            Order = 0,
            Match = new RouteMatchModel
            {
                Path = path,
                Hosts = hosts ?? [],
                Methods = methods ?? [],
                Headers = headers ?? [],
                Query = query ?? [],
            },
            ListenerMask = listeners,
        };

    public static HeaderMatchModel Header(string name, string? value = null, bool present = true)
        => new()
        {
            Name = name,
            NameLower = Encoding.ASCII.GetBytes(name.ToLowerInvariant()),
            Value = value is null ? null : Encoding.Latin1.GetBytes(value),
            Present = present,
        };

    public static QueryMatchModel Query(string name, string? value = null, bool present = true)
        => new()
        {
            Name = name,
            NameBytes = Encoding.Latin1.GetBytes(name),
            Value = value is null ? null : Encoding.Latin1.GetBytes(value),
            Present = present,
        };

    /// <summary>Renumbers Order to the list position, as the compiler does for a file.</summary>
    public static RouteModel[] InFileOrder(params RouteModel[] routes)
    {
        var result = new RouteModel[routes.Length];
        for (int i = 0; i < routes.Length; i++)
        {
            RouteModel r = routes[i];
            result[i] = new RouteModel { Id = r.Id, Order = i, Match = r.Match, ListenerMask = r.ListenerMask };
        }
        return result;
    }
}
