using Proxy.Http;
using Proxy.Model;

namespace Proxy.Routing;

/// <summary>Compiled route table. STUB.</summary>
internal sealed class RouteTable
{
    public static RouteTable Build(IReadOnlyList<RouteModel> routes) => throw new NotImplementedException();

    /// <summary>Routes in the order they are tried.</summary>
    public IReadOnlyList<RouteModel> InMatchOrder => throw new NotImplementedException();

    /// <summary>The first route, in precedence order, whose predicates all hold. Allocates nothing.</summary>
    public RouteModel? Match(RequestHead request, int listenerIndex) => throw new NotImplementedException();
}
