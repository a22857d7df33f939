using System.Net;
using System.Text;
using Proxy.Configuration;
using Proxy.Model;

namespace Proxy.Core.Tests.Configuration;

/// <summary>The <c>admin:</c> block: reading, validation (address, token, collisions, reserved name) and compilation.</summary>
public class AdminConfigTests
{
    private static ConfigLoadResult Load(params string[] lines) => ConfigLoader.LoadText(string.Join('\n', lines) + "\n", "t.yaml");

    private static string[] Errors(params string[] lines) => Load(lines).Errors.Select(e => e.ToString()).ToArray();

    [Fact]
    public void Compile_AdminBlock_AddsAdminListenerLastAndAdminModel()
    {
        var result = Load(
            "admin: { address: \"127.0.0.1:9901\", token: s3cr3t-T0ken }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\" }");

        Assert.True(result.Success, string.Join("\n", result.Errors));
        var snapshot = result.Snapshot!;
        var admin = snapshot.Listeners[^1];
        Assert.Equal(("admin", ListenerHandler.Admin, 1), (admin.Name, admin.Handler, admin.Index));
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 9901), admin.EndPoint);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 9901), snapshot.Admin!.EndPoint);
        Assert.Equal("s3cr3t-T0ken", Encoding.UTF8.GetString(snapshot.Admin.Token!));
        Assert.Equal("public", snapshot.Listeners[0].Name);
    }

    [Fact]
    public void Compile_NoAdminBlock_HasNoAdminListener()
    {
        var snapshot = Load("listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }").Snapshot!;

        Assert.Null(snapshot.Admin);
        Assert.DoesNotContain(snapshot.Listeners, l => l.Handler == ListenerHandler.Admin);
    }

    [Fact]
    public void Compile_AdminWithoutToken_TokenIsNull()
    {
        var snapshot = Load("admin:", "  address: 127.0.0.1:9901", "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }").Snapshot!;

        Assert.Null(snapshot.Admin!.Token);
    }

    [Fact]
    public void Load_AdminMissingAddress_ReportsIt()
    {
        Assert.Equal(
            ["t.yaml:1:8: 'admin' is missing required key 'address'"],
            Errors("admin: { token: abc }", "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }"));
    }

    [Fact]
    public void Load_AdminUnknownKey_SuggestsNearest()
    {
        Assert.Equal(
            ["t.yaml:3:3: unknown key 'adress' in 'admin'; did you mean 'address'?"],
            Errors("admin:", "  address: 127.0.0.1:9901", "  adress: x", "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }"));
    }

    [Fact]
    public void Load_AdminBadAddress_ReportsAtValue()
    {
        var errors = Errors("admin: { address: localhost:9901 }", "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }");

        var error = Assert.Single(errors);
        Assert.StartsWith("t.yaml:1:19: admin ", error);
    }

    [Fact]
    public void Load_AdminAddressSameAsListener_ReportsCollision()
    {
        Assert.Equal(
            ["t.yaml:1:19: admin address '127.0.0.1:8080' is already used by listener 'public' (line 3)"],
            Errors("admin: { address: \"127.0.0.1:8080\" }", "listeners:", "  - { name: public, address: \"127.0.0.1:8080\" }"));
    }

    [Fact]
    public void Load_AdminAddressUnderWildcardListener_ReportsOverlap()
    {
        var error = Assert.Single(Errors("admin: { address: \"127.0.0.1:8080\" }", "listeners:", "  - { name: public, address: \"*:8080\" }"));

        Assert.Contains("admin address '127.0.0.1:8080' overlaps listener 'public' (line 3)", error);
    }

    [Fact]
    public void Load_AdminOnPortZero_NeverCollides()
    {
        Assert.Empty(Errors("admin: { address: \"127.0.0.1:0\" }", "listeners:", "  - { name: public, address: \"127.0.0.1:0\" }"));
    }

    [Theory]
    [InlineData("\"\"", "'token' must not be empty")]
    [InlineData("\"has space\"", "admin token must be a bearer token")]
    [InlineData("\"a=b\"", "admin token must be a bearer token")]
    [InlineData("\"tök\"", "admin token must be a bearer token")]
    public void Load_AdminBadToken_IsRejectedWithoutEchoingIt(string token, string message)
    {
        var error = Assert.Single(Errors($"admin: {{ address: \"127.0.0.1:9901\", token: {token} }}", "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\" }"));

        Assert.Contains(message, error);
        Assert.DoesNotContain("has space", error);
    }

    [Theory]
    [InlineData("abc")]
    [InlineData("A-Z_0.9~+/")]
    [InlineData("dG9rZW4=")]
    [InlineData("dG9rZQ==")]
    public void IsBearerToken_Token68_IsAccepted(string token)
    {
        Assert.True(ConfigValidator.IsBearerToken(token));
    }

    [Fact]
    public void Load_ListenerNamedAdminWithAdminBlock_IsReserved()
    {
        Assert.Equal(
            ["t.yaml:3:13: listener name 'admin' is reserved for the admin API's listener when an 'admin' block is present"],
            Errors("admin: { address: \"127.0.0.1:9901\" }", "listeners:", "  - { name: admin, address: \"127.0.0.1:8080\" }"));
    }

    [Fact]
    public void Load_ListenerNamedAdminWithoutAdminBlock_IsFine()
    {
        Assert.Empty(Errors("listeners:", "  - { name: admin, address: \"127.0.0.1:8080\" }"));
    }

    [Fact]
    public void Load_RouteOnAdminListener_IsRejected()
    {
        Assert.Equal(
            ["t.yaml:5:27: route 'r' refers to listener 'admin', the admin API's listener, which never routes"],
            Errors(
                "admin: { address: \"127.0.0.1:9901\" }",
                "listeners:",
                "  - { name: public, address: \"127.0.0.1:8080\" }",
                "routes:",
                "  - { id: r, listeners: [ admin ], respond: { status: 200 } }"));
    }
}
