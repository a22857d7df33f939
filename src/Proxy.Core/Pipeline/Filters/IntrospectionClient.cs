using System.Net;
using System.Net.Http.Headers;
using System.Text;

namespace Proxy.Pipeline.Filters;

/// <summary>The introspection server answered, but not with a usable response (status other than 200, bad JSON).</summary>
internal sealed class IntrospectionServerException(string message) : Exception(message);

/// <summary>
/// Asks an RFC 7662 introspection endpoint about one token: <c>POST</c> with an
/// <c>application/x-www-form-urlencoded</c> body <c>token=...&amp;token_type_hint=access_token</c> (section 2.1),
/// authenticated with HTTP Basic (RFC 6749 section 2.3.1: client id and secret form-urlencoded, then
/// <c>id:secret</c> base64), expecting 200 and a JSON object (section 2.2). Throws on any failure; the filter maps
/// every failure to one 503.
/// </summary>
/// <remarks>
/// One <see cref="HttpClient"/> for the process (a pooled <see cref="SocketsHttpHandler"/>), shared by every policy and
/// every reload, so connections to the endpoint are kept alive and reused; connections are recycled every 5 minutes
/// so a DNS change is picked up. Responses are buffered up to 64 KiB (a larger one fails).
/// </remarks>
internal sealed class IntrospectionClient
{
    /// <summary>Largest response body read; real ones are a few hundred bytes.</summary>
    public const int MaxResponseBytes = 64 * 1024;

    private static readonly HttpClient s_client = new(new SocketsHttpHandler
    {
        PooledConnectionLifetime = TimeSpan.FromMinutes(5),
        PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
        AutomaticDecompression = DecompressionMethods.None,
        AllowAutoRedirect = false,
        UseCookies = false,
        UseProxy = false,
    })
    {
        // Each call carries its own deadline (the policy's timeout).
        Timeout = System.Threading.Timeout.InfiniteTimeSpan,
        MaxResponseContentBufferSize = MaxResponseBytes,
    };

    private readonly AuthenticationHeaderValue _authorization;

    public IntrospectionClient(Uri url, string clientId, string clientSecret, TimeSpan timeout)
    {
        Url = url;
        Timeout = timeout;
        // RFC 6749 section 2.3.1: each part is form-urlencoded before joining, so a ':' in the id survives.
        string credentials = Uri.EscapeDataString(clientId) + ":" + Uri.EscapeDataString(clientSecret);
        _authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes(credentials)));
    }

    public Uri Url { get; }

    public TimeSpan Timeout { get; }

    /// <summary>One introspection call, within <see cref="Timeout"/>.</summary>
    public async Task<IntrospectionResult> IntrospectAsync(string token, byte[][] requiredScopes)
    {
        using var cts = new CancellationTokenSource(Timeout);
        using var request = new HttpRequestMessage(System.Net.Http.HttpMethod.Post, Url)
        {
            Content = new FormUrlEncodedContent([new("token", token), new("token_type_hint", "access_token")]),
        };
        request.Headers.Authorization = _authorization;
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
        using HttpResponseMessage response = await s_client.SendAsync(request, cts.Token).ConfigureAwait(false);
        if (response.StatusCode != HttpStatusCode.OK)
        {
            // Section 2.3: 401 when the proxy's own credentials are refused; anything else is a server problem too.
            throw new IntrospectionServerException($"HTTP {(int)response.StatusCode}");
        }
        byte[] body = await response.Content.ReadAsByteArrayAsync(cts.Token).ConfigureAwait(false);
        if (!IntrospectionResponseParser.TryParse(body, requiredScopes, out IntrospectionResult result))
        {
            throw new IntrospectionServerException("the response is not an RFC 7662 JSON object with a boolean 'active'");
        }
        return result;
    }
}
