namespace Proxy.Upstream;

internal sealed class ConnectionPool
{
}
