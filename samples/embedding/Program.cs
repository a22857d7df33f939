// Embedding the engine: start a gateway from YAML inside your own process, then stop it gracefully.
//   dotnet run --project samples/embedding
using Proxy.Diagnostics;
using Proxy.Hosting;

const string Yaml = """
    listeners:
      - { name: public, address: 127.0.0.1:0 }          # port 0: the OS picks a free port
    routes:
      - { id: hello, match: { path: /hello }, respond: { status: 200, body: "hello from an embedded gateway\n" } }
    """;

// The engine's JSON log lines go to stdout by default; keep stdout for this program's own output.
ProxyLogging.SetOutput(Console.Error);

await using var server = ProxyServer.FromYaml(Yaml, "embedded.yaml");
await server.StartAsync();
var endPoint = server.GetEndPoint("public");
Console.WriteLine($"gateway listening on http://{endPoint}");

using var client = new HttpClient();
Console.Write(await client.GetStringAsync($"http://{endPoint}/hello"));

await server.StopAsync(TimeSpan.FromSeconds(5));
Console.WriteLine($"stopped after {server.RequestsServed} request(s)");
