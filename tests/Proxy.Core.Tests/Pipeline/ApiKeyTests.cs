using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Proxy.Configuration;
using Proxy.Pipeline;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>The <c>api_key</c> policy: hashed keys, header or query, identity, answers and config errors.</summary>
public sealed class ApiKeyTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("proxy-apikey-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    internal static string Sha(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    private static ApiKeyFilter Filter(string header = "x-api-key", string query = "", IdentityForwardingOptions? forward = null, int count = 2)
    {
        var keys = new List<ApiKeyEntry>
        {
            new(SHA256.HashData("alice-key"u8), "alice", "free"),
            new(SHA256.HashData("bob-key"u8), "bob", "gold"),
        };
        for (int i = 2; i < count; i++)
        {
            keys.Add(new(SHA256.HashData(Encoding.UTF8.GetBytes($"key-{i}")), $"c{i}", ""));
        }
        return new ApiKeyFilter(new ApiKeyOptions
        {
            PolicyName = "keys",
            Header = query.Length > 0 ? "" : header,
            QueryParameter = query,
            Keys = keys,
            ForwardIdentity = forward,
        });
    }

    [Fact]
    public void OnRequestHeaders_KnownHeaderKey_ContinuesAndSetsConsumerAndPlan()
    {
        var context = RateLimitTests.Context("GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: bob-key\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, Filter().OnRequestHeaders(context));
        Assert.Equal("bob", Encoding.UTF8.GetString(context.Identity.Consumer));
        Assert.Equal("gold", Encoding.UTF8.GetString(context.Identity.Plan));
    }

    [Fact]
    public void OnRequestHeaders_ManyKeys_FindsEveryOne()
    {
        var filter = Filter(count: 1000);
        for (int i = 2; i < 1000; i++)
        {
            var found = filter.Lookup(Encoding.UTF8.GetBytes($"key-{i}"));
            Assert.NotNull(found);
            Assert.Equal($"c{i}", Encoding.UTF8.GetString(found.Value.Consumer));
        }
        Assert.Null(filter.Lookup("key-1000"u8));
    }

    [Fact]
    public void OnRequestHeaders_MissingKey_Responds401WithChallengeAndProblem()
    {
        var context = RateLimitTests.Context("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, Filter().OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal("api_key_missing", context.ReplyDetails);
        Assert.Contains("www-authenticate: ApiKey realm=\"keys\"\r\n", Encoding.ASCII.GetString(context.ReplyHeaders));
        Assert.Equal("application/problem+json", Encoding.ASCII.GetString(context.ReplyContentType));
        var body = JsonDocument.Parse(context.ReplyBody.ToArray()).RootElement;
        Assert.Equal(401, body.GetProperty("status").GetInt32());
        Assert.Contains("x-api-key", body.GetProperty("detail").GetString());
        Assert.True(context.Identity.IsAnonymous);
    }

    [Theory]
    [InlineData("X-API-Key: nope")]
    [InlineData("X-API-Key: alice-key2")]
    [InlineData("X-API-Key: ALICE-KEY")]
    // A valid key next to a second one: the upstream might read the second, which nobody checked.
    [InlineData("X-API-Key: alice-key\r\nX-API-Key: forged")]
    [InlineData("X-API-Key: alice-key\r\nx-api-key: alice-key")]
    public void OnRequestHeaders_UnknownKey_Responds401Invalid(string field)
    {
        var context = RateLimitTests.Context($"GET / HTTP/1.1\r\nHost: a\r\n{field}\r\n\r\n");
        Assert.Equal(FilterStatus.Respond, Filter().OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal("api_key_invalid", context.ReplyDetails);
        Assert.DoesNotContain("nope", Encoding.UTF8.GetString(context.ReplyBody));
    }

    [Theory]
    [InlineData("/?api_key=alice-key", true)]
    [InlineData("/?a=1&api_key=alice%2Dkey&b=2", true)]
    [InlineData("/?xapi_key=alice-key", false)]
    [InlineData("/?api_key=", false)]
    [InlineData("/?api_key=alice-key%2", false)]
    [InlineData("/?api_key=bad", false)]
    [InlineData("/?api_key=alice-key&api_key=forged", false)]
    [InlineData("/?api_key=forged&a=1&api_key=alice-key", false)]
    [InlineData("/?api_key=alice-key&api_key", false)]
    [InlineData("/?api_key=alice-key&api_keys=x&xapi_key=y", true)]
    public void OnRequestHeaders_QueryKey_DecodesAndLooksUp(string target, bool allowed)
    {
        var context = RateLimitTests.Context($"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        var status = Filter(query: "api_key").OnRequestHeaders(context);
        Assert.Equal(allowed ? FilterStatus.Continue : FilterStatus.Respond, status);
        if (allowed)
        {
            Assert.Equal("alice", Encoding.UTF8.GetString(context.Identity.Consumer));
        }
    }

    [Theory]
    // Header: a second field spelled with '_' for '-' (CGI-style upstreams read X_API_KEY and X-API-KEY as one
    // variable), before or after the checked one.
    [InlineData("/", "x_api_key: forged\r\nX-API-Key: alice-key\r\n")]
    [InlineData("/", "X-API-Key: alice-key\r\nX_Api_Key: forged\r\n")]
    [InlineData("/", "X-API-Key: alice-key\r\nx-api_key: alice-key\r\n")]
    // Query: a percent-encoded name is the same parameter to the upstream's parser; so is a bare name with no value.
    [InlineData("/?api%5Fkey=forged&api_key=alice-key", "")]
    [InlineData("/?api_key=alice-key&%61pi_key=forged", "")]
    [InlineData("/?api%5fkey=alice-key&api_key=alice-key", "")]
    [InlineData("/?api_key&api_key=alice-key", "")]
    public void OnRequestHeaders_KeySentTwiceAnySpelling_Responds401Invalid(string target, string fields)
    {
        var context = RateLimitTests.Context($"GET {target} HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        var filter = target.Contains('?') ? Filter(query: "api_key") : Filter();
        Assert.Equal(FilterStatus.Respond, filter.OnRequestHeaders(context));
        Assert.Equal(401, context.ReplyStatus);
        Assert.Equal("api_key_invalid", context.ReplyDetails);
        Assert.True(context.Identity.IsAnonymous);
    }

    [Theory]
    // One copy, percent-encoded name: the upstream's parser reads it as api_key, and so do we.
    [InlineData("/?api%5Fkey=alice-key", "")]
    [InlineData("/?x=api_key&api_key=alice-key&api_key_2=x&y=api_key", "")]
    // Other names that only look alike are other parameters and fields.
    [InlineData("/", "X-API-Key: alice-key\r\nx-api-keys: forged\r\nx_api: y\r\n")]
    public void OnRequestHeaders_KeyOnceAmongLookAlikes_Continues(string target, string fields)
    {
        var context = RateLimitTests.Context($"GET {target} HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        var filter = target.Contains('?') ? Filter(query: "api_key") : Filter();
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.Equal("alice", Encoding.UTF8.GetString(context.Identity.Consumer));
    }

    [Fact]
    public void OnRequestHeaders_ForwardIdentity_StripsClientCopiesAndAddsConsumer()
    {
        var filter = Filter(forward: new IdentityForwardingOptions { Consumer = "x-consumer", Plan = "x-plan", Subject = "x-auth-subject" });
        var context = RateLimitTests.Context("GET / HTTP/1.1\r\nHost: a\r\nX-Consumer: admin\r\nx-auth-subject: root\r\nX-API-Key: alice-key\r\n\r\n");
        Assert.Equal(FilterStatus.Continue, filter.OnRequestHeaders(context));
        Assert.True(context.IsRemovedUpstream("X-Consumer"u8));
        Assert.True(context.IsRemovedUpstream("x-auth-subject"u8));
        Assert.True(context.IsRemovedUpstream("x-plan"u8));
        Assert.False(context.IsRemovedUpstream("x-api-key"u8));
        Assert.Equal("x-consumer: alice\r\nx-plan: free\r\n", Encoding.ASCII.GetString(context.UpstreamAddedFields));
    }

    [Fact]
    public void OnRequestHeaders_SteadyState_AllocatesNothing()
    {
        var filter = Filter(forward: new IdentityForwardingOptions { Consumer = "x-consumer" });
        var (head, context) = FilterContexts.Create("GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: alice-key\r\n\r\n");
        var client = System.Net.IPAddress.Loopback;
        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            // Re-bound per request, as the connection does.
            context.Begin(head, client, "r", "public");
            filter.OnRequestHeaders(context);
        }, iterations: 1000);
        Assert.True(allocated < 100, $"{allocated} bytes allocated over the loop (best of three rounds)");
    }

    private static string[] Errors(params string[] lines)
        => ConfigLoader.LoadText(string.Join('\n', lines) + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    private static string[] PolicyErrors(params string[] policyLines) => Errors(
    [
        "policies:", .. policyLines,
        "listeners:",
        "  - { name: public, address: \"127.0.0.1:8080\" }",
        "routes:",
        "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [keys] }",
    ]);

    [Fact]
    public void Validate_ValidApiKey_CompilesWithDefaultHeader()
    {
        var result = ConfigLoader.LoadText(string.Join('\n',
            "policies:",
            "  keys:",
            "    api_key:",
            "      keys:",
            $"        - {{ sha256: {Sha("alice-key")}, consumer: alice, plan: free }}",
            $"        - {{ sha256: {Sha("bob-key").ToUpperInvariant()}, consumer: bob }}",
            "      forward_identity: { consumer: X-Consumer, plan: x-plan }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [keys] }") + "\n", "t.yaml");
        Assert.Empty(result.Errors);
        var filter = Assert.IsType<ApiKeyFilter>(result.Snapshot!.Routes.InMatchOrder.Single().Filters(0).RequestHeaders[0]);
        Assert.Equal("x-api-key", filter.Options.Header);
        Assert.Equal(2, filter.Options.Keys.Count);
        Assert.Equal("x-consumer", filter.Options.ForwardIdentity!.Consumer);
        Assert.NotNull(filter.Lookup("bob-key"u8));
    }

    [Fact]
    public void Validate_NoKeys_ReportsNeverPasses()
    {
        Assert.Equal(["t.yaml:3:5: api_key policy 'keys' can never pass: it has no keys (add 'keys' or 'keys_file')"],
            PolicyErrors("  keys:", "    api_key: { header: x-api-key, keys: [] }"));
    }

    [Fact]
    public void Validate_BadHashAndDuplicate_ReportPositions()
    {
        string sha = Sha("a");
        var errors = PolicyErrors(
            "  keys:",
            "    api_key:",
            "      keys:",
            "        - { sha256: abc, consumer: x }",
            $"        - {{ sha256: {sha}, consumer: y }}",
            $"        - {{ sha256: {sha}, consumer: z }}",
            $"        - {{ sha256: {Sha("b")} }}");
        Assert.Equal(3, errors.Length);
        Assert.StartsWith("t.yaml:5:21: invalid sha256", errors[0]);
        Assert.StartsWith("t.yaml:7:21: the same API key is listed twice (first at line 6, column 21)", errors[1]);
        Assert.StartsWith("t.yaml:8:11: an api_key key is missing 'consumer'", errors[2]);
    }

    [Fact]
    public void Validate_HeaderAndQuery_ReportsChooseOne()
    {
        var errors = PolicyErrors("  keys:", $"    api_key: {{ header: x-k, query: k, keys: [{{ sha256: {Sha("a")}, consumer: c }}] }}");
        Assert.Equal(["t.yaml:3:5: api_key policy 'keys' has both 'header' and 'query'; choose one"], errors);
    }

    [Fact]
    public void Validate_ForwardIdentityOwnedHeader_Reported()
    {
        var errors = PolicyErrors("  keys:", $"    api_key: {{ keys: [{{ sha256: {Sha("a")}, consumer: c }}], forward_identity: {{ consumer: Host }} }}");
        Assert.Single(errors);
        Assert.Contains("'Host' cannot carry the identity", errors[0]);
    }

    [Fact]
    public void Load_KeysFile_ReadsHashesRelativeToConfig()
    {
        File.WriteAllText(Path.Combine(_dir, "keys.txt"), $"# consumers\n{Sha("alice-key")} alice free\n\n{Sha("bob-key")} bob\n");
        string path = Path.Combine(_dir, "proxy.yaml");
        File.WriteAllText(path, string.Join('\n',
            "policies:",
            "  keys:",
            "    api_key: { query: api_key, keys_file: keys.txt }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [keys] }") + "\n");
        var result = ConfigLoader.LoadFile(path);
        Assert.Empty(result.Errors);
        var filter = Assert.IsType<ApiKeyFilter>(result.Snapshot!.Routes.InMatchOrder.Single().Filters(0).RequestHeaders[0]);
        Assert.Equal("api_key", filter.Options.QueryParameter);
        Assert.Equal("free", Encoding.UTF8.GetString(filter.Lookup("alice-key"u8)!.Value.Plan));
        Assert.Equal("", Encoding.UTF8.GetString(filter.Lookup("bob-key"u8)!.Value.Plan));
    }

    [Fact]
    public void Load_KeysFileBadLine_ReportsLineNumber()
    {
        File.WriteAllText(Path.Combine(_dir, "keys.txt"), $"{Sha("a")} alice\nnot-a-hash bob\n");
        string path = Path.Combine(_dir, "proxy.yaml");
        File.WriteAllText(path, string.Join('\n',
            "policies:",
            "  keys:",
            "    api_key: { keys_file: keys.txt }",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\" }",
            "routes:",
            "  - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [keys] }") + "\n");
        var errors = ConfigLoader.LoadFile(path).Errors;
        Assert.Single(errors);
        Assert.Contains("keys_file 'keys.txt' line 2: invalid sha256", errors[0].Message);
    }
}
