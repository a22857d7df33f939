// A custom policy kind: a filter that rejects requests without a given header, registered before the config loads
// and then used from YAML like the built-in kinds.
//   dotnet run --project samples/custom-filter
using System.Text;
using Proxy.Hosting;
using Proxy.Pipeline;

// The factory runs when the config is validated and compiled: check settings here and throw ArgumentException with a
// message for the user; it is reported as a config error at the policy's line.
PolicyKinds.Register("require_header", definition =>
{
    if (!definition.Settings.TryGetValue("name", out var name) || name.Length == 0)
    {
        throw new ArgumentException("'name' is required: the header every request must carry");
    }
    return new RequireHeaderFilter(definition.Name, name);
});

const string Yaml = """
    policies:
      tenant-required:
        require_header: { name: x-tenant }
    listeners:
      - { name: public, address: 127.0.0.1:0 }
    routes:
      - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello, tenant\n" }, policies: [tenant-required] }
    """;

await using var server = ProxyServer.FromYaml(Yaml, "custom-filter.yaml");
await server.StartAsync();
var url = $"http://{server.GetEndPoint("public")}/hello";

using var client = new HttpClient();
using (var rejected = await client.GetAsync(url))
{
    Console.WriteLine($"without x-tenant: {(int)rejected.StatusCode} {await rejected.Content.ReadAsStringAsync()}");
}
using (var request = new HttpRequestMessage(HttpMethod.Get, url) { Headers = { { "x-tenant", "acme" } } })
using (var accepted = await client.SendAsync(request))
{
    Console.Write($"with x-tenant:    {(int)accepted.StatusCode} {await accepted.Content.ReadAsStringAsync()}");
}
await server.StopAsync(TimeSpan.FromSeconds(5));

/// <summary>
/// Built once per policy and shared by every connection: immutable, and it allocates nothing per request (the header
/// name is converted to bytes once, the answer body is a constant).
/// </summary>
internal sealed class RequireHeaderFilter(string policyName, string headerName) : IRequestHeadersFilter
{
    private readonly byte[] _name = Encoding.ASCII.GetBytes(headerName);
    private readonly byte[] _body = Encoding.UTF8.GetBytes($"missing header '{headerName}' (policy {policyName})\n");

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        if (context.TryGetHeader(_name, out var value) && !value.IsEmpty)
        {
            return FilterStatus.Continue;
        }
        return context.Respond(400, "missing_required_header", "text/plain; charset=utf-8"u8, _body);
    }
}
