using System.Net;
using System.Security.Cryptography;
using System.Text;
using Proxy.Configuration;
using Proxy.Model;

namespace Proxy.Core.Tests.Configuration;

/// <summary>
/// YAML -> snapshot. These need the real RouteTable.Build and LoadBalancingPolicies.Create, which are
/// implemented on their own branches.
/// </summary>
public class ConfigCompileTests
{
    private const string ContractExample = """
        server:
          shutdown_timeout: 45s
          max_connections: 5000
        limits:
          max_request_line: 8KiB
          max_header_bytes: 32KiB
          max_headers: 100
          max_body_bytes: 10MiB
          header_timeout: 10s
          keepalive_timeout: 75s
          body_timeout: 30s
        forwarded:
          mode: append
          trusted_networks: [10.0.0.0/8, "::1/128"]
        listeners:
          - name: public
            address: 127.0.0.1:8080
            handler: proxy
            limits: { max_headers: 50, header_timeout: 5s }
            forwarded: { mode: trust }
          - name: echo
            address: "[::1]:0"
            handler: echo
        routes:
          - id: api
            listeners: [public]
            match:
              path: /api/{**rest}
              hosts: [API.example.com, "*.example.org"]
              methods: [get, POST]
              headers: [{ name: X-Version, value: "2" }, { name: x-debug, present: false }]
              query: [{ name: beta, present: true }, { name: v, value: "1" }]
            cluster: backend
          - id: hello
            match: { path: /hello }
            respond: { status: 200, body: "hello\n", headers: { content-type: text/plain } }
        clusters:
          backend:
            load_balancing: least_requests
            destinations:
              - { address: "http://127.0.0.1:9000", weight: 90 }
              - { address: "http://127.0.0.1:9001", weight: 10 }
              - http://backend.internal
            connect_timeout: 2s
            request_timeout: 30s
            max_connections: 256
            idle_timeout: 90s
        """;

    private static ProxySnapshot Compile(string yaml, string fileName = "contract.yaml")
    {
        var result = ConfigLoader.LoadText(yaml, fileName);
        Assert.Empty(result.Errors.Select(e => e.ToString()));
        Assert.True(result.Success);
        return result.Snapshot!;
    }

    [Fact]
    public void Compile_ContractExample_BuildsServerAndListeners()
    {
        var snapshot = Compile(ContractExample);

        Assert.Equal(TimeSpan.FromSeconds(45), snapshot.Server.ShutdownTimeout);
        Assert.Equal(5000, snapshot.Server.MaxConnections);

        Assert.Equal(2, snapshot.Listeners.Length);
        var pub = snapshot.Listeners[0];
        Assert.Equal("public", pub.Name);
        Assert.Equal(0, pub.Index);
        Assert.Equal(IPEndPoint.Parse("127.0.0.1:8080"), pub.EndPoint);
        Assert.Equal(ListenerHandler.Proxy, pub.Handler);
        Assert.Equal(ForwardedMode.Trust, pub.Forwarded.Mode);
        Assert.Equal(["10.0.0.0/8", "::1/128"], pub.Forwarded.TrustedNetworks.Select(n => n.ToString()));
        Assert.True(pub.Forwarded.IsTrusted(IPAddress.Parse("10.1.2.3")));

        var echo = snapshot.Listeners[1];
        Assert.Equal(1, echo.Index);
        Assert.Equal(ListenerHandler.Echo, echo.Handler);
        Assert.Equal(IPEndPoint.Parse("[::1]:0"), echo.EndPoint);
        Assert.Equal(ForwardedMode.Append, echo.Forwarded.Mode);
    }

    [Fact]
    public void Compile_ListenerLimits_OverrideServerWideKeyByKey()
    {
        var snapshot = Compile(ContractExample);

        var pub = snapshot.Listeners[0].Limits;
        Assert.Equal(50, pub.MaxHeaders);
        Assert.Equal(TimeSpan.FromSeconds(5), pub.HeaderTimeout);
        Assert.Equal(8 * 1024, pub.MaxRequestLine);
        Assert.Equal(32 * 1024, pub.MaxHeaderBytes);
        Assert.Equal(10L * 1024 * 1024, pub.MaxBodyBytes);
        Assert.Equal(TimeSpan.FromSeconds(75), pub.KeepAliveTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), pub.BodyTimeout);
        Assert.Equal(5000, pub.MaxConnections);

        var echo = snapshot.Listeners[1].Limits;
        Assert.Equal(100, echo.MaxHeaders);
        Assert.Equal(TimeSpan.FromSeconds(10), echo.HeaderTimeout);
    }

    [Fact]
    public void Compile_ServerWideLimits_OverrideDefaults()
    {
        var snapshot = Compile("""
            limits: { max_body_bytes: 1MB, body_timeout: 500ms }
            listeners:
              - { name: a, address: "127.0.0.1:0", limits: { max_request_line: 4096 } }
            """);

        var limits = snapshot.Listeners[0].Limits;
        Assert.Equal(1_000_000, limits.MaxBodyBytes);
        Assert.Equal(TimeSpan.FromMilliseconds(500), limits.BodyTimeout);
        Assert.Equal(4096, limits.MaxRequestLine);
        Assert.Equal(new Proxy.Http.HttpLimits().MaxHeaderBytes, limits.MaxHeaderBytes);
        Assert.Equal(new Proxy.Http.HttpLimits().KeepAliveTimeout, limits.KeepAliveTimeout);
    }

    [Fact]
    public void Compile_ContractExample_BuildsProxiedRoute()
    {
        var snapshot = Compile(ContractExample);

        var api = Assert.Single(snapshot.Routes.InMatchOrder, r => r.Id == "api");
        Assert.Equal(0, api.Order);
        Assert.Equal(1UL, api.ListenerMask);
        Assert.Same(snapshot.Clusters["backend"], api.Cluster);
        Assert.Null(api.Respond);

        var match = api.Match;
        Assert.Equal("/api/{**rest}", match.Path);
        Assert.Equal(["api.example.com", "*.example.org"], match.Hosts);
        Assert.Equal(["GET", "POST"], match.Methods);

        Assert.Equal(2, match.Headers.Length);
        Assert.Equal("X-Version", match.Headers[0].Name);
        Assert.Equal("x-version"u8.ToArray(), match.Headers[0].NameLower);
        Assert.Equal("2"u8.ToArray(), match.Headers[0].Value);
        Assert.True(match.Headers[0].Present);
        Assert.Equal("x-debug"u8.ToArray(), match.Headers[1].NameLower);
        Assert.Null(match.Headers[1].Value);
        Assert.False(match.Headers[1].Present);

        Assert.Equal(2, match.Query.Length);
        Assert.Equal("beta"u8.ToArray(), match.Query[0].NameBytes);
        Assert.Null(match.Query[0].Value);
        Assert.True(match.Query[0].Present);
        Assert.Equal("1"u8.ToArray(), match.Query[1].Value);
    }

    [Fact]
    public void Compile_ContractExample_PreEncodesDirectResponse()
    {
        var snapshot = Compile(ContractExample);

        var hello = Assert.Single(snapshot.Routes.InMatchOrder, r => r.Id == "hello");
        Assert.Equal(1, hello.Order);
        Assert.Equal(0UL, hello.ListenerMask);
        Assert.Null(hello.Cluster);
        Assert.Equal(new RouteMatchModel { Path = "/hello" }.Path, hello.Match.Path);
        Assert.Empty(hello.Match.Hosts);
        var respond = Assert.IsType<DirectResponseModel>(hello.Respond);
        Assert.Equal(200, respond.Status);
        Assert.Equal("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n", Encoding.ASCII.GetString(respond.HeadPrefix));
        Assert.Equal("hello\n"u8.ToArray(), respond.Body);
    }

    [Theory]
    [InlineData(404, "HTTP/1.1 404 Not Found\r\n")]
    [InlineData(503, "HTTP/1.1 503 Service Unavailable\r\n")]
    [InlineData(299, "HTTP/1.1 299 \r\n")]
    public void Compile_RespondStatus_UsesStandardReasonPhrase(int status, string headPrefix)
    {
        var snapshot = Compile($$"""
            listeners: [{ name: a, address: "127.0.0.1:0" }]
            routes: [{ id: r, respond: { status: {{status}} } }]
            """);

        var respond = snapshot.Routes.InMatchOrder[0].Respond!;
        Assert.Equal(headPrefix, Encoding.ASCII.GetString(respond.HeadPrefix));
        Assert.Empty(respond.Body);
    }

    [Fact]
    public void Compile_ContractExample_BuildsCluster()
    {
        var snapshot = Compile(ContractExample);

        var cluster = Assert.Single(snapshot.Clusters).Value;
        Assert.Equal("backend", cluster.Name);
        Assert.Equal(LoadBalancingKind.LeastRequests, cluster.LoadBalancing);
        Assert.NotNull(cluster.Policy);
        Assert.Equal(TimeSpan.FromSeconds(2), cluster.ConnectTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), cluster.RequestTimeout);
        Assert.Equal(256, cluster.MaxConnections);
        Assert.Equal(TimeSpan.FromSeconds(90), cluster.IdleTimeout);

        Assert.Equal(3, cluster.Destinations.Length);
        var first = cluster.Destinations[0];
        Assert.Equal("http://127.0.0.1:9000", first.Address);
        Assert.Equal("127.0.0.1", first.Host);
        Assert.Equal(9000, first.Port);
        Assert.Equal(90, first.Weight);
        Assert.Equal(10, cluster.Destinations[1].Weight);
        var third = cluster.Destinations[2];
        Assert.Equal("backend.internal", third.Host);
        Assert.Equal(80, third.Port);
        Assert.Equal(1, third.Weight);
        Assert.Equal("backend.internal"u8.ToArray(), third.HostHeader);
    }

    [Fact]
    public void Compile_ClusterWithoutOptionalKeys_UsesModelDefaults()
    {
        var snapshot = Compile("""
            listeners: [{ name: a, address: "127.0.0.1:0" }]
            clusters: { c: { destinations: ["http://127.0.0.1:9000"] } }
            """);

        var cluster = snapshot.Clusters["c"];
        Assert.Equal(LoadBalancingKind.RoundRobin, cluster.LoadBalancing);
        Assert.Equal(TimeSpan.FromSeconds(2), cluster.ConnectTimeout);
        // request_timeout bounds the whole exchange and is off by default; the 30 s waits are response and stream idle.
        Assert.Equal(TimeSpan.Zero, cluster.RequestTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), cluster.ResponseTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), cluster.StreamIdleTimeout);
        Assert.Equal(256, cluster.MaxConnections);
        Assert.Equal(TimeSpan.FromSeconds(60), cluster.IdleTimeout);
        Assert.Equal(TimeSpan.FromSeconds(30), snapshot.Server.ShutdownTimeout);
        Assert.Equal(10_000, snapshot.Server.MaxConnections);
        Assert.Same(ForwardedModel.Default, snapshot.Listeners[0].Forwarded);
    }

    [Fact]
    public void Compile_Text_VersionIsStableAndFollowsTheText()
    {
        var snapshot = Compile(ContractExample);

        Assert.Matches("^[0-9a-f]{12}$", snapshot.Version);
        Assert.Equal(snapshot.Version, Compile(ContractExample).Version);
        Assert.NotEqual(snapshot.Version, Compile(ContractExample + "\n# changed\n").Version);
        Assert.Equal("contract.yaml", snapshot.SourcePath);
    }

    [Fact]
    public void LoadFile_RelativePath_SourcePathIsFull()
    {
        var path = Path.Combine(Path.GetTempPath(), $"proxy-config-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(path, "listeners: [{ name: a, address: \"127.0.0.1:0\" }]\n");
        try
        {
            var relative = Path.GetRelativePath(Environment.CurrentDirectory, path);
            var result = ConfigLoader.LoadFile(relative);

            Assert.True(result.Success);
            Assert.Equal(path, result.Snapshot!.SourcePath);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void LoadFile_InvalidFile_ErrorsNameThePathAsGiven()
    {
        var path = Path.Combine(Path.GetTempPath(), $"proxy-config-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(path, "listeners: [{ name: a }]\n");
        try
        {
            var result = ConfigLoader.LoadFile(path);

            Assert.Null(result.Snapshot);
            Assert.Equal([$"{path}:1:13: listener is missing required key 'address'"], result.Errors.Select(e => e.ToString()));
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// Escapes are compared byte for byte and requests are routed with upper-case hex, so a template's lower-case
    /// escape is upper-cased when it is compiled.
    /// </summary>
    [Fact]
    public void Compile_LowerCaseEscapeInTemplate_MatchesUpperCaseRequest()
    {
        var result = ConfigLoader.LoadText(
            "listeners:\n  - { name: public, address: \"127.0.0.1:0\" }\nroutes:\n  - { id: cafe, match: { path: \"/caf%c3%a9\" }, respond: { status: 200 } }\n",
            "t.yaml");

        Assert.Empty(result.Errors);
        var route = Assert.Single(result.Snapshot!.Routes.InMatchOrder);
        Assert.Equal("/caf%C3%A9", route.Match.Path);
        Assert.Same(route, result.Snapshot.Routes.Match(Proxy.Core.Tests.Routing.TestRequests.Create("GET", "/caf%C3%A9", "a"), 0));
    }

    /// <summary>routing.md documents "{*rest}" as a catch-all (as YARP has it), but validation refused it.</summary>
    [Fact]
    public void Compile_SingleStarCatchAll_MatchesLikeDoubleStar()
    {
        var result = ConfigLoader.LoadText(
            "listeners:\n  - { name: public, address: \"127.0.0.1:0\" }\nroutes:\n  - { id: s, match: { path: \"/s/{*rest}\" }, respond: { status: 200 } }\n",
            "t.yaml");

        Assert.Empty(result.Errors);
        var routes = result.Snapshot!.Routes;
        var route = Assert.Single(routes.InMatchOrder);
        foreach (string path in new[] { "/s", "/s/", "/s/a/b" })
        {
            Assert.Same(route, routes.Match(Proxy.Core.Tests.Routing.TestRequests.Create("GET", path, "a"), 0));
        }
        Assert.Null(routes.Match(Proxy.Core.Tests.Routing.TestRequests.Create("GET", "/sx", "a"), 0));
    }

    [Fact]
    public void LoadFile_QuickstartSample_Compiles()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Proxy.sln")))
        {
            dir = dir.Parent;
        }
        Assert.NotNull(dir);
        var result = ConfigLoader.LoadFile(Path.Combine(dir.FullName, "samples", "quickstart", "proxy.yaml"));

        Assert.Empty(result.Errors.Select(e => e.ToString()));
        var snapshot = result.Snapshot!;
        Assert.Equal(["public", "echo", "admin"], snapshot.Listeners.Select(l => l.Name));
        Assert.Equal(ListenerHandler.Echo, snapshot.Listeners[1].Handler);
        Assert.Equal(ListenerHandler.Admin, snapshot.Listeners[2].Handler);
        Assert.Equal(9901, snapshot.Admin!.EndPoint.Port);
        Assert.Equal(4, snapshot.Routes.InMatchOrder.Count);
        Assert.Equal("/v2/{rest}", snapshot.Routes.InMatchOrder.Single(r => r.Id == "v1").Rewrite!.Source);
        Assert.Equal("127.0.0.1", snapshot.Clusters["echo"].Destinations[0].Host);
        Assert.Equal(9000, snapshot.Clusters["echo"].Destinations[0].Port);
    }
}
