using System.Net;

namespace Proxy.Hosting;

/// <summary>
/// The embeddable gateway: loads a config file, binds its listeners and proxies until stopped.
/// This is the engine's public entry point; the <c>proxy</c> command-line host is a thin shell around it.
/// </summary>
public sealed class ProxyServer : IAsyncDisposable
{
    /// <summary>Creates a server from a YAML config file. Throws <see cref="InvalidDataException"/> listing every config error.</summary>
    public static ProxyServer FromFile(string path) => throw new NotImplementedException();

    /// <summary>Creates a server from YAML text (<paramref name="fileName"/> names it in error messages).</summary>
    public static ProxyServer FromYaml(string yaml, string fileName = "inline.yaml") => throw new NotImplementedException();

    /// <summary>Binds every listener and starts accepting.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>The address a listener is bound to (useful with port 0).</summary>
    public IPEndPoint GetEndPoint(string listenerName) => throw new NotImplementedException();

    /// <summary>
    /// Graceful stop: closes the listeners, lets requests in flight finish within <paramref name="timeout"/>,
    /// closes idle keep-alive connections, then aborts what is left.
    /// </summary>
    public Task StopAsync(TimeSpan timeout) => throw new NotImplementedException();

    /// <summary>Connections currently open from clients.</summary>
    public int OpenConnections => throw new NotImplementedException();

    public ValueTask DisposeAsync() => throw new NotImplementedException();
}
