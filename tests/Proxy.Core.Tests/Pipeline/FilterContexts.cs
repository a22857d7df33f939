using System.Net;
using System.Text;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Pipeline;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>Request contexts over a parsed head, for the identity and WAF filter tests.</summary>
internal static class FilterContexts
{
    public static (RequestHead Head, RequestContext Context) Create(string raw, IPAddress? client = null)
    {
        var head = new RequestHead();
        var bytes = new System.Buffers.ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(raw));
        Assert.Equal(HeadStatus.Complete, Http1RequestReader.TryRead(bytes, head, HttpLimits.Default, out _, out _));
        var context = new RequestContext();
        context.Begin(head, client ?? IPAddress.Loopback, "r", "public");
        return (head, context);
    }
}
