using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.IdentityModel.Tokens;
using JsonWebKey = Proxy.Pipeline.Filters.JsonWebKey;
using Proxy.Pipeline.Filters;

namespace Proxy.Core.Tests.Pipeline;

/// <summary>
/// A <c>jwt</c> policy's verified-token cache against a key set fetched over HTTP (<see cref="JwksSource"/>): a cached
/// verdict lasts while the set it was verified against is the one in use. A fetch that brings the same set keeps it
/// (and the cache hitting); a fetch that drops a key makes the tokens it signed fail, as a first check would.
/// </summary>
public sealed class JwtKeyRotationTests : IAsyncDisposable
{
    private static readonly JwtTestKeys s_keys = JwtTestKeys.Shared;

    private readonly RSA _other = RSA.Create(2048);
    private readonly KeyServer _server;

    public JwtKeyRotationTests() => _server = new KeyServer(Jwks(rsa1: true, rsa2: false));

    public async ValueTask DisposeAsync()
    {
        await _server.DisposeAsync();
        _other.Dispose();
    }

    /// <summary>A set with the shared RSA key (kid rsa1) and/or another one (kid rsa2).</summary>
    private string Jwks(bool rsa1, bool rsa2)
    {
        var keys = new List<string>();
        if (rsa1)
        {
            var p = s_keys.Rsa.ExportParameters(false);
            keys.Add($$"""{"kty":"RSA","kid":"rsa1","n":"{{JwtTestKeys.B64(p.Modulus!)}}","e":"{{JwtTestKeys.B64(p.Exponent!)}}"}""");
        }
        if (rsa2)
        {
            var p = _other.ExportParameters(false);
            keys.Add($$"""{"kty":"RSA","kid":"rsa2","n":"{{JwtTestKeys.B64(p.Modulus!)}}","e":"{{JwtTestKeys.B64(p.Exponent!)}}"}""");
        }
        return "{\"keys\":[" + string.Join(",", keys) + "]}";
    }

    private JwksSource Source() => new("jwt-remote", new JwksSourceOptions { Url = _server.Url });

    private static JwtFilter Filter(JwksSource source) => new(new JwtOptions
    {
        PolicyName = "jwt-remote",
        Issuer = JwtTestKeys.Issuer,
        Audiences = [JwtTestKeys.Audience],
        KeySource = source,
    }, new JwtClock(JwtTestKeys.Now));

    [Fact]
    public async Task FetchAsync_SameBodyAgain_KeepsTheKeyArray_ChangedBodyPublishesANewOne()
    {
        var source = Source();
        Assert.True(await source.FetchAsync());
        JsonWebKey[] first = source.Keys;

        Assert.True(await source.FetchAsync());
        Assert.Same(first, source.Keys);

        // A key added: a new array with both.
        _server.Body = Jwks(rsa1: true, rsa2: true);
        Assert.True(await source.FetchAsync());
        Assert.NotSame(first, source.Keys);
        Assert.Equal(["rsa1", "rsa2"], source.Keys.Select(k => Encoding.ASCII.GetString(k.Kid!)));

        // A key removed: a new array without it.
        JsonWebKey[] both = source.Keys;
        _server.Body = Jwks(rsa1: false, rsa2: true);
        Assert.True(await source.FetchAsync());
        Assert.NotSame(both, source.Keys);
        Assert.Equal("rsa2"u8, Assert.Single(source.Keys).Kid!);
        Assert.Equal(4, _server.Requests);
    }

    [Fact]
    public async Task Validate_CachedTokenWhoseKeyLeftTheFetchedSet_IsRefused()
    {
        var source = Source();
        Assert.True(await source.FetchAsync());
        var filter = Filter(source);
        byte[] token = Encoding.ASCII.GetBytes(s_keys.Mint("RS256"));
        Assert.Equal(JwtResult.Valid, filter.Validate(token));

        // A refresh that brings the same set: still a cache hit, no second signature check.
        Assert.True(await source.FetchAsync());
        Assert.Equal(JwtResult.Valid, filter.Validate(token));
        Assert.Equal(1, filter.VerificationCount);

        // The issuer withdraws rsa1 (say, compromised): once the set without it is fetched, the cached token is
        // checked again, against the new set, and refused, as it would be at first sight.
        _server.Body = Jwks(rsa1: false, rsa2: true);
        Assert.True(await source.FetchAsync());
        Assert.Equal(JwtResult.Invalid, filter.Validate(token));

        // A token of the key that stays is verified against the new set and cached again.
        byte[] rotated = Encoding.ASCII.GetBytes(s_keys.Mint(credentials: new SigningCredentials(new RsaSecurityKey(_other) { KeyId = "rsa2" }, "RS256")));
        Assert.Equal(JwtResult.Valid, filter.Validate(rotated));
        long checks = filter.VerificationCount;
        Assert.Equal(JwtResult.Valid, filter.Validate(rotated));
        Assert.Equal(checks, filter.VerificationCount);
    }

    /// <summary>
    /// Serves one JWKS body over HTTP/1.1 on 127.0.0.1:0, one response per connection (<c>Connection: close</c>), so
    /// every fetch is a real request on a real socket.
    /// </summary>
    private sealed class KeyServer : IAsyncDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _loop;
        private volatile string _body;
        private int _requests;

        public KeyServer(string body)
        {
            _body = body;
            _listener.Start();
            Url = new Uri($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port.ToString(CultureInfo.InvariantCulture)}/jwks.json");
            _loop = AcceptAsync();
        }

        public Uri Url { get; }

        public string Body { set => _body = value; }

        public int Requests => Volatile.Read(ref _requests);

        private async Task AcceptAsync()
        {
            try
            {
                while (true)
                {
                    using var socket = await _listener.AcceptSocketAsync(_stop.Token);
                    var buffer = new byte[4096];
                    int read = 0;
                    // The request head ends with an empty line; a GET has no body.
                    while (!Encoding.ASCII.GetString(buffer, 0, read).Contains("\r\n\r\n", StringComparison.Ordinal))
                    {
                        int n = await socket.ReceiveAsync(buffer.AsMemory(read), _stop.Token);
                        if (n == 0)
                        {
                            break;
                        }
                        read += n;
                    }
                    Interlocked.Increment(ref _requests);
                    byte[] body = Encoding.UTF8.GetBytes(_body);
                    byte[] head = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n");
                    await socket.SendAsync(head, _stop.Token);
                    await socket.SendAsync(body, _stop.Token);
                    socket.Shutdown(SocketShutdown.Both);
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _loop;
            _stop.Dispose();
        }
    }
}
