using Proxy.Configuration;

namespace Proxy.Core.Tests.Pipeline;

/// <summary><c>proxy validate</c>'s checks of a route against its chain: public listeners and method allow lists.</summary>
public class PolicyConflictTests
{
    private static string[] Errors(params string[] lines)
        => ConfigLoader.LoadText(string.Join('\n', lines) + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    private static readonly string s_keyHash = new('a', 64);

    [Fact]
    public void Validate_PublicListenerRouteWithoutAuthentication_Reported()
    {
        var errors = Errors(
            "policies:",
            "  waf: { deny: { xss: true } }",
            "listeners:",
            "  - { name: edge, address: \"127.0.0.1:8080\", public: true }",
            "  - { name: internal, address: \"127.0.0.1:8081\" }",
            "routes:",
            "  - { id: open, match: { path: /open }, respond: { status: 200 }, policies: [waf] }");
        Assert.Equal(["t.yaml:7:5: route 'open' has no authentication policy (jwt, api_key or introspection) on public listener 'edge'; "
            + "add one, or set 'allow_anonymous: true' on the route if it is meant to be open"], errors);
    }

    [Fact]
    public void Validate_PublicListenerWithAuthenticationDefaultOrAnonymousRoute_Accepted()
    {
        Assert.Empty(Errors(
            "policies:",
            $"  keys: {{ api_key: {{ keys: [{{ sha256: {s_keyHash}, consumer: c }}] }} }}",
            "listeners:",
            "  - { name: edge, address: \"127.0.0.1:8080\", public: true, policies: [keys] }",
            "routes:",
            "  - { id: a, match: { path: /a }, respond: { status: 200 } }"));
        Assert.Empty(Errors(
            "listeners:",
            "  - { name: edge, address: \"127.0.0.1:8080\", public: true }",
            "routes:",
            "  - { id: health, match: { path: /health }, respond: { status: 200 }, allow_anonymous: true }"));
    }

    [Fact]
    public void Validate_RouteOnlyOnPrivateListener_NotReported()
    {
        Assert.Empty(Errors(
            "listeners:",
            "  - { name: edge, address: \"127.0.0.1:8080\", public: true }",
            "  - { name: internal, address: \"127.0.0.1:8081\" }",
            "routes:",
            "  - { id: admin, listeners: [internal], match: { path: /admin }, respond: { status: 200 } }"));
    }

    [Fact]
    public void Validate_DenyMethodsExcludeEveryRouteMethod_Reported()
    {
        var errors = Errors(
            "policies:",
            "  reads: { deny: { methods: [GET, HEAD] } }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\", policies: [reads] }",
            "routes:",
            "  - { id: writes, match: { path: /w, methods: [put, DELETE] }, respond: { status: 200 } }",
            "  - { id: mixed, match: { path: /m, methods: [GET, POST] }, respond: { status: 200 } }",
            "  - { id: any, match: { path: /any }, respond: { status: 200 } }");
        Assert.Equal(["t.yaml:6:48: route 'writes' can never pass: it matches only PUT, DELETE, and policy 'reads' lets through only GET, HEAD"], errors);
    }

    [Theory]
    [InlineData("https://a.test", "[x, y]", "https://b.test", "[x]", "require different issuers ('https://a.test' and 'https://b.test')")]
    [InlineData("https://a.test", "[x, y]", "https://a.test", "[z]", "accept no audience in common")]
    [InlineData("https://a.test", "[x, y]", "https://a.test", "[y, z]", null)]
    public void Validate_TwoJwtPoliciesOnOneChain_ConflictsReported(string issuerA, string audiencesA, string issuerB, string audiencesB, string? message)
    {
        var errors = Errors(
            "policies:",
            $"  a: {{ jwt: {{ issuer: \"{issuerA}\", audiences: {audiencesA}, jwks_url: \"http://127.0.0.1:1/jwks\" }} }}",
            $"  b: {{ jwt: {{ issuer: \"{issuerB}\", audiences: {audiencesB}, jwks_url: \"http://127.0.0.1:1/jwks\" }} }}",
            "listeners:",
            "  - { name: edge, address: \"127.0.0.1:8080\", policies: [a] }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [b] }");
        if (message is null)
        {
            Assert.Empty(errors);
        }
        else
        {
            Assert.Equal([$"t.yaml:7:5: route 'r' can never pass: jwt policies 'a' and 'b' both check the bearer token but {message}"], errors);
        }
    }
}
