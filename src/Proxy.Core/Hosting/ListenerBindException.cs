using System.Net.Sockets;
using Proxy.Configuration;
using Proxy.Model;

namespace Proxy.Hosting;

/// <summary>
/// A listener's address could not be bound when the server started (in use, not an address of this host, not
/// permitted). The socket's own error said only "Address already in use", not which of the listeners: this one names
/// the listener and its address, as a reload's bind error does. It is a <see cref="SocketException"/> with the
/// socket's <see cref="SocketException.SocketErrorCode"/>, so an embedder's <c>catch (SocketException)</c> still
/// catches it. Start-up only: no data-plane cost.
/// </summary>
internal sealed class ListenerBindException : SocketException
{
    public ListenerBindException(ListenerModel listener, string sourcePath, SocketException error)
        : base((int)error.SocketErrorCode, Describe(listener, error.Message))
    {
        ListenerName = listener.Name;
        Location = $"{sourcePath}:{listener.AddressMark.Line}:{listener.AddressMark.Column}";
    }

    /// <summary>The listener's name (<c>admin</c> for the admin listener).</summary>
    public string ListenerName { get; }

    /// <summary>Where the listener's address is in the config file: "FILE:LINE:COL", as config errors say it.</summary>
    public string Location { get; }

    /// <summary>"listener 'NAME' cannot bind ADDRESS: REASON": the start's and the reload's wording.</summary>
    public static string Describe(ListenerModel listener, string reason)
        => $"listener '{listener.Name}' cannot bind {listener.EndPoint}: {reason}";
}
