using System.Net;
using Proxy.Core.Tests.Pipeline;

namespace Proxy.Core.Tests.Tls;

public sealed class ClientCertificateContextTests
{
    [Fact]
    public void Begin_WithSubject_ExposesItToFiltersAndResetsOnNextRequest()
    {
        var context = RateLimitTests.Context("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        Assert.Null(context.ClientCertificateSubject);

        var head = new Proxy.Http.RequestHead();
        context.Begin(head, IPAddress.Loopback, "r", "secure", "CN=alice, O=Example");
        Assert.Equal("CN=alice, O=Example", context.ClientCertificateSubject);

        context.Begin(head, IPAddress.Loopback, "r", "public");
        Assert.Null(context.ClientCertificateSubject);
    }
}
