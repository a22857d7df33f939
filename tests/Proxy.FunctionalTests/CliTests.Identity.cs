using System.Security.Cryptography;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;

namespace Proxy.FunctionalTests;

public sealed partial class CliTests
{
    [Fact]
    public async Task HashKey_Argument_PrintsSha256Hex()
    {
        var result = await RunProxyAsync("hash-key", "alice-secret");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData("alice-secret"u8)), result.StdoutText.Trim());
    }

    [Fact]
    public async Task HashKey_StandardInput_PrintsSha256HexWithoutNewline()
    {
        var proxyDll = ProxyBinary.DllPath();
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var result = await ProcessRunner.RunAsync(dotnet, [proxyDll, "hash-key", "-"], stdin: Encoding.UTF8.GetBytes("bob-secret\n"), timeout: TimeSpan.FromSeconds(30));

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData("bob-secret"u8)), result.StdoutText.Trim());
    }
}

public sealed partial class CliTests
{
    [Fact]
    public async Task Validate_PolicyConflicts_Exits2WithEachProblemPositioned()
    {
        var path = Write("conflicts.yaml", """
            policies:
              nobody: { ip_filter: { allow: [] } }
              keys: { api_key: { keys: [] } }
              reads: { deny: { methods: [GET] } }
            listeners:
              - { name: edge, address: "127.0.0.1:0", public: true }
            routes:
              - { id: open, match: { path: /open, methods: [POST] }, respond: { status: 200 }, policies: [reads, missing] }
            """);

        var result = await RunProxyAsync("validate", "--config", path);

        Assert.True(result.ExitCode == 2, result.ToString());
        string output = result.StdoutText;
        Assert.Contains("conflicts.yaml:2:26: ip_filter policy 'nobody' has an empty 'allow' list", output);
        Assert.Contains("conflicts.yaml:3:11: api_key policy 'keys' can never pass: it has no keys", output);
        Assert.Contains("route 'open' refers to unknown policy 'missing'", output);
        Assert.Contains("route 'open' can never pass: it matches only POST, and policy 'reads' lets through only GET", output);
        Assert.Contains("route 'open' has no authentication policy (jwt, api_key or introspection) on public listener 'edge'", output);
    }
}

public sealed partial class CliTests
{
    /// <summary>
    /// The host process itself loads libsodium (NSec's native dependency, from the build output's
    /// runtimes/linux-x64/native) to import an Ed25519 key, and refuses an Ed448 one with a positioned error.
    /// </summary>
    [Fact]
    public async Task Validate_EdDsaJwks_LoadsEd25519AndRefusesEd448()
    {
        using var ed = NSec.Cryptography.Key.Create(NSec.Cryptography.SignatureAlgorithm.Ed25519);
        string x = System.Buffers.Text.Base64Url.EncodeToString(ed.PublicKey.Export(NSec.Cryptography.KeyBlobFormat.RawPublicKey));
        Write("ed25519.json", $$"""{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed1","x":"{{x}}"}]}""");
        Write("ed448.json", """{"keys":[{"kty":"OKP","crv":"Ed448","kid":"e448","x":"AQAB"}]}""");
        string Config(string jwks) => $$"""
            policies:
              ed: { jwt: { issuer: "https://idp.example.test", audiences: [orders-api], jwks_file: {{jwks}} } }
            listeners:
              - { name: edge, address: "127.0.0.1:0" }
            routes:
              - { id: r, match: { path: /r }, respond: { status: 200 }, policies: [ed] }
            """;

        var good = await RunProxyAsync("validate", "--config", Write("ed25519.yaml", Config("ed25519.json")));
        var bad = await RunProxyAsync("validate", "--config", Write("ed448.yaml", Config("ed448.json")));

        Assert.True(good.ExitCode == 0, good.ToString());
        Assert.True(bad.ExitCode == 2, bad.ToString());
        Assert.Contains("ed448.yaml:2:88: jwks_file 'ed448.json': JWKS key 'e448': curve 'Ed448' is not supported (EdDSA keys must be Ed25519)", bad.StdoutText);
    }
}

public sealed partial class CliTests
{
    /// <summary>
    /// `proxy run` loads its file once (it used to validate with a full compile, then compile again: every policy was
    /// built twice and each jwks_url fetched twice), and `proxy validate` never fetches.
    /// </summary>
    [Fact]
    public async Task Run_JwksUrl_FetchedOnceAtStart_ValidateNeverFetches()
    {
        int fetches = 0;
        await using var keys = RecordingUpstream.Start(UpstreamBehaviors.Respond((_, _) =>
        {
            Interlocked.Increment(ref fetches);
            const string body = """{"keys":[{"kty":"oct","kid":"k1","k":"eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg"}]}""";
            return $"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n{body}";
        }));
        string policies = $$"""
            policies:
              remote: { jwt: { issuer: "https://idp.example.test", audiences: [api], jwks_url: "http://127.0.0.1:{{keys.Port}}/jwks.json" } }
            """;

        using (var proxy = await StartAnsweringAsync("jwks.yaml", "http://127.0.0.1:1", policies))
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (Volatile.Read(ref fetches) == 0 && DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }
            await Task.Delay(500); // room for a second fetch, if one were coming
        }
        var validate = await RunProxyAsync("validate", "--config", Path.Combine(_directory, "jwks.yaml"));

        Assert.True(validate.ExitCode == 0, validate.ToString());
        Assert.Equal(1, Volatile.Read(ref fetches));
    }
}
