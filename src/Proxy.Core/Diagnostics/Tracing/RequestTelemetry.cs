using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Proxy.Http;
using Proxy.Upstream;

namespace Proxy.Diagnostics.Tracing;

[InlineArray(TraceContext.TraceIdHexLength)]
internal struct TraceIdHex
{
    private byte _element;
}

[InlineArray(TraceContext.SpanIdHexLength)]
internal struct SpanIdHex
{
    private byte _element;
}

/// <summary>
/// Per-request trace context and upstream timing of one client connection (requests on a connection run one at
/// a time, so this is used unlocked and reset at the end of each request). Created once per connection, and only
/// while tracing or the access log is configured; ids live in inline buffers so a request allocates nothing
/// unless it is sampled and something listens to <see cref="ProxyTracing.Source"/>.
/// </summary>
internal sealed class RequestTelemetry
{
    private TraceIdHex _traceId;
    private SpanIdHex _parentId;
    private SpanIdHex _upstreamSpanId;
    private byte _flags;
    private bool _begun;
    private bool _hasParent;
    private bool _forwardTraceState;
    private Activity? _server;
    private Activity? _client;

    /// <summary>Tracing settings of the current request; null: trace fields pass through untouched.</summary>
    public TracingModel? Tracing { get; private set; }

    /// <summary><see cref="Stopwatch"/> timestamps of the last upstream request written and its response head (0: none).</summary>
    public long UpstreamStarted { get; private set; }
    public long UpstreamResponded { get; private set; }
    public DestinationState? Destination { get; private set; }
    public string? ClusterName { get; private set; }
    public bool ResponseHasBody { get; private set; }

    /// <summary>True once the request has a trace id (tracing on); <see cref="UpstreamSpanId"/> is valid when an upstream was called.</summary>
    public bool HasTrace => _begun;
    public ReadOnlySpan<byte> TraceId => _traceId;
    public ReadOnlySpan<byte> UpstreamSpanId => _upstreamSpanId;
    public bool Sampled => (_flags & TraceContext.SampledFlag) != 0;
    internal Activity? ServerActivity => _server;

    private string _listener = "";

    /// <summary>Called with the request's snapshot settings (idempotent); <paramref name="tracing"/> null turns tracing off for it.</summary>
    public void Prepare(TracingModel? tracing, string listener, string? cluster)
    {
        Tracing = tracing;
        _listener = listener;
        ClusterName = cluster;
    }

    /// <summary>
    /// Continues the client's trace when its <c>traceparent</c> is valid (keeping its sampled decision), else starts
    /// one sampled with the configured probability. Starts the server span when sampled and observed. Idempotent.
    /// </summary>
    public void Begin(RequestHead head)
    {
        if (_begun || Tracing is not { } tracing)
        {
            return;
        }
        _begun = true;
        // One pass over the fields: a second traceparent makes the context ambiguous, so the trace restarts.
        int parents = 0, stateMembers = 0;
        bool stateValid = true;
        ReadOnlySpan<byte> parent = default;
        for (int i = 0; i < head.FieldCount; i++)
        {
            ReadOnlySpan<byte> name = head.Name(i);
            if (name.Length == 11 && name.EqualsIgnoreCaseAscii(TraceContext.TraceParentName))
            {
                parents++;
                parent = head.Value(i);
            }
            else if (name.Length == 10 && name.EqualsIgnoreCaseAscii(TraceContext.TraceStateName))
            {
                stateValid &= TraceContext.IsValidTraceState(head.Value(i), ref stateMembers);
            }
        }
        _hasParent = parents == 1 && TraceContext.TryParseTraceParent(parent, _traceId, _parentId, out _flags);
        // Section 3.3: tracestate belongs to the incoming traceparent; with a fresh trace it is dropped.
        _forwardTraceState = _hasParent && stateValid && stateMembers > 0
            && (stateMembers == 1 || !TraceContext.HasDuplicateTraceStateKeys(head));
        if (!_hasParent)
        {
            TraceContext.RandomHex(_traceId);
            bool sample = tracing.Sampling >= 1
                || (tracing.Sampling > 0 && TraceContext.SamplingKey(_traceId) < (ulong)(tracing.Sampling * ulong.MaxValue));
            _flags = sample ? TraceContext.SampledFlag : (byte)0;
        }
        if (Sampled && ProxyTracing.Source.HasListeners())
        {
            StartServerSpan(head, _listener);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void StartServerSpan(RequestHead head, string listener)
    {
        // W3C Trace Context: the span's trace_state is the caller's tracestate when its trace continues (the client
        // span inherits it from the server span's context). A string only here: sampled, with a listener.
        var context = new ActivityContext(ActivityTraceId.CreateFromUtf8String(_traceId),
            _hasParent ? ActivitySpanId.CreateFromUtf8String(_parentId) : default, ActivityTraceFlags.Recorded,
            _forwardTraceState ? TraceStateString(head) : null, isRemote: _hasParent);
        Activity? previous = Activity.Current;
        _server = _hasParent
            ? ProxyTracing.Source.StartActivity(ActivityKind.Server, context, name: MethodName(head))
            : ProxyTracing.Source.StartActivity(MethodName(head), ActivityKind.Server, parentContext: default);
        // The connection's async flow must not carry the span into the next request.
        Activity.Current = previous;
        if (_server is null)
        {
            return;
        }
        if (!_hasParent)
        {
            // A root span chose its own trace id: propagate that one.
            Span<byte> raw = stackalloc byte[16];
            _server.TraceId.CopyTo(raw);
            TraceContext.ToHex(raw, _traceId);
        }
        _server.SetTag(ProxyTracing.Tags.Method, MethodName(head));
        _server.SetTag(ProxyTracing.Tags.Path, System.Text.Encoding.ASCII.GetString(head.Path));
        _server.SetTag(ProxyTracing.Tags.Listener, listener);
        _server.SetTag(ProxyTracing.Tags.RequestId, System.Text.Encoding.ASCII.GetString(head.RequestIdValue));
    }

    /// <summary>The request's <c>tracestate</c> fields joined with "," (as forwarded upstream).</summary>
    private static string TraceStateString(RequestHead head)
    {
        var joined = new System.Text.StringBuilder();
        for (int i = 0; i < head.FieldCount; i++)
        {
            ReadOnlySpan<byte> name = head.Name(i);
            if (name.Length == 10 && name.EqualsIgnoreCaseAscii(TraceContext.TraceStateName))
            {
                if (joined.Length > 0)
                {
                    joined.Append(',');
                }
                joined.Append(System.Text.Encoding.ASCII.GetString(head.Value(i)).Trim());
            }
        }
        return joined.ToString();
    }

    private static string MethodName(RequestHead head) => RequestLabels.Methods[RequestLabels.MethodSlot(head.Method)];

    /// <summary>
    /// Called as each try's destination is picked, before connecting: the access log names the destination tried even
    /// when the connect fails and no request head is written (<see cref="UpstreamRequestStarting"/> then never runs).
    /// </summary>
    public void DestinationPicked(DestinationState destination) => Destination = destination;

    /// <summary>
    /// Called as each upstream request head is written (a retry writes another): a new span id for this call, as
    /// Envoy does, so the upstream's span is a child of the proxy's client span rather than of the caller's.
    /// </summary>
    public void UpstreamRequestStarting(RequestHead head, DestinationState destination)
    {
        UpstreamStarted = Stopwatch.GetTimestamp();
        UpstreamResponded = 0;
        Destination = destination;
        if (Tracing is null)
        {
            return;
        }
        Begin(head);
        if (_client is not null)
        {
            // A retry: the previous attempt's span ends here, marked failed.
            _client.SetStatus(ActivityStatusCode.Error);
            _client.Stop();
            _client = null;
        }
        if (_server is not null)
        {
            StartClientSpan(head, destination, ClusterName);
        }
        else
        {
            TraceContext.RandomHex(_upstreamSpanId);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void StartClientSpan(RequestHead head, DestinationState destination, string? cluster)
    {
        Activity? previous = Activity.Current;
        _client = ProxyTracing.Source.StartActivity(ActivityKind.Client, _server!.Context, name: MethodName(head));
        Activity.Current = previous;
        if (_client is null)
        {
            TraceContext.RandomHex(_upstreamSpanId);
            return;
        }
        _client.SetTag(ProxyTracing.Tags.Method, MethodName(head));
        // OpenTelemetry semantic conventions: host in server.address, port in server.port; the configured URL apart.
        _client.SetTag(ProxyTracing.Tags.ServerAddress, destination.Host);
        _client.SetTag(ProxyTracing.Tags.ServerPort, destination.Port);
        _client.SetTag(ProxyTracing.Tags.Destination, destination.Address);
        _client.SetTag(ProxyTracing.Tags.Cluster, cluster);
        Span<byte> raw = stackalloc byte[8];
        _client.SpanId.CopyTo(raw);
        TraceContext.ToHex(raw, _upstreamSpanId);
    }

    /// <summary>
    /// Writes <c>traceparent</c> (and the client's <c>tracestate</c>, combined, when its trace continues) into the
    /// upstream request head. The writer has skipped the client's own fields of both names.
    /// </summary>
    public void WriteTraceFields(ref HeadWriter writer, RequestHead head)
    {
        Span<byte> value = stackalloc byte[TraceContext.TraceParentLength];
        TraceContext.FormatTraceParent(value, _traceId, _upstreamSpanId, _flags);
        writer.WriteField(TraceContext.TraceParentName, value);
        if (!_forwardTraceState)
        {
            return;
        }
        writer.Write("tracestate: "u8);
        bool first = true;
        for (int i = 0; i < head.FieldCount; i++)
        {
            ReadOnlySpan<byte> name = head.Name(i);
            if (name.Length == 10 && name.EqualsIgnoreCaseAscii(TraceContext.TraceStateName))
            {
                if (!first)
                {
                    writer.Write(","u8);
                }
                writer.Write(head.Value(i));
                first = false;
            }
        }
        writer.Write("\r\n"u8);
    }

    /// <summary>The upstream's final response head arrived (status relayed to the client).</summary>
    // respondedAt: the forwarder's timestamp of the head (shared with the upstream duration metric); 0: read the clock.
    public void UpstreamResponseReceived(RequestHead request, int status, long respondedAt = 0)
    {
        UpstreamResponded = respondedAt != 0 ? respondedAt : Stopwatch.GetTimestamp();
        ResponseHasBody = request.Method != Http.HttpMethod.Head && status is not (204 or 304);
        _client?.SetTag(ProxyTracing.Tags.Status, status);
        if (status >= 500)
        {
            _client?.SetStatus(ActivityStatusCode.Error);
        }
    }

    /// <summary>Ends the spans of the request (a span not begun, e.g. a local reply, is begun now) and resets.</summary>
    public void End(RequestHead head, string? route, int status, DateTime startUtc)
    {
        if (Tracing is not null)
        {
            Begin(head);
            if (_server is not null)
            {
                FinishSpans(route, status, startUtc);
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FinishSpans(string? route, int status, DateTime startUtc)
    {
        Activity server = _server!;
        if (_client is not null)
        {
            if (status == 0 || _clientAborted)
            {
                _client.SetStatus(ActivityStatusCode.Error); // no response, or the upstream call was cut off with the client
            }
            _client.Stop();
        }
        server.SetStartTime(startUtc);
        if (route is not null)
        {
            server.SetTag(ProxyTracing.Tags.Route, route);
            server.DisplayName = server.OperationName + " " + route;
        }
        server.SetTag(ProxyTracing.Tags.Status, status);
        if (status is 0 or >= 500 || _clientAborted)
        {
            server.SetStatus(ActivityStatusCode.Error);
        }
        server.Stop();
    }

    /// <summary>Set by <see cref="MarkClientAborted"/>: the client left before a response (499, <c>client_aborted</c>).</summary>
    private bool _clientAborted;

    /// <summary>
    /// The client left while the upstream had the request: both spans end with status Error (docs/observability.md),
    /// told apart from an upstream that itself answered 499.
    /// </summary>
    public void MarkClientAborted() => _clientAborted = true;

    /// <summary>Clears per-request state for the next request on the connection.</summary>
    public void Reset()
    {
        _clientAborted = false;
        _begun = false;
        _hasParent = false;
        _forwardTraceState = false;
        _flags = 0;
        _server = null;
        _client = null;
        UpstreamStarted = 0;
        UpstreamResponded = 0;
        Destination = null;
        ResponseHasBody = false;
    }
}
