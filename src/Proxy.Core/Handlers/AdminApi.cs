using System.Buffers;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Proxy.Diagnostics;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Transport;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Handlers;

/// <summary>What the admin API needs from the server beyond the config snapshot; implemented by <c>ProxyServer</c>.</summary>
internal interface IAdminHost
{
    /// <summary>Config loaded, every listener bound, and no drain or stop begun.</summary>
    bool IsReady { get; }

    bool IsDraining { get; }

    /// <summary>Starts a graceful drain and returns at once (idempotent).</summary>
    void BeginDrain();

    /// <summary>The address a listener is actually bound to (differs from the config with port 0), or null.</summary>
    IPEndPoint? BoundEndPoint(string listenerName);

    /// <summary>The last reload attempt, or null when none was made.</summary>
    Hosting.ConfigReloadResult? LastReload { get; }

    /// <summary>False for a server created from YAML text: there is no file to read again.</summary>
    bool CanReloadFromFile { get; }

    /// <summary>Reads the config file again and applies it (never throws for a bad config).</summary>
    Task<Hosting.ConfigReloadResult> ReloadAsync();
}

/// <summary>One admin answer before it is written: status, media type, body and any extra header fields.</summary>
internal sealed record AdminResponse(int Status, string ContentType, byte[] Body, params (string Name, string Value)[] Headers)
{
    public string BodyText => Encoding.UTF8.GetString(Body);

    public static AdminResponse Text(int status, string text, params (string Name, string Value)[] headers)
        => new(status, "text/plain; charset=utf-8", Encoding.UTF8.GetBytes(text + "\n"), headers);
}

/// <summary>
/// The admin API behind the <c>admin:</c> block's listener, served by our own HTTP/1.1 engine like the echo handler:
/// health and readiness probes, Prometheus metrics, the loaded config, routes and clusters, and a graceful drain.
/// Control plane: answers are built with plain allocating code. When a token is configured every request must carry
/// <c>Authorization: Bearer &lt;token&gt;</c> (RFC 6750 section 2.1), compared in constant time.
/// </summary>
internal static class AdminApi
{
    /// <summary>Keys whose values are secrets: anything written under them in <c>/config</c> is replaced.</summary>
    private static readonly HashSet<string> s_secretKeys = new(StringComparer.Ordinal) { "token" };

    public const string Redacted = "<redacted>";

    private const string Endpoints = "GET /healthz /readyz /metrics /config /routes /clusters /insights; POST /drain /reload";

    public static async ValueTask<bool> HandleAsync(Http1ServerConnection connection, ProxyRuntime runtime)
    {
        RequestHead head = connection.Head;
        // No endpoint reads a body; it is consumed so the connection stays usable.
        if (!await connection.ConsumeBodyAsync().ConfigureAwait(false))
        {
            return false;
        }

        AdminResponse response = IsReload(head, runtime) ? await ReloadAsync(runtime.AdminHost!).ConfigureAwait(false) : Dispatch(head, runtime);
        connection.ResponseStatus = response.Status;
        bool keepAlive = head.KeepAlive && !connection.Draining;
        var output = connection.Output;
        output.Write(Encoding.ASCII.GetBytes($"HTTP/1.1 {response.Status} {StatusCodes.ReasonPhrase(response.Status)}\r\n"));
        output.Write(Encoding.ASCII.GetBytes($"content-type: {response.ContentType}\r\ncache-control: no-store\r\n"));
        foreach (var (name, value) in response.Headers)
        {
            output.Write(Encoding.ASCII.GetBytes($"{name}: {value}\r\n"));
        }
        output.Write("content-length: "u8);
        output.WriteNumber(response.Body.Length);
        output.Write("\r\ndate: "u8);
        output.Write(DateHeader.Value);
        output.Write("\r\n"u8);
        output.Write(connection.ConnectionField(keepAlive));
        output.Write("\r\n"u8);
        if (head.Method != HttpMethod.Head)
        {
            output.Write(response.Body);
        }
        return await connection.FlushClientAsync().ConfigureAwait(false) && keepAlive;
    }

    /// <summary>An authorized <c>POST /reload</c> to a server that can reload: the one answer that awaits work.</summary>
    private static bool IsReload(RequestHead head, ProxyRuntime runtime)
        => head.Method == HttpMethod.Post && head.Path.SequenceEqual("/reload"u8) && runtime.AdminHost is { CanReloadFromFile: true }
            && (runtime.Current.Admin?.Token is not { } token || IsAuthorized(head, token));

    /// <summary>200 with the active version, or 422 with every error (the old config stays active).</summary>
    internal static async Task<AdminResponse> ReloadAsync(IAdminHost host)
    {
        Hosting.ConfigReloadResult result = await host.ReloadAsync().ConfigureAwait(false);
        var body = new ArrayBufferWriter<byte>(1024);
        using (var json = new Utf8JsonWriter(body, new JsonWriterOptions { Indented = true }))
        {
            WriteReload(json, null, result);
        }
        body.Write("\n"u8);
        return new AdminResponse(result.Success ? 200 : 422, "application/json", body.WrittenSpan.ToArray());
    }

    private static void WriteReload(Utf8JsonWriter json, string? name, Hosting.ConfigReloadResult result)
    {
        if (name is null)
        {
            json.WriteStartObject();
        }
        else
        {
            json.WriteStartObject(name);
        }
        json.WriteString("result", result.Success ? "success" : "failure");
        json.WriteString("version", result.Version);
        json.WriteBoolean("changed", result.Changed);
        json.WriteString("at", result.At.ToString("O", CultureInfo.InvariantCulture));
        json.WriteStartArray("errors");
        foreach (var error in result.Errors)
        {
            json.WriteStringValue(error);
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    /// <summary>Chooses the answer to one request (no I/O, so unit tests can call it with a parsed head).</summary>
    public static AdminResponse Dispatch(RequestHead head, ProxyRuntime runtime)
    {
        ProxySnapshot snapshot = runtime.Current;
        if (snapshot.Admin?.Token is { } token && !IsAuthorized(head, token))
        {
            // RFC 6750 section 3: a 401 names the scheme; error="invalid_token" only when Bearer credentials were
            // presented. None, or another scheme's (Basic), get the bare challenge (section 3.1: no error code).
            head.TryGetHeader("authorization"u8, out ReadOnlySpan<byte> credentials);
            bool presented = BearerCredentials.Read(credentials, out _) != BearerStatus.Absent;
            string challenge = presented ? "Bearer realm=\"proxy-admin\", error=\"invalid_token\"" : "Bearer realm=\"proxy-admin\"";
            return AdminResponse.Text(401, "unauthorized: send Authorization: Bearer <admin token>", ("www-authenticate", challenge));
        }

        ReadOnlySpan<byte> path = head.Path;
        bool isGet = head.Method is HttpMethod.Get or HttpMethod.Head;
        bool isPost = head.Method == HttpMethod.Post;
        IAdminHost? host = runtime.AdminHost;

        if (path.SequenceEqual("/healthz"u8))
        {
            return isGet ? AdminResponse.Text(200, "ok") : MethodNotAllowed("GET, HEAD");
        }
        if (path.SequenceEqual("/readyz"u8))
        {
            if (!isGet)
            {
                return MethodNotAllowed("GET, HEAD");
            }
            if (host is null || host.IsReady)
            {
                return AdminResponse.Text(200, "ready");
            }
            return AdminResponse.Text(503, host.IsDraining ? "not ready: draining" : "not ready: listeners not bound");
        }
        if (path.SequenceEqual("/metrics"u8))
        {
            return isGet
                ? new AdminResponse(200, PrometheusTextWriter.ContentType, Encoding.UTF8.GetBytes(PrometheusTextWriter.Write(runtime.Metrics.Collect())))
                : MethodNotAllowed("GET, HEAD");
        }
        if (path.SequenceEqual("/config"u8))
        {
            return isGet ? Json(json => WriteConfig(json, snapshot, host)) : MethodNotAllowed("GET, HEAD");
        }
        if (path.SequenceEqual("/routes"u8))
        {
            return isGet ? Json(json => WriteRoutes(json, snapshot)) : MethodNotAllowed("GET, HEAD");
        }
        if (path.SequenceEqual("/clusters"u8))
        {
            return isGet ? Json(json => WriteClusters(json, snapshot)) : MethodNotAllowed("GET, HEAD");
        }
        if (path.SequenceEqual("/insights"u8))
        {
            return isGet ? Json(json => WriteInsights(json, runtime.Observability.Insights.Snapshot())) : MethodNotAllowed("GET, HEAD");
        }
        if (path.SequenceEqual("/drain"u8))
        {
            if (!isPost)
            {
                return MethodNotAllowed("POST");
            }
            if (host is null)
            {
                return AdminResponse.Text(503, "no server to drain");
            }
            host.BeginDrain();
            return AdminResponse.Text(202, "draining: listeners closed, requests in flight finish");
        }
        if (path.SequenceEqual("/reload"u8))
        {
            // An authorized POST to a file-based server was answered by ReloadAsync before Dispatch.
            return isPost
                ? AdminResponse.Text(409, "cannot reload: the server was created from YAML text, not a file")
                : MethodNotAllowed("POST");
        }
        return AdminResponse.Text(404, "not found; endpoints: " + Endpoints);
    }

    /// <summary>RFC 9110 section 15.5.6: a 405 lists the allowed methods.</summary>
    private static AdminResponse MethodNotAllowed(string allow)
        => AdminResponse.Text(405, "method not allowed; use " + allow, ("allow", allow));

    /// <summary>
    /// <c>Authorization: Bearer token</c>; the scheme is case-insensitive (RFC 9110 section 11.1), the token is
    /// compared in constant time so its bytes cannot be guessed one by one from response times.
    /// </summary>
    internal static bool IsAuthorized(RequestHead head, byte[] token)
        => head.TryGetHeader("authorization"u8, out ReadOnlySpan<byte> value)
            && BearerCredentials.Read(value, out ReadOnlySpan<byte> presented) == BearerStatus.Token
            && CryptographicOperations.FixedTimeEquals(presented, token);

    // ---- JSON documents -------------------------------------------------------------------------

    /// <summary><c>GET /insights</c>: top routes by count and by p99, top clients, status codes, recent anomalies.</summary>
    private static void WriteInsights(Utf8JsonWriter json, Diagnostics.Insights.TrafficInsights.Report report)
    {
        static double R(double v) => Math.Round(v, 3);
        json.WriteStartObject();
        json.WriteBoolean("enabled", report.Model.Enabled);
        json.WriteNumber("interval_seconds", report.Model.Interval.TotalSeconds);
        json.WriteNumber("baseline_intervals", report.Model.BaselineIntervals);
        json.WriteNumber("spike_factor", report.Model.SpikeFactor);
        json.WriteNumber("min_requests", report.Model.MinRequests);
        void Routes(string name, IEnumerable<Diagnostics.Insights.TrafficInsights.RouteView> routes)
        {
            json.WriteStartArray(name);
            foreach (var r in routes)
            {
                json.WriteStartObject();
                json.WriteString("route", r.Route);
                json.WriteString("cluster", r.Cluster);
                json.WriteNumber("requests", r.Requests);
                json.WriteNumber("errors_5xx", r.Errors);
                json.WriteNumber("mean_ms", R(r.MeanMs));
                json.WriteStartObject("last_interval");
                json.WriteNumber("requests", r.LastRequests);
                json.WriteNumber("rate", R(r.Rate));
                json.WriteNumber("error_ratio", R(r.ErrorRatio));
                json.WriteNumber("p50_ms", R(r.P50Ms));
                json.WriteNumber("p99_ms", R(r.P99Ms));
                json.WriteEndObject();
                json.WriteStartObject("baseline");
                json.WriteNumber("intervals", r.Samples);
                json.WriteNumber("rate", R(r.BaselineRate));
                json.WriteNumber("error_ratio", R(r.BaselineErrorRatio));
                json.WriteNumber("p99_ms", R(r.BaselineP99Ms));
                json.WriteEndObject();
                json.WriteEndObject();
            }
            json.WriteEndArray();
        }
        Routes("top_routes_by_requests", report.Routes.OrderByDescending(r => r.Requests).Take(10));
        Routes("top_routes_by_latency", report.Routes.OrderByDescending(r => r.P99Ms).ThenByDescending(r => r.MeanMs).Take(10));
        json.WriteStartArray("top_clients");
        foreach (var c in report.Clients)
        {
            json.WriteStartObject();
            json.WriteString("client", c.Address.ToString());
            json.WriteNumber("requests", c.Requests);
            json.WriteNumber("mean_ms", R(c.MeanMs));
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteStartArray("top_status");
        foreach (var (status, count) in report.Statuses.Take(10))
        {
            json.WriteStartObject();
            json.WriteNumber("status", status);
            json.WriteNumber("requests", count);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteStartArray("anomalies");
        foreach (var a in report.Anomalies)
        {
            json.WriteStartObject();
            json.WriteString("at", a.At.ToString("O", CultureInfo.InvariantCulture));
            json.WriteString("route", a.Route);
            json.WriteString("kind", a.Kind);
            json.WriteNumber("value", Math.Round(a.Value, 6));
            json.WriteNumber("baseline", Math.Round(a.Baseline, 6));
            json.WriteNumber("factor", a.Factor);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    private static AdminResponse Json(Action<Utf8JsonWriter> write)
    {
        var body = new ArrayBufferWriter<byte>(4096);
        using (var json = new Utf8JsonWriter(body, new JsonWriterOptions { Indented = true }))
        {
            write(json);
        }
        body.Write("\n"u8);
        return new AdminResponse(200, "application/json", body.WrittenSpan.ToArray());
    }

    /// <summary>The one place config values are written into <c>/config</c>: secrets never leave the process.</summary>
    internal static string? Redact(string key, string? value)
        => value is not null && s_secretKeys.Contains(key) ? Redacted : value;

    private static void WriteSetting(Utf8JsonWriter json, string key, string? value) => json.WriteString(key, Redact(key, value));

    private static void WriteConfig(Utf8JsonWriter json, ProxySnapshot snapshot, IAdminHost? host)
    {
        json.WriteStartObject();
        WriteSetting(json, "version", snapshot.Version);
        WriteSetting(json, "source", snapshot.SourcePath);
        // The active version is "version" above; the last attempt tells whether a newer file was refused.
        if (host?.LastReload is { } reload)
        {
            WriteReload(json, "last_reload", reload);
        }
        else
        {
            json.WriteNull("last_reload");
        }
        json.WriteStartObject("server");
        WriteSetting(json, "shutdown_timeout", FormatDuration(snapshot.Server.ShutdownTimeout));
        json.WriteNumber("max_connections", snapshot.Server.MaxConnections);
        if (snapshot.Server.WatchConfig is { } watch)
        {
            json.WriteBoolean("watch_config", watch);
        }
        else
        {
            json.WriteNull("watch_config");
        }
        json.WriteEndObject();
        if (snapshot.Admin is { } admin)
        {
            json.WriteStartObject("admin");
            WriteSetting(json, "address", admin.EndPoint.ToString());
            WriteSetting(json, "bound", host?.BoundEndPoint(AdminModel.ListenerName)?.ToString());
            WriteSetting(json, "token", admin.Token is null ? null : Encoding.UTF8.GetString(admin.Token));
            json.WriteEndObject();
        }
        json.WriteStartArray("listeners");
        foreach (ListenerModel listener in snapshot.Listeners)
        {
            if (listener.Handler == ListenerHandler.Admin)
            {
                continue;
            }
            json.WriteStartObject();
            WriteSetting(json, "name", listener.Name);
            WriteSetting(json, "address", listener.EndPoint.ToString());
            WriteSetting(json, "bound", host?.BoundEndPoint(listener.Name)?.ToString());
            WriteSetting(json, "handler", listener.Handler.ToString().ToLowerInvariant());
            HttpLimits limits = listener.Limits;
            json.WriteStartObject("limits");
            json.WriteNumber("max_request_line", limits.MaxRequestLine);
            json.WriteNumber("max_header_bytes", limits.MaxHeaderBytes);
            json.WriteNumber("max_headers", limits.MaxHeaders);
            json.WriteNumber("max_body_bytes", limits.MaxBodyBytes);
            WriteSetting(json, "header_timeout", FormatDuration(limits.HeaderTimeout));
            WriteSetting(json, "keepalive_timeout", FormatDuration(limits.KeepAliveTimeout));
            WriteSetting(json, "body_timeout", FormatDuration(limits.BodyTimeout));
            json.WriteEndObject();
            json.WriteStartObject("forwarded");
            WriteSetting(json, "mode", listener.Forwarded.Mode.ToString().ToLowerInvariant());
            json.WriteStartArray("trusted_networks");
            foreach (var network in listener.Forwarded.TrustedNetworks)
            {
                json.WriteStringValue(network.ToString());
            }
            json.WriteEndArray();
            json.WriteEndObject();
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WritePropertyName("routes");
        WriteRouteArray(json, snapshot, snapshot.Routes.InMatchOrder.OrderBy(r => r.Order));
        json.WritePropertyName("clusters");
        WriteClusterArray(json, snapshot, live: false);
        json.WriteEndObject();
    }

    private static void WriteRoutes(Utf8JsonWriter json, ProxySnapshot snapshot)
        => WriteRouteArray(json, snapshot, snapshot.Routes.InMatchOrder);

    private static void WriteRouteArray(Utf8JsonWriter json, ProxySnapshot snapshot, IEnumerable<RouteModel> routes)
    {
        json.WriteStartArray();
        foreach (RouteModel route in routes)
        {
            json.WriteStartObject();
            WriteSetting(json, "id", route.Id);
            json.WriteNumber("order", route.Order);
            json.WriteStartArray("listeners");
            for (int i = 0; i < 64 && i < snapshot.Listeners.Length; i++)
            {
                if ((route.ListenerMask & (1UL << i)) != 0)
                {
                    json.WriteStringValue(snapshot.Listeners[i].Name);
                }
            }
            json.WriteEndArray();
            json.WriteStartObject("match");
            WriteSetting(json, "path", route.Match.Path);
            WriteStrings(json, "hosts", route.Match.Hosts);
            WriteStrings(json, "methods", route.Match.Methods);
            json.WriteStartArray("headers");
            foreach (var header in route.Match.Headers)
            {
                WriteFieldMatch(json, header.Name, header.Value, header.Present);
            }
            json.WriteEndArray();
            json.WriteStartArray("query");
            foreach (var query in route.Match.Query)
            {
                WriteFieldMatch(json, query.Name, query.Value, query.Present);
            }
            json.WriteEndArray();
            json.WriteEndObject();
            if (route.Cluster is { } cluster)
            {
                WriteSetting(json, "cluster", cluster.Name);
            }
            if (route.Rewrite is { } rewrite)
            {
                json.WriteStartObject("rewrite");
                WriteSetting(json, "path", rewrite.Source);
                json.WriteEndObject();
            }
            if (route.Respond is { } respond)
            {
                json.WriteStartObject("respond");
                json.WriteNumber("status", respond.Status);
                json.WriteNumber("body_bytes", respond.Body.Length);
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        json.WriteEndArray();
    }

    private static void WriteFieldMatch(Utf8JsonWriter json, string name, byte[]? value, bool present)
    {
        json.WriteStartObject();
        WriteSetting(json, "name", name);
        if (value is not null)
        {
            WriteSetting(json, "value", Encoding.UTF8.GetString(value));
        }
        else
        {
            json.WriteBoolean("present", present);
        }
        json.WriteEndObject();
    }

    private static void WriteStrings(Utf8JsonWriter json, string key, string[] values)
    {
        json.WriteStartArray(key);
        foreach (var value in values)
        {
            json.WriteStringValue(Redact(key, value));
        }
        json.WriteEndArray();
    }

    private static void WriteClusters(Utf8JsonWriter json, ProxySnapshot snapshot) => WriteClusterArray(json, snapshot, live: true);

    /// <summary>Clusters in file order; with <paramref name="live"/>, the balancer's and pools' current state too.</summary>
    private static void WriteClusterArray(Utf8JsonWriter json, ProxySnapshot snapshot, bool live)
    {
        json.WriteStartArray();
        foreach (ClusterModel cluster in snapshot.Clusters.Values)
        {
            json.WriteStartObject();
            WriteSetting(json, "name", cluster.Name);
            WriteSetting(json, "load_balancing", LoadBalancingName(cluster.LoadBalancing));
            if (!live)
            {
                WriteSetting(json, "connect_timeout", FormatDuration(cluster.ConnectTimeout));
                WriteSetting(json, "request_timeout", FormatDuration(cluster.RequestTimeout));
                json.WriteNumber("max_connections", cluster.MaxConnections);
                WriteSetting(json, "idle_timeout", FormatDuration(cluster.IdleTimeout));
            }
            else
            {
                int active = 0, open = 0, idle = 0;
                foreach (var d in cluster.Destinations)
                {
                    active += d.ActiveRequests;
                    open += d.Pool?.OpenConnections ?? 0;
                    idle += d.Pool?.IdleConnections ?? 0;
                }
                json.WriteNumber("active_requests", active);
                json.WriteNumber("connections_open", open);
                json.WriteNumber("connections_idle", idle);
                json.WriteBoolean("panic_mode", cluster.PanicMode);
                if (cluster.Breaker is { } breaker)
                {
                    json.WriteStartObject("circuit_breaker");
                    json.WriteNumber("requests", breaker.Requests);
                    json.WriteNumber("max_requests", breaker.Limits.MaxRequests);
                    json.WriteNumber("pending", breaker.Pending);
                    json.WriteNumber("max_pending", breaker.Limits.MaxPending);
                    json.WriteNumber("connections", breaker.Connections);
                    json.WriteNumber("max_connections", breaker.Limits.MaxConnections);
                    json.WriteNumber("overflows", breaker.Overflows);
                    json.WriteEndObject();
                }
                if (cluster.RetryBudget is { } budget)
                {
                    json.WriteStartObject("retry");
                    json.WriteNumber("retries_in_flight", budget.RetriesInFlight);
                    json.WriteNumber("retried", budget.Retried);
                    json.WriteNumber("denied_by_budget", budget.Denied);
                    json.WriteNumber("skipped_body_too_large", budget.SkippedBodyTooLarge);
                    json.WriteEndObject();
                }
            }
            json.WriteStartArray("destinations");
            foreach (var destination in cluster.Destinations)
            {
                json.WriteStartObject();
                WriteSetting(json, "address", destination.Address);
                json.WriteNumber("weight", destination.Weight);
                if (live)
                {
                    json.WriteNumber("active_requests", destination.ActiveRequests);
                    json.WriteNumber("connections_open", destination.Pool?.OpenConnections ?? 0);
                    json.WriteNumber("connections_idle", destination.Pool?.IdleConnections ?? 0);
                    long now = cluster.Health.Now();
                    // healthy: may take requests now; health_check: the active checks' verdict; ejected_ms: time left in an ejection.
                    json.WriteBoolean("healthy", destination.IsAvailable(now));
                    json.WriteString("health_check", cluster.HealthCheck is null ? "off" : destination.CheckHealthy ? "up" : "down");
                    json.WriteNumber("ejected_ms", Math.Max(0, destination.EjectedUntil - now));
                    json.WriteNumber("times_ejected", destination.Ejections);
                    json.WriteNumber("consecutive_failures", destination.ConsecutiveFailures);
                }
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        json.WriteEndArray();
    }

    private static string LoadBalancingName(LoadBalancingKind kind) => kind switch
    {
        LoadBalancingKind.LeastRequests => "least_requests",
        LoadBalancingKind.PowerOfTwo => "power_of_two",
        LoadBalancingKind.Random => "random",
        _ => "round_robin",
    };

    /// <summary>Durations in the config file's own syntax ("30s", "500ms") so /config reads like the file.</summary>
    internal static string FormatDuration(TimeSpan duration)
    {
        long ms = (long)duration.TotalMilliseconds;
        return ms % 1000 == 0 ? (ms / 1000).ToString(CultureInfo.InvariantCulture) + "s" : ms.ToString(CultureInfo.InvariantCulture) + "ms";
    }
}
