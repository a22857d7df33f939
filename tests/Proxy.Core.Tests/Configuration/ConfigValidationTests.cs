using Proxy.Configuration;

namespace Proxy.Core.Tests.Configuration;

/// <summary>
/// Every validation error with its exact position. YAML is written one line per argument so the
/// expected line number is the argument's position (1-based) and the column can be counted by eye.
/// </summary>
public class ConfigValidationTests
{
    private const string Listener = "  - { name: public, address: \"127.0.0.1:8080\" }";

    private static string[] Errors(params string[] lines)
        => ConfigLoader.LoadText(string.Join('\n', lines) + "\n", "t.yaml").Errors.Select(e => e.ToString()).ToArray();

    [Fact]
    public void Load_MinimalValidConfig_HasNoErrors()
    {
        Assert.Empty(Errors("listeners:", Listener));
    }

    [Fact]
    public void Load_YamlSyntaxError_ReportsParserPosition()
    {
        Assert.Equal(
            ["t.yaml:3:4: invalid YAML: while parsing a block collection, did not find expected '-' indicator"],
            Errors(
                "listeners:",
                "  - name: public",
                "   address: \"127.0.0.1:8080\""));
    }

    [Fact]
    public void Load_DuplicateYamlKey_ReportsSecondKey()
    {
        Assert.Equal(
            ["t.yaml:3:1: invalid YAML: duplicate key listeners"],
            Errors("listeners:", Listener, "listeners:", Listener));
    }

    /// <summary>
    /// YAML 1.2 section 5.4: only CR and LF break lines; NEL, LS and PS are ordinary characters. YamlDotNet (YAML 1.1)
    /// ended a comment at them, so what followed in the comment was read as config: text an editor shows as one comment
    /// line could add an admin listener.
    /// </summary>
    [Theory]
    [InlineData('\u0085')]
    [InlineData('\u2028')]
    [InlineData('\u2029')]
    public void Load_UnicodeLineSeparatorInComment_IsPartOfTheComment(char separator)
    {
        string yaml = $"listeners:\n{Listener}\n# keep the defaults{separator}admin: {{ address: \"0.0.0.0:9901\" }}\n";

        var result = ConfigLoader.LoadText(yaml, "t.yaml");

        Assert.True(result.Success, string.Join('\n', result.Errors));
        Assert.Null(result.Snapshot!.Admin);
    }

    [Theory]
    [InlineData('\u0085')]
    [InlineData('\u2028')]
    [InlineData('\u2029')]
    public void Load_UnicodeLineSeparatorInComment_LaterLinesKeepTheirNumbers(char separator)
    {
        string error = Assert.Single(Errors(
            "listeners:",
            $"  # one{separator}# two{separator}# three",
            Listener,
            "  - { name: other, address: nowhere }"));

        Assert.StartsWith("t.yaml:4:29: invalid listener address 'nowhere'", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData('\u0085')]
    [InlineData('\u2028')]
    [InlineData('\u2029')]
    public void Load_UnicodeLineSeparatorInScalar_KeptAsACharacter(char separator)
    {
        string yaml = $"listeners:\n{Listener}\nroutes:\n  - id: r\n    match: {{ path: /r }}\n    respond: {{ status: 200, body: \"a{separator}b\" }}\n  - id: p\n    match: {{ path: /p }}\n    respond:\n      status: 200\n      body: c{separator}d\n";

        var result = ConfigLoader.LoadText(yaml, "t.yaml");

        Assert.True(result.Success, string.Join('\n', result.Errors));
        var bodies = result.Snapshot!.Routes.InMatchOrder.Select(r => System.Text.Encoding.UTF8.GetString(r.Respond!.Body)).Order().ToArray();
        Assert.Equal([$"a{separator}b", $"c{separator}d"], bodies);
    }

    /// <summary>The stand-ins that carry NEL/LS/PS through the scan never collide with a character the file spells.</summary>
    [Fact]
    public void Load_UnicodeLineSeparatorBesidePrivateUseCharacters_KeepsBoth()
    {
        string yaml = $"listeners:\n{Listener}\nroutes:\n  - id: r\n    respond: {{ status: 200, body: \"\\uE000\\ue001\\U0000E002\\uE003-\\u2028\" }}\n# \u2028\uE004\n";

        var result = ConfigLoader.LoadText(yaml, "t.yaml");

        Assert.True(result.Success, string.Join('\n', result.Errors));
        Assert.Equal("\uE000\uE001\uE002\uE003-\u2028", System.Text.Encoding.UTF8.GetString(result.Snapshot!.Routes.InMatchOrder[0].Respond!.Body));
    }

    [Fact]
    public void Load_UnclosedFlowSequence_ReportsAnError()
    {
        var errors = Errors("listeners: [", Listener);
        Assert.Single(errors);
        Assert.StartsWith("t.yaml:", errors[0]);
        Assert.Contains("invalid YAML", errors[0]);
    }

    /// <summary>
    /// A few hundred KB of nesting overflowed the stack while the YAML tree was built: `proxy validate` died with
    /// SIGSEGV and a hot reload ended the running proxy. Now the parse stops at 64 levels with a position.
    /// </summary>
    [Theory]
    [InlineData("block")]
    [InlineData("flow")]
    public void Load_NestedTooDeep_ReportsTheLimitInsteadOfOverflowingTheStack(string style)
    {
        string yaml = style == "block"
            ? "listeners:\n  " + string.Concat(Enumerable.Repeat("- ", 100_000)) + "x\n"
            : "listeners: " + new string('[', 100_000) + new string(']', 100_000) + "\n";

        string[] errors = ConfigLoader.LoadText(yaml, "t.yaml").Errors.Select(e => e.ToString()).ToArray();

        string error = Assert.Single(errors);
        Assert.Matches(@"^t\.yaml:\d+:\d+: invalid YAML: collections nested deeper than 64 levels$", error);
    }

    [Fact]
    public void Load_NestedAtTheLimit_ParsedAndCheckedAsUsual()
    {
        // 64 collections: the root map, the listeners list and 62 lists inside it.
        string yaml = "listeners: " + new string('[', 63) + new string(']', 63) + "\n";

        string[] errors = ConfigLoader.LoadText(yaml, "t.yaml").Errors.Select(e => e.ToString()).ToArray();

        Assert.NotEmpty(errors);
        Assert.DoesNotContain(errors, e => e.Contains("nested deeper", StringComparison.Ordinal));
    }

    [Fact]
    public void Load_EmptyFile_RequiresListener()
    {
        Assert.Equal(["t.yaml:1:1: at least one listener is required ('listeners' is missing or empty)"], Errors(""));
    }

    [Fact]
    public void Load_TopLevelNotAMap_ReportsType()
    {
        Assert.Equal(["t.yaml:1:1: expected a map for the top level, got a list"], Errors("- a", "- b"));
    }

    [Fact]
    public void Load_UnknownKeyCloseToKnown_SuggestsKnownKey()
    {
        Assert.Equal(
            [
                "t.yaml:3:5: listener is missing required key 'address'",
                "t.yaml:4:5: unknown key 'adress' in a listener; did you mean 'address'?",
            ],
            Errors(
                "listeners:",
                "  -",
                "    name: public",
                "    adress: \"127.0.0.1:8080\""));
    }

    [Fact]
    public void Load_UnknownKeyFarFromKnown_ListsKnownKeys()
    {
        Assert.Equal(
            ["t.yaml:1:1: unknown key 'frobnicate' in the top level (expected one of: server, limits, forwarded, listeners, routes, clusters, admin, policies, tracing, metrics, access_log, insights)"],
            Errors("frobnicate: 1", "listeners:", Listener));
    }

    [Fact]
    public void Load_CamelCaseKey_SuggestsSnakeCase()
    {
        Assert.Equal(
            ["t.yaml:5:5: unknown key 'loadBalancing' in cluster 'b'; did you mean 'load_balancing'?"],
            Errors(
                "listeners:", Listener,
                "clusters:",
                "  b:",
                "    loadBalancing: random",
                "    destinations: [\"http://127.0.0.1:9000\"]"));
    }

    [Fact]
    public void Load_ListenersIsAMap_ExpectsList()
    {
        Assert.Equal(["t.yaml:1:12: expected a list for 'listeners', got a map"], Errors("listeners: { name: a }"));
    }

    [Fact]
    public void Load_LimitsIsAScalar_ExpectsMap()
    {
        Assert.Equal(["t.yaml:1:9: expected a map for 'limits', got 'big'"], Errors("limits: big", "listeners:", Listener));
    }

    [Fact]
    public void Load_BadNumberSizeAndDuration_ReportsEachAtItsValue()
    {
        Assert.Equal(
            [
                "t.yaml:2:16: expected a whole number for 'max_headers', got 'many'",
                "t.yaml:3:19: expected a size for 'max_body_bytes' (bytes, or with a unit: B, KB, MB, GB, KiB, MiB, GiB, e.g. 8KiB), got '10XB'",
                "t.yaml:4:19: expected a duration for 'header_timeout', got '10': add a unit (ms, s, m or h), e.g. 10s",
                "t.yaml:5:22: 'keepalive_timeout' must be a positive duration, got '0s'",
                "t.yaml:6:21: expected a size for 'max_request_line', got a list",
            ],
            Errors(
                "limits:",
                "  max_headers: many",
                "  max_body_bytes: 10XB",
                "  header_timeout: 10",
                "  keepalive_timeout: 0s",
                "  max_request_line: [1]",
                "listeners:", Listener));
    }

    /// <summary>
    /// Durations past what the runtime's timers wait (about 24.8 days for int-millisecond APIs, 49.7 for Task.Delay)
    /// are refused with their position; 576h itself passes, and a cookie's ttl, which no timer waits, may be longer.
    /// They used to validate and then fail at run time: a 1200h connect_timeout answered every request 502, an 8000h
    /// retry backoff threw from Task.Delay mid-request.
    /// </summary>
    [Fact]
    public void Load_DurationLongerThanTimersWait_ReportsTheCap()
    {
        Assert.Equal(
            [
                "t.yaml:4:22: 'connect_timeout' is too long (at most 576h, 24 days: the runtime's timers wait no longer), got '1200h'",
                "t.yaml:5:31: 'base' is too long (at most 576h, 24 days: the runtime's timers wait no longer), got '8000h'",
                "t.yaml:5:43: 'max' is too long (at most 576h, 24 days: the runtime's timers wait no longer), got '8000h'",
                "t.yaml:12:22: 'keepalive_timeout' is too long (at most 576h, 24 days: the runtime's timers wait no longer), got '576h1ms'",
            ],
            Errors(
                "clusters:",
                "  b:",
                "    destinations: [\"http://127.0.0.1:9000\"]",
                "    connect_timeout: 1200h",
                "    retry: { backoff: { base: 8000h, max: 8000h } }",
                "  c:",
                "    destinations: [\"http://127.0.0.1:9001\"]",
                "    connect_timeout: 576h",
                "    idle_timeout: 575h59m59s999ms",
                "    session_affinity: { ttl: 720h }",
                "limits:",
                "  keepalive_timeout: 576h1ms",
                "listeners:", Listener));
    }

    [Fact]
    public void Load_NumberOutOfRange_ReportsBounds()
    {
        Assert.Equal(
            [
                "t.yaml:2:20: 'max_connections' must be at least 1, got 0",
                "t.yaml:4:21: 'max_request_line' is too large (at most 2147483647 bytes)",
            ],
            Errors(
                "server:",
                "  max_connections: 0",
                "limits:",
                "  max_request_line: 4GiB",
                "listeners:", Listener));
    }

    [Fact]
    public void Load_ListenerMissingNameAndAddress_ReportsBothAtListener()
    {
        Assert.Equal(
            [
                "t.yaml:2:5: listener is missing required key 'name'",
                "t.yaml:2:5: listener is missing required key 'address'",
            ],
            Errors("listeners:", "  - handler: proxy"));
    }

    [Fact]
    public void Load_EmptyListenerName_ReportsValue()
    {
        Assert.Equal(
            ["t.yaml:2:13: 'name' must not be empty"],
            Errors("listeners:", "  - { name: '', address: \"127.0.0.1:8080\" }"));
    }

    [Fact]
    public void Load_UnknownHandler_SuggestsNearest()
    {
        Assert.Equal(
            ["t.yaml:2:57: unknown handler 'ecko'; did you mean 'echo'? (expected one of: proxy, echo)"],
            Errors("listeners:", "  - { name: public, address: \"127.0.0.1:8080\", handler: ecko }"));
    }

    [Fact]
    public void Load_DuplicateListenerNameAndAddress_ReportsSecond()
    {
        Assert.Equal(
            [
                "t.yaml:3:13: duplicate listener name 'public' (first defined at line 2)",
                "t.yaml:3:30: duplicate listener address '127.0.0.1:8080': already used by listener 'public' (line 2)",
            ],
            Errors("listeners:", Listener, Listener));
    }

    [Fact]
    public void Load_TwoListenersOnPortZero_AreNotDuplicates()
    {
        Assert.Empty(Errors(
            "listeners:",
            "  - { name: a, address: \"127.0.0.1:0\" }",
            "  - { name: b, address: \"127.0.0.1:0\" }"));
    }

    [Fact]
    public void Load_WildcardAndSpecificOnSamePort_ReportsOverlap()
    {
        var errors = Errors(
            "listeners:",
            "  - { name: a, address: \"*:8080\" }",
            "  - { name: b, address: \"127.0.0.1:8080\" }");
        Assert.Equal(["t.yaml:3:25: listener address '127.0.0.1:8080' overlaps listener 'a' (line 2): a wildcard address takes the port on every interface"], errors);
    }

    [Fact]
    public void Load_BadListenerAddresses_ReportsEach()
    {
        Assert.Equal(
            [
                "t.yaml:2:25: invalid listener address '127.0.0.1:70000': port 70000 is out of range (0-65535)",
                "t.yaml:3:25: invalid listener address 'localhost:80': 'localhost' is not an IP address (use an IPv4 address, [IPv6] or *)",
            ],
            Errors(
                "listeners:",
                "  - { name: a, address: \"127.0.0.1:70000\" }",
                "  - { name: b, address: \"localhost:80\" }"));
    }

    [Fact]
    public void Load_TooManyListeners_ReportsThe65th()
    {
        var lines = new List<string> { "listeners:" };
        for (int i = 0; i < 65; i++)
        {
            lines.Add($"  - {{ name: l{i}, address: \"127.0.0.1:0\" }}");
        }
        Assert.Equal(["t.yaml:66:5: too many listeners: at most 64 are supported"], Errors([.. lines]));
    }

    [Fact]
    public void Load_RouteMissingIdAndTarget_ReportsBoth()
    {
        Assert.Equal(
            [
                "t.yaml:4:5: route is missing required key 'id'",
                "t.yaml:4:5: route needs either 'cluster' (forward) or 'respond' (answer directly)",
            ],
            Errors("listeners:", Listener, "routes:", "  - match: { path: /a }"));
    }

    [Fact]
    public void Load_RouteWithClusterAndRespond_ReportsCluster()
    {
        Assert.Equal(
            ["t.yaml:4:23: route 'r' has both 'cluster' and 'respond'; a route either forwards or answers, so keep one"],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - { id: r, cluster: c, respond: { status: 200 } }",
                "clusters:",
                "  c: { destinations: [\"http://127.0.0.1:9000\"] }"));
    }

    [Fact]
    public void Load_DuplicateRouteId_ReportsSecond()
    {
        Assert.Equal(
            ["t.yaml:5:11: duplicate route id 'a' (first defined at line 4)"],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - { id: a, match: { path: /x }, respond: { status: 200 } }",
                "  - { id: a, match: { path: /y }, respond: { status: 200 } }"));
    }

    [Fact]
    public void Load_DanglingClusterAndListener_SuggestsNearest()
    {
        Assert.Equal(
            [
                "t.yaml:6:17: route 'api' refers to unknown listener 'publik'; did you mean 'public'?",
                "t.yaml:7:14: route 'api' refers to unknown cluster 'backnd'; did you mean 'backend'?",
            ],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - id: api",
                "    match: { path: /api }",
                "    listeners: [publik]",
                "    cluster: backnd",
                "clusters:",
                "  backend: { destinations: [\"http://127.0.0.1:9000\"] }"));
    }

    [Fact]
    public void Load_RouteOnEchoListener_ReportsListenerName()
    {
        Assert.Equal(
            ["t.yaml:5:26: route 'r' refers to listener 'e', which has 'handler: echo' and never routes"],
            Errors(
                "listeners:", Listener,
                "  - { name: e, address: \"127.0.0.1:9000\", handler: echo }",
                "routes:",
                "  - { id: r, listeners: [e], respond: { status: 200 } }"));
    }

    [Fact]
    public void Load_BadMatchPredicates_ReportsEachAtItsValue()
    {
        Assert.Equal(
            [
                "t.yaml:6:13: path 'api/{**rest}/x' must start with '/'",
                "t.yaml:7:31: host 'a.example.com:8080' must not include a port",
                "t.yaml:8:22: invalid method 'GE T': a method is a token (letters, digits and !#$%&'*+-.^_`|~)",
                "t.yaml:9:25: invalid header name 'x version': a field name is a token (letters, digits and !#$%&'*+-.^_`|~)",
                "t.yaml:10:50: use either 'value' (must equal) or 'present' (must or must not exist), not both",
            ],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - id: r",
                "    match:",
                "      path: api/{**rest}/x",
                "      hosts: [ok.example.com, a.example.com:8080]",
                "      methods: [GET, GE T]",
                "      headers: [{ name: x version, value: \"2\" }]",
                "      query: [{ name: beta, value: \"1\", present: false }]",
                "    respond: { status: 200 }"));
    }

    /// <summary>
    /// The reader reports an empty or missing predicate name and leaves it null; the validator then compiled the match
    /// for its shadowing check and threw ("Nullable object must have a value"): `proxy validate` and `proxy run`
    /// aborted with a stack trace, a reload logged one.
    /// </summary>
    [Fact]
    public void Load_PredicateWithoutName_ReportsEachAtItsPosition()
    {
        Assert.Equal(
            [
                "t.yaml:4:51: 'name' must not be empty",
                "t.yaml:5:41: query match is missing required key 'name'",
                "t.yaml:5:43: unknown key 'nmae' in a query match; did you mean 'name'?",
                "t.yaml:6:45: 'name' needs a value",
            ],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - { id: h, match: { path: /h, headers: [{ name: \"\" }] }, respond: { status: 200 } }",
                "  - { id: q, match: { path: /q, query: [{ nmae: beta }] }, respond: { status: 200 } }",
                "  - { id: n, match: { path: /n, headers: [{ name: , value: x }] }, respond: { status: 200 } }",
                "  - { id: all, respond: { status: 200 } }"));
    }

    /// <summary>'methods: []' was accepted and matched every method (ip_filter's 'allow: []' is an error for that reason).</summary>
    [Fact]
    public void Load_EmptyMethodsOrHosts_ReportedAtTheList()
    {
        Assert.Equal(
            [
                "t.yaml:4:42: match 'methods' is an empty list, which reads as \"none\" but would mean any method; omit 'methods' to match any method",
                "t.yaml:5:42: match 'hosts' is an empty list, which reads as \"none\" but would mean any host; omit 'hosts' to match any host",
            ],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - { id: m, match: { path: /m, methods: [] }, respond: { status: 200 } }",
                "  - { id: h, match: { path: /h, hosts:   [] }, respond: { status: 200 } }"));
    }

    [Fact]
    public void Load_EmptyClusterName_Reported()
    {
        Assert.Equal(
            ["t.yaml:6:3: cluster name must not be empty"],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - { id: r, cluster: \"\" }",
                "clusters:",
                "  \"\": { destinations: [\"http://127.0.0.1:9000\"] }"));
    }

    [Fact]
    public void Load_CatchAllNotLast_ReportsPath()
    {
        Assert.Equal(
            ["t.yaml:4:29: path '/a/{**rest}/b': the catch-all '{**rest}' must be the last segment"],
            Errors("listeners:", Listener, "routes:", "  - { id: r, match: { path: \"/a/{**rest}/b\" }, respond: { status: 200 } }"));
    }

    [Fact]
    public void Load_BadRespond_ReportsStatusAndHeaders()
    {
        Assert.Equal(
            [
                "t.yaml:6:15: 'status' must be between 200 and 599, got 700",
                "t.yaml:8:9: header 'Content-Length' is set by the proxy and cannot be configured",
                "t.yaml:9:9: invalid header name 'bad header': a field name is a token (letters, digits and !#$%&'*+-.^_`|~)",
            ],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - id: r",
                "    respond:",
                "      status: 700",
                "      headers:",
                "        Content-Length: 5",
                "        bad header: x"));
    }

    [Fact]
    public void Load_NoContentWithBody_ReportsStatus()
    {
        Assert.Equal(
            ["t.yaml:4:33: status 204 cannot have a body"],
            Errors("listeners:", Listener, "routes:", "  - { id: r, respond: { status: 204, body: x } }"));
    }

    [Fact]
    public void Load_BadClusters_ReportsEach()
    {
        Assert.Equal(
            [
                "t.yaml:5:21: unknown load_balancing 'round_robbin'; did you mean 'round_robin'? (expected one of: round_robin, least_requests, power_of_two, random)",
                "t.yaml:7:9: destination 'ftp://127.0.0.1:9443' must be an absolute http:// or https:// URL such as http://127.0.0.1:9000",
                "t.yaml:8:20: destination '127.0.0.1:9001' must be an absolute http:// or https:// URL such as http://127.0.0.1:9000",
                "t.yaml:8:46: 'weight' must be between 1 and 1000000, got 0",
                "t.yaml:10:19: cluster 'empty' has no destinations; list at least one",
                "t.yaml:12:5: cluster 'none' is missing required key 'destinations'",
            ],
            Errors(
                "listeners:", Listener,
                "clusters:",
                "  b:",
                "    load_balancing: round_robbin",
                "    destinations:",
                "      - ftp://127.0.0.1:9443",
                "      - { address: \"127.0.0.1:9001\", weight: 0 }",
                "  empty:",
                "    destinations: []",
                "  none:",
                "    connect_timeout: 1s"));
    }

    [Fact]
    public void Load_BadForwarded_ReportsCidrAndMissingNetworks()
    {
        Assert.Equal(
            [
                "t.yaml:3:22: invalid CIDR '10.0.0.0/40': prefix length must be 0-32",
                "t.yaml:6:24: forwarded mode 'trust' needs a non-empty 'trusted_networks' list",
            ],
            Errors(
                "forwarded:",
                "  mode: append",
                "  trusted_networks: [10.0.0.0/40]",
                "listeners:",
                "  - name: public",
                "    forwarded: { mode: trust, trusted_networks: [] }",
                "    address: \"127.0.0.1:8080\""));
    }

    [Fact]
    public void Load_ListenerTrustInheritsServerNetworks_IsValid()
    {
        Assert.Empty(Errors(
            "forwarded:",
            "  trusted_networks: [10.0.0.0/8]",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:8080\", forwarded: { mode: trust } }"));
    }

    [Fact]
    public void Load_IdenticalRoutes_ReportsSecondAsUnreachable()
    {
        // Needs the real Proxy.Routing.RouteShadowing.Find.
        Assert.Equal(
            ["t.yaml:5:11: route 'b' is unreachable: every request it matches is taken by route 'a' (line 4)"],
            Errors(
                "listeners:", Listener,
                "routes:",
                "  - { id: a, match: { path: /x }, respond: { status: 200 } }",
                "  - { id: b, match: { path: /x }, respond: { status: 404 } }"));
    }

    [Fact]
    public void Load_ManyErrors_ReportsAllInFileOrder()
    {
        var errors = Errors(
            "server:",
            "  shutdown_timeout: soon",
            "listeners:",
            "  - { name: public, address: \"127.0.0.1:99999\" }",
            "routes:",
            "  - { id: r, match: { path: nope }, cluster: missing }",
            "clusters:",
            "  c: { destinations: [\"ftp://x\"], load_balancing: fastest }");
        Assert.Equal(
            [
                "t.yaml:2:21: expected a duration for 'shutdown_timeout' (a number with ms, s, m or h, e.g. 500ms, 2s, 1m), got 'soon'",
                "t.yaml:4:30: invalid listener address '127.0.0.1:99999': port 99999 is out of range (0-65535)",
                "t.yaml:6:29: path 'nope' must start with '/'",
                "t.yaml:6:46: route 'r' refers to unknown cluster 'missing'",
                "t.yaml:8:23: destination 'ftp://x' must be an absolute http:// or https:// URL such as http://127.0.0.1:9000",
                "t.yaml:8:51: unknown load_balancing 'fastest'; expected one of: round_robin, least_requests, power_of_two, random",
            ],
            errors);
    }

    [Fact]
    public void ConfigError_ToString_IsFileLineColumnMessage()
    {
        Assert.Equal("a.yaml:3:7: boom", new ConfigError("a.yaml", 3, 7, "boom").ToString());
    }

    [Fact]
    public void LoadFile_Missing_ReportsFile()
    {
        var result = ConfigLoader.LoadFile("/nonexistent/dir/proxy.yaml");
        Assert.False(result.Success);
        var error = Assert.Single(result.Errors);
        Assert.StartsWith("/nonexistent/dir/proxy.yaml:1:1: cannot read config file", error.ToString());
    }
}
