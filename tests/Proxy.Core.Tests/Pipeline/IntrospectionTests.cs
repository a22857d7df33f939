using System.Text;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The introspection policy's parts: the RFC 7662 response parser, the bounded cache and the cached decision.</summary>
public class IntrospectionTests
{
    private static readonly DateTimeOffset s_now = new(2026, 11, 28, 6, 0, 0, TimeSpan.Zero);
    private static readonly byte[][] s_scopes = [Encoding.UTF8.GetBytes("orders.read"), Encoding.UTF8.GetBytes("orders.write")];

    private static IntrospectionResult Parse(string json)
    {
        Assert.True(IntrospectionResponseParser.TryParse(Encoding.UTF8.GetBytes(json), s_scopes, out var result), json);
        return result;
    }

    [Fact]
    public void Parse_ActiveWithClaims_ReadsActiveExpIdentityAndScopes()
    {
        var result = Parse("""
            {"active":true,"client_id":"web","username":"alice","scope":"profile orders.write orders.read","sub":"u-42",
             "aud":["a","b"],"iss":"https://idp","exp":1796000000,"iat":1795990000,"ext":{"nested":[1,{"x":2}]}}
            """);
        Assert.True(result.Active);
        Assert.Equal(1796000000, result.ExpiresAt);
        Assert.Equal("u-42", Encoding.UTF8.GetString(result.Subject!));
        Assert.Equal("web", Encoding.UTF8.GetString(result.ClientId!));
        Assert.Equal(0b11UL, result.Scopes);
    }

    [Fact]
    public void Parse_InactiveOnly_IsInactiveWithoutIdentity()
    {
        var result = Parse("""{"active":false}""");
        Assert.False(result.Active);
        Assert.Equal(0, result.ExpiresAt);
        Assert.Null(result.Subject);
        Assert.Null(result.ClientId);
    }

    [Theory]
    [InlineData("""{"scope":"orders.read"}""")]
    [InlineData("""{"active":"true"}""")]
    [InlineData("""{"active":1}""")]
    [InlineData("""[{"active":true}]""")]
    [InlineData("""{"active":true""")]
    [InlineData("""not json""")]
    [InlineData("")]
    [InlineData("""{"active":true,"exp":"soon"}""")]
    [InlineData("""{"active":true,"sub":42}""")]
    [InlineData("""{"active":true,"scope":["orders.read"]}""")]
    public void Parse_NotAnRfc7662Object_Fails(string json)
    {
        Assert.False(IntrospectionResponseParser.TryParse(Encoding.UTF8.GetBytes(json), s_scopes, out _));
    }

    [Fact]
    public void Parse_EscapedValues_AreUnescaped()
    {
        var result = Parse("""{"active":true,"sub":"al\u0069ce","scope":"orders\u002eread"}""");
        Assert.Equal("alice", Encoding.UTF8.GetString(result.Subject!));
        Assert.Equal(0b01UL, result.Scopes);
    }

    [Fact]
    public void Parse_FractionalExp_DropsFraction()
    {
        Assert.Equal(1796000000, Parse("""{"active":true,"exp":1796000000.75}""").ExpiresAt);
    }

    [Fact]
    public void Parse_ScopePrefixOfRequired_DoesNotMatch()
    {
        Assert.Equal(0UL, Parse("""{"active":true,"scope":"orders orders.readonly"}""").Scopes);
    }

    /// <summary>An escape that is not valid UTF-16 (a lone surrogate) is a broken response, not an exception out of the parser.</summary>
    [Theory]
    [InlineData("""{"active":true,"sub":"\ud800"}""")]
    [InlineData("""{"active":true,"client_id":"a\udc00b"}""")]
    [InlineData("""{"active":true,"scope":"orders.read \ud800"}""")]
    public void Parse_LoneSurrogateEscape_Fails(string json)
    {
        Assert.False(IntrospectionResponseParser.TryParse(Encoding.UTF8.GetBytes(json), s_scopes, out _));
    }

    [Fact]
    public void Parse_SubjectOverLimit_Fails()
    {
        string json = $$"""{"active":true,"sub":"{{new string('a', IntrospectionResponseParser.MaxIdentityBytes + 1)}}"}""";
        Assert.False(IntrospectionResponseParser.TryParse(Encoding.UTF8.GetBytes(json), s_scopes, out _));
    }

    private static IntrospectionCache.Entry Entry(string token, long expiresAt, bool active = true)
        => new(TokenDigest.Of(Encoding.ASCII.GetBytes(token)), active, expiresAt, null, null, 0);

    [Fact]
    public void Cache_ManyTokens_NeverHoldsMoreThanCapacity()
    {
        var cache = new IntrospectionCache(100);
        for (int i = 0; i < 1000; i++)
        {
            cache.Add(Entry($"token-{i}", 10_000 + i), 0);
        }
        Assert.True(cache.Count <= 100, $"{cache.Count} entries");
        // The latest one is always findable.
        Assert.NotNull(cache.TryGet(TokenDigest.Of("token-999"u8), 0));
    }

    [Fact]
    public void Cache_Expired_Misses()
    {
        var cache = new IntrospectionCache(16);
        cache.Add(Entry("t", 1000), 0);
        Assert.NotNull(cache.TryGet(TokenDigest.Of("t"u8), 999));
        Assert.Null(cache.TryGet(TokenDigest.Of("t"u8), 1000));
        Assert.Null(cache.TryGet(TokenDigest.Of("other"u8), 0));
    }

    [Fact]
    public void Cache_SameTokenAgain_ReplacesAnswer()
    {
        var cache = new IntrospectionCache(16);
        cache.Add(Entry("t", 1000, active: true), 0);
        cache.Add(Entry("t", 2000, active: false), 0);
        var entry = cache.TryGet(TokenDigest.Of("t"u8), 0);
        Assert.NotNull(entry);
        Assert.False(entry.Active);
        Assert.Equal(1, cache.Count);
    }

    private static IntrospectionFilter Filter(TimeProvider time, IReadOnlyList<string>? scopes = null) => new(new IntrospectionOptions
    {
        PolicyName = "opaque",
        Url = new Uri("http://127.0.0.1:1/introspect"),
        ClientId = "gw",
        ClientSecret = "s3cret",
        RequiredScopes = scopes ?? [],
        CacheTtl = TimeSpan.FromMinutes(5),
    }, time);

    [Fact]
    public void ToEntry_ExpBeforeTtl_ExpiresAtExp()
    {
        var filter = Filter(new JwtClock(s_now));
        long now = s_now.ToUnixTimeMilliseconds();
        long exp = s_now.ToUnixTimeSeconds() + 60;
        var entry = filter.ToEntry(default, new IntrospectionResult(true, exp, null, null, 0), now);
        Assert.Equal(exp * 1000, entry.ExpiresAt);
        var longLived = filter.ToEntry(default, new IntrospectionResult(true, exp + 86_400, null, null, 0), now);
        Assert.Equal(now + 300_000, longLived.ExpiresAt);
    }

    [Fact]
    public void ToEntry_InactiveOrPastExp_CachedBriefly()
    {
        var filter = Filter(new JwtClock(s_now));
        long now = s_now.ToUnixTimeMilliseconds();
        var inactive = filter.ToEntry(default, new IntrospectionResult(false, 0, null, null, 0), now);
        Assert.False(inactive.Active);
        Assert.Equal(now + 30_000, inactive.ExpiresAt);
        var past = filter.ToEntry(default, new IntrospectionResult(true, s_now.ToUnixTimeSeconds() - 1, null, null, 0), now);
        Assert.False(past.Active);
    }

    private static void Seed(IntrospectionFilter filter, string token, IntrospectionResult result)
    {
        long now = s_now.ToUnixTimeMilliseconds();
        filter.Cache.Add(filter.ToEntry(TokenDigest.Of(Encoding.ASCII.GetBytes(token)), result, now), now);
    }

    [Fact]
    public void OnRequestHeaders_CachedActive_ContinuesWithIdentityWithoutAllocating()
    {
        var filter = Filter(new JwtClock(s_now));
        Seed(filter, "opaque-1", new IntrospectionResult(true, 0, "alice"u8.ToArray(), "web"u8.ToArray(), 0));
        var context = RateLimitTests.Context("GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer opaque-1\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.Equal("alice", Encoding.UTF8.GetString(context.Identity.Subject));
        Assert.Equal("web", Encoding.UTF8.GetString(context.Identity.ClientId));
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        long allocated = SteadyStateAllocation.BestOfRounds(() => filter.OnRequestHeaders(context), iterations: 1000);
        Assert.True(allocated < 1024, $"{allocated} bytes allocated over the loop (best of three rounds)");
        Assert.Equal(0, filter.CallCount);
    }

    [Fact]
    public void OnRequestHeaders_CachedInactive_Responds401InvalidToken()
    {
        var filter = Filter(new JwtClock(s_now));
        Seed(filter, "revoked", new IntrospectionResult(false, 0, null, null, 0));
        var context = RateLimitTests.Context("GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer revoked\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal("introspection_inactive", context.ReplyDetails);
        Assert.Contains("error=\"invalid_token\"", Encoding.ASCII.GetString(context.ReplyHeaders));
    }

    [Fact]
    public void OnRequestHeaders_CachedWithoutScope_Responds403InsufficientScope()
    {
        var filter = Filter(new JwtClock(s_now), ["orders.read", "orders.write"]);
        Seed(filter, "reader", new IntrospectionResult(true, 0, null, null, 0b01));
        var context = RateLimitTests.Context("GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer reader\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(403, context.ReplyStatus);
        Assert.Equal("introspection_scope", context.ReplyDetails);
        Assert.Contains("scope=\"orders.read orders.write\"", Encoding.ASCII.GetString(context.ReplyHeaders));
    }

    [Theory]
    [InlineData("", "introspection_missing")]
    [InlineData("Authorization: Basic dXNlcjpwYXNz\r\n", "introspection_missing")]
    [InlineData("Authorization: Bearer not,a,token\r\n", "introspection_malformed")]
    [InlineData("Authorization: Bearer\topaque-1\r\n", "introspection_malformed")]
    [InlineData("Authorization: Bearer\r\n", "introspection_malformed")]
    [InlineData("Authorization: Bearerish opaque-1\r\n", "introspection_missing")]
    public void OnRequestHeaders_NoUsableToken_Responds401WithoutCall(string header, string details)
    {
        var filter = Filter(new JwtClock(s_now));
        var context = RateLimitTests.Context($"GET /orders HTTP/1.1\r\nHost: a\r\n{header}\r\n");
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal(details, context.ReplyDetails);
        Assert.Equal(0, filter.CallCount);
    }

    [Fact]
    public void OnRequestHeaders_Miss_Pauses()
    {
        var filter = Filter(new JwtClock(s_now));
        var context = RateLimitTests.Context("GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer unknown\r\n\r\n");
        Assert.Equal(FilterStatus.Pause, filter.OnRequestHeaders(context));
    }

    private static string[] Errors(params string[] policyLines)
        => ConfigLoader.LoadText(string.Join('\n', [
            "policies:", .. policyLines,
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 } }"]) + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    [Fact]
    public void Validate_CompletePolicy_NoErrors()
    {
        Assert.Empty(Errors("  opaque:", "    introspection:", "      url: http://127.0.0.1:9000/introspect", "      client_id: gw", "      client_secret: s3cret",
            "      required_scopes: [orders.read]", "      cache_max: 10000", "      cache_ttl: 5m", "      timeout: 2s", "      forward_identity: { subject: x-sub }"));
    }

    [Fact]
    public void Validate_MissingUrlAndSecret_ReportsAtKind()
    {
        Assert.Equal([
            "t.yaml:3:5: introspection policy 'opaque' is missing required key 'url' (the RFC 7662 introspection endpoint)",
            "t.yaml:3:5: introspection policy 'opaque' is missing required key 'client_secret' or 'client_secret_file' (the proxy's credentials at the introspection endpoint)",
        ], Errors("  opaque:", "    introspection: { client_id: gw }"));
    }

    [Theory]
    [InlineData("url: ftp://x/introspect", "invalid introspection url 'ftp://x/introspect'")]
    [InlineData("timeout: 5ms", "invalid timeout '5ms'")]
    [InlineData("cache_ttl: 0s", "invalid cache_ttl '0s'")]
    [InlineData("cache_max: 0", "invalid cache_max '0'")]
    [InlineData("cache_maxx: 10", "unknown key 'cache_maxx' in introspection; did you mean 'cache_max'?")]
    public void Validate_BadSetting_ReportsPosition(string line, string message)
    {
        // The base settings, less the one the case overrides (a YAML map cannot repeat a key).
        string[] settings = ["url: http://127.0.0.1:9000/introspect", "client_id: gw", "client_secret: s3cret"];
        string[] lines = [.. settings.Where(s => s.Split(':')[0] != line.Split(':')[0]).Select(s => "      " + s), "      " + line];
        string[] errors = Errors(["  opaque:", "    introspection:", .. lines]);
        Assert.Single(errors);
        Assert.StartsWith($"t.yaml:{3 + lines.Length}:", errors[0]);
        Assert.Contains(message, errors[0]);
    }

    [Fact]
    public void Lint_RouteWithIntrospection_IsAuthenticated()
    {
        string directory = Directory.CreateTempSubdirectory("proxy-introspection-").FullName;
        try
        {
            string path = Path.Combine(directory, "p.yaml");
            File.WriteAllText(path, """
                listeners:
                  - { name: public, address: "127.0.0.1:0" }
                policies:
                  opaque: { introspection: { url: "http://127.0.0.1:1/introspect", client_id: gw, client_secret: s3cret } }
                routes:
                  - { id: api, match: { path: /api }, respond: { status: 200 }, policies: [opaque] }
                """);
            var (errors, findings) = ConfigLint.Run(path);
            Assert.Empty(errors);
            Assert.DoesNotContain(findings, f => f.Code == "no_authentication");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void Validate_PublicListenerWithIntrospection_CountsAsAuthenticated()
    {
        var result = ConfigLoader.LoadText("""
            policies:
              opaque: { introspection: { url: "http://127.0.0.1:1/introspect", client_id: gw, client_secret: s3cret } }
            listeners:
              - { name: edge, address: "127.0.0.1:0", public: true }
            routes:
              - { id: api, match: { path: /api }, respond: { status: 200 }, policies: [opaque] }
              - { id: open, match: { path: /open }, respond: { status: 200 } }
            """, "t.yaml");
        // Only the route without a policy is reported.
        var error = Assert.Single(result.Errors);
        Assert.Contains("route 'open' has no authentication policy", error.ToString());
    }
}
