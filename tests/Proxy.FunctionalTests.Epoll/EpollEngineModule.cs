using System.Runtime.CompilerServices;
using Proxy.Transport;

namespace Proxy.FunctionalTests;

/// <summary>Puts every proxy this assembly starts in process on the epoll socket engine.</summary>
internal static class EpollEngineModule
{
    // Runs before any test touches SocketPipes, which reads the variable once.
    [ModuleInitializer]
    internal static void UseEpollEngine() => Environment.SetEnvironmentVariable("PROXY_SOCKET_ENGINE", "epoll");
}

/// <summary>Guards the point of this assembly: a suite that silently ran on the runtime's engine would prove nothing new.</summary>
public sealed class EpollEngineModuleTests
{
    [Fact]
    public void ProxiesInThisAssembly_RunOnTheEpollEngine() => Assert.True(SocketPipes.UseEpoll);
}
