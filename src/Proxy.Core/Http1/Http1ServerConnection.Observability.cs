using System.Diagnostics;
using System.Runtime.CompilerServices;
using Proxy.Diagnostics;
using Proxy.Diagnostics.AccessLog;
using Proxy.Diagnostics.Tracing;
using Proxy.Http;
using Proxy.Model;
using Proxy.Pipeline;

namespace Proxy.Http1;

// Tracing, access log and insights of a connection's requests: one call at the end of each request, and the
// telemetry the forwarder hands to the upstream request writer (traceparent out, upstream timing).
internal sealed partial class Http1ServerConnection
{
    /// <summary>Created at the first request that needs it (tracing or access log on); reset after each request.</summary>
    private RequestTelemetry? _telemetry;

    /// <summary>
    /// The current request's telemetry for the forwarder, or null when neither tracing nor the access log is
    /// configured (then the upstream request carries the client's trace fields untouched).
    /// </summary>
    internal RequestTelemetry? Telemetry
    {
        get
        {
            ObservabilityModel model = (_snapshot ?? _runtime.Current).Observability;
            if (model.Tracing is null && model.AccessLog is null)
            {
                return null;
            }
            RequestTelemetry telemetry = _telemetry ??= new RequestTelemetry();
            telemetry.Prepare(model.Tracing, Listener.Name, _route?.Cluster?.Name);
            return telemetry;
        }
    }

    /// <summary>End of a request on a proxy listener: insights, spans, one access log record. No formatting here.</summary>
    private void ObserveRequestEnd(long started)
    {
        if (Listener.Handler != ListenerHandler.Proxy || _snapshot is not { } snapshot)
        {
            return;
        }
        ObservabilityModel model = snapshot.Observability;
        ProxyObservability observability = _runtime.Observability;
        long elapsed = Stopwatch.GetTimestamp() - started;
        if (model.Insights.Enabled)
        {
            observability.Insights.Record(RemoteAddress, ResponseStatus, elapsed);
        }
        if (model.Tracing is null && model.AccessLog is null)
        {
            return;
        }
        ObserveSlow(model, observability, elapsed);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ObserveSlow(ObservabilityModel model, ProxyObservability observability, long elapsed)
    {
        RequestTelemetry telemetry = Telemetry!;
        RequestHead head = Head;
        DateTime startUtc = DateTime.UtcNow.AddTicks(-(long)(elapsed * ((double)TimeSpan.TicksPerSecond / Stopwatch.Frequency)));
        telemetry.End(head, _route?.Id, ResponseStatus, startUtc);
        if (model.AccessLog is not null && observability.AccessLog is { } log && log.TryClaim(out long position))
        {
            Fill(ref log.RecordAt(position), telemetry, head, startUtc, elapsed);
            log.Publish(position);
        }
        telemetry.Reset();
    }

    /// <summary>
    /// A head refused before any routing (by the parser, a head limit or header_timeout): counted in the insights'
    /// status codes and clients (its route view already counts it under the unrouted route, through the metrics), and
    /// one access-log record with what is known, the status, the details code (as <c>policy</c>), the method and path
    /// when the request line was parsed; no route. Runs only on that error path, so the steady state does not pay for it.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ObserveRejectedHead(int status, string details)
    {
        if (Listener.Handler != ListenerHandler.Proxy)
        {
            return;
        }
        ObservabilityModel model = (_snapshot ?? _runtime.Current).Observability;
        if (model.Insights.Enabled)
        {
            _runtime.Observability.Insights.Record(RemoteAddress, status, 0);
        }
        if (model.AccessLog is null || _runtime.Observability.AccessLog is not { } log || !log.TryClaim(out long position))
        {
            return;
        }
        RequestHead head = Head;
        string? method = head.MethodLength > 0 ? RequestLabels.Methods[RequestLabels.MethodSlot(head.Method)] : null;
        // The id the answer carries.
        log.RecordAt(position).SetRefused(DateTime.UtcNow.Ticks, head.Length, Listener.Name, details, method, RemoteAddress, status,
            head.Path, ReplyRequestId());
        log.Publish(position);
    }

    private void Fill(ref AccessLogRecord r, RequestTelemetry telemetry, RequestHead head, DateTime startUtc, long elapsed)
    {
        r.StartUtcTicks = startUtc.Ticks;
        r.DurationTicks = elapsed;
        r.UpstreamTicks = telemetry.UpstreamResponded != 0 ? telemetry.UpstreamResponded - telemetry.UpstreamStarted : -1;
        r.BytesIn = head.Length + (head.HasBody ? RequestPump.BytesRead : 0);
        r.BytesOut = telemetry.UpstreamResponded != 0 && telemetry.ResponseHasBody ? ResponsePump.BytesRead : 0;
        r.Listener = Listener.Name;
        r.Route = _route?.Id;
        r.Cluster = _route?.Cluster?.Name;
        r.Destination = telemetry.Destination?.Address;
        r.Method = RequestLabels.Methods[RequestLabels.MethodSlot(head.Method)];
        r.Client = RemoteAddress;
        r.Status = ResponseStatus;
        r.SetPath(head.Path);
        r.HasTrace = telemetry.HasTrace;
        if (r.HasTrace)
        {
            telemetry.TraceId.CopyTo(r.TraceId);
            if (telemetry.UpstreamStarted != 0)
            {
                telemetry.UpstreamSpanId.CopyTo(r.SpanId);
            }
            r.HasSpan = telemetry.UpstreamStarted != 0;
        }
        ReadOnlySpan<byte> id = head.RequestIdValue;
        id.CopyTo(r.RequestId);
        r.RequestIdLength = id.Length;
        // Only a route that ran a chain has a context for this request (otherwise it holds an earlier request's state).
        if (FilterContext is { } context)
        {
            RequestIdentity identity = context.Identity;
            ReadOnlySpan<byte> consumer = identity.Consumer;
            r.SetConsumer(consumer.IsEmpty ? identity.Subject : consumer);
            // Details codes are constants passed to Respond: the reference is kept, nothing is copied.
            r.Policy = context.ReplyDetails.Length != 0 ? context.ReplyDetails : null;
        }
        else
        {
            r.SetConsumer(default);
            r.Policy = null;
        }
    }
}
