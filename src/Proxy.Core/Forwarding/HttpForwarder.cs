using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Upstream;

namespace Proxy.Forwarding;

/// <summary>
/// Relays one request at a time from a client connection to an upstream HTTP/1.1 connection and the response
/// back. Heads are re-written field by field from the parsed offsets (hop-by-hop fields dropped, framing and
/// X-Forwarded-* written by us), bodies are re-framed and streamed through <see cref="BodyPump"/> so neither
/// side's body is ever buffered whole.
/// </summary>
internal sealed partial class HttpForwarder
{
    /// <summary>Tells clients and load balancers in front that the 503 is the proxy shedding load, not the upstream failing.</summary>
    internal static readonly byte[] OverloadedField = "x-proxy-overloaded: true\r\n"u8.ToArray();

    /// <summary>
    /// The connection whose requests this forwarder relays. A forwarder outlives its connection: a parked one goes back
    /// to <see cref="ProxyRuntime.Forwarders"/> when its connection closes and serves the next one (with its loop's box
    /// and value-task sources: a connection per request then allocates none of them). Pooled, it holds no connection.
    /// </summary>
    private Http1ServerConnection _client = null!;
    private UpstreamConnection? _active;
    /// <summary>Guards <see cref="_client"/> changes against <see cref="AbortUpstream"/> from a closed connection.</summary>
    private readonly Lock _ownerLock = new();

    /// <summary>Binds a new or pooled (parked) forwarder to <paramref name="client"/>, before its first request.</summary>
    public void Attach(Http1ServerConnection client)
    {
        lock (_ownerLock)
        {
            _client = client;
        }
    }

    /// <summary>
    /// Unbinds a parked forwarder from its closed connection before it is pooled. That connection may still be told to
    /// abort (a heartbeat or a shutdown that found it before it left the registry): <see cref="AbortUpstream"/> then
    /// finds another owner, or none, and leaves the upstream alone.
    /// </summary>
    public void Detach()
    {
        lock (_ownerLock)
        {
            _client = null!;
        }
    }

    /// <summary>Nothing of an exchange is running and no upstream connection is held: the forwarder may serve another connection.</summary>
    public bool IsReusable => _parked && _active is null;

    private readonly ReusableValueTaskSource<bool> _result = new();
    private readonly ReusableValueTaskSource<bool> _work = new();
    private RouteModel? _route;
    /// <summary>
    /// The upstream stopped taking this request's body and may have answered early (see the body pump's failure in
    /// <see cref="ForwardLoopAsync"/>), or answered while the body was being sent (<see cref="WatchForEarlyAnswer"/>):
    /// its answer is relayed, the upstream connection dropped, the client's closed.
    /// </summary>
    private bool _earlyResponse;
    /// <summary>How long an upstream that stopped taking the body is given to show its early answer.</summary>
    private static readonly TimeSpan s_earlyResponseWait = TimeSpan.FromSeconds(1);
    /// <summary>
    /// The request pump is sending a streamed body to an HTTP/1.1 upstream: the heartbeat may look for an early answer
    /// (<see cref="WatchForEarlyAnswer"/>). Set by the loop; cleared by it under <see cref="_ownerLock"/>, under which the
    /// heartbeat and the watch read it, so no watch starts or stops the body once the loop has moved on.
    /// </summary>
    private volatile bool _sendingBody;
    /// <summary>
    /// The early-answer watch of the current exchange (<see cref="WatchForEarlyAnswerAsync"/>), null when none started.
    /// Published by the heartbeat under <see cref="_ownerLock"/> while <see cref="_sendingBody"/>; the loop reads it after
    /// clearing that flag under the lock, and always awaits it before it reads or drops the upstream connection itself.
    /// </summary>
    private Task<bool>? _earlyWatch;
    private Task? _loop;
    /// <summary>The tunnel this forwarder relays, if any: its client connection's heartbeat bounds its stalled writes.</summary>
    private TunnelActivity? _tunnel;

    /// <summary>The clocks of the tunnel in progress; null when none. Read by the heartbeat thread.</summary>
    internal TunnelActivity? Tunnel => Volatile.Read(ref _tunnel);

    /// <summary>
    /// The loop published its last outcome and has nothing left to do for it (it waits for, or is about to wait for,
    /// the next request). Only a parked forwarder may be handed a request by a new owner: an HTTP/2 stream's reused
    /// bridge checks it, since a bridge that ended early (abort, error) can leave its loop still running an exchange.
    /// </summary>
    private volatile bool _parked = true;
    /// <summary>The destination the request's session affinity value pinned it to (null: none or unavailable).</summary>
    private DestinationState? _affinityPinned;
    /// <summary>Session affinity's Set-Cookie field to add to the final response head, when the request needs a (new) cookie.</summary>
    private byte[]? _setCookie;
    /// <summary>
    /// <see cref="Stopwatch"/> timestamp of the current try's start (before the pooled connection is rented or a new one
    /// connected); the upstream-request phase's context records the same value, so the try costs one clock read.
    /// </summary>
    private long _tryStarted;
    /// <summary>Timestamp of the final response head, shared by the metric, the response-headers phase and the access log.</summary>
    private long _respondedAt;
    /// <summary>The kept copy of a replayable request body (retry.max_replay_body_bytes); created by the first request that needs one.</summary>
    private RequestReplayBuffer? _replay;

    /// <summary>
    /// Forwards the current request and relays the response. The work runs in <see cref="ForwardLoopAsync"/>, one
    /// long-lived loop per connection, and the caller awaits a reusable value-task source: the waits of every
    /// request (above all, the wait for the upstream's response head) then reuse one state machine, where an async
    /// method per request rents a box per request that the pooling builder's small per-thread cache cannot keep up
    /// with under many connections (measured at 64 connections on one core against an nginx origin: 148 bytes per
    /// request with nested async methods, 77 with one pooled method per request, 0.1 with this loop).
    /// </summary>
    public ValueTask<bool> ForwardAsync(RouteModel route)
    {
        if (!_parked)
        {
            // A second request while the loop still runs the previous one would corrupt both; fail this one instead
            // (the caller's connection ends) rather than let a second awaiter break the result source.
            throw new InvalidOperationException("The forwarder is still running the previous request.");
        }
        _parked = false;
        _route = route;
        _result.Reset();
        if (_loop is null)
        {
            _loop = ForwardLoopAsync();
        }
        else
        {
            _work.SetResult(true);
        }
        return _result.Task;
    }

    /// <summary>True when the last request's outcome was published (see <see cref="_parked"/>).</summary>
    public bool IsParked => _parked;

    /// <summary>
    /// One iteration per request: forwards to <see cref="_route"/>'s cluster for this request, publishes the outcome, waits for the next request.
    /// Runs inline from <see cref="ForwardAsync"/> until its first real wait. Never ends while the connection lives;
    /// an abandoned loop is collected with its connection.
    /// </summary>
    private async Task ForwardLoopAsync()
    {
        while (true)
        {
            RouteModel route = _route!;
            _affinityPinned = null;
            _setCookie = null;
            _earlyResponse = false;
            _sendingBody = false;
            _earlyWatch = null;
            bool outcome = false;
            Exception? loopError = null;
            try
            {
                // Inside the try: whatever fails here must reach the caller as the request's error; an exception that
                // ended this loop instead would leave the caller waiting for an outcome forever.
                ClusterModel cluster = route.SelectCluster(_client.Head);
                // Timeouts (docs/resilience.md, "Timeouts"): the route's where set, else the cluster's. The whole-exchange
                // deadline is one absolute tick count that every upstream wait below is clamped to.
                UpstreamTimeouts timeouts = route.Timeouts.Over(cluster.Timeouts);
                long exchangeDeadline = timeouts.Request > TimeSpan.Zero
                    ? Environment.TickCount64 + TimedConnection.Milliseconds(timeouts.Request) : long.MaxValue;
                bool grpc = _client.IsGrpc;
                if (grpc)
                {
                    // The client's own deadline bounds the exchange too (the header is forwarded: the upstream may cut it further).
                    exchangeDeadline = GrpcDeadline(_client.Head, exchangeDeadline);
                }
                _client.SetExchangeDeadline(exchangeDeadline);
                ClusterBreaker? breaker = cluster.Breaker;
                if (breaker is not null && !breaker.TryEnterRequest())
                {
                    outcome = await FailAsync(ProxyError.UpstreamOverloaded, cluster, null).ConfigureAwait(false);
                    goto Done;
                }
                RetryBudget? budget = cluster.RetryBudget;
                budget?.RequestStarted();
                bool retrySlot = false;
                try
                {
                    RequestHead head = _client.Head;
                    ClusterHealth health = cluster.Health;
                    // RFC 9110 section 9.2.2: only idempotent requests may be replayed; retry.non_idempotent opts a cluster into
                    // replaying other methods (gRPC calls are POSTs). A body is replayable while its kept copy fits the limit.
                    bool replayable = IsIdempotent(head.Method) || cluster.Retry is { NonIdempotent: true } || route.RetryNonIdempotent;
                    RequestReplayBuffer? replay = null;
                    // The request-body phase already read the body whole: every try, the first included, sends it from the
                    // buffer (the HTTP/1.1 "bodySent" path, HTTP/2's fromReplay), and a retry needs no copy of its own.
                    bool bodySent = false;
                    if (_client.BufferedBody is { } buffered)
                    {
                        replay = buffered;
                        bodySent = true;
                    }
                    else if (replayable && head.HasBody)
                    {
                        replay = StartReplay(cluster, head);
                        replayable = replay is not null;
                    }
                    DestinationState? previous = null;

                    // One pass per configured try (retry.attempts); each pass may also replay once on a dead pooled connection.
                    for (int retries = 0; ; retries++)
                    {
                        DestinationState[] candidates = health.Candidates();
                        // Session affinity decides the first try only: a retry goes elsewhere like any other.
                        DestinationState? destination = null;
                        if (retries == 0 && cluster.Affinity is { } affinity)
                        {
                            destination = _affinityPinned = affinity.Find(head, candidates);
                        }
                        destination ??= cluster.Policy.Pick(candidates);
                        if (destination is null)
                        {
                            ProxyError none = cluster.Destinations.Length == 0 ? ProxyError.NoDestination : ProxyError.NoHealthyDestination;
                            outcome = await FailAsync(none, cluster, null).ConfigureAwait(false);
                            goto Done;
                        }
                        if (previous is not null)
                        {
                            destination = ClusterHealth.Another(candidates, destination, previous);
                        }
                        previous = destination;
                        _client.Telemetry?.DestinationPicked(destination);

                        _tryStarted = Stopwatch.GetTimestamp();
                        if (!_client.RunUpstreamRequestFilters(destination, retries, _tryStarted))
                        {
                            outcome = await FailAsync(ProxyError.FilterFailed, cluster, destination).ConfigureAwait(false);
                            goto Done;
                        }
                        ProxyError failure = ProxyError.None;
                        RetryOn cause = RetryOn.None;
                        bool retryStatus = false;
                        destination.RequestStarted();
                        try
                        {
                            ConnectionPool pool = destination.Pool!;
                            for (int attempt = 0; ; attempt++)
                            {
                                // HTTP/2 destinations (cluster protocol h2, h2c, auto over TLS): HttpForwarder.Http2.cs.
                                if (pool.Http2 is { UseHttp2: true } http2)
                                {
                                    _http2RetrySlot = retrySlot;
                                    Http2Step step = await ForwardHttp2Async(http2, cluster, destination, timeouts, exchangeDeadline, attempt,
                                        replay, bodySent, replayable && budget is not null ? retries : -1).ConfigureAwait(false);
                                    retrySlot = _http2RetrySlot;
                                    if (_http2BodySent)
                                    {
                                        bodySent = true;
                                    }
                                    else if (_http2BodyTouched)
                                    {
                                        replayable = false; // part of the body is gone: it can be neither replayed nor read again
                                    }
                                    if (replay is { IsOverLimit: true })
                                    {
                                        BodyTooLargeToReplay(cluster);
                                        replay = null;
                                        replayable = false;
                                    }
                                    if (step == Http2Step.RetryStatus)
                                    {
                                        retryStatus = true;
                                        break;
                                    }
                                    if (step == Http2Step.Answered)
                                    {
                                        outcome = _http2Outcome;
                                        goto Done;
                                    }
                                    if (step == Http2Step.Replay)
                                    {
                                        if (Environment.TickCount64 >= exchangeDeadline)
                                        {
                                            // The try that lost its connection used up the request timeout: another would
                                            // send the request upstream after the client got its 504 (the upstream then
                                            // answers nobody, and a broken peer leaves its new connection stalled).
                                            failure = ProxyError.UpstreamRequestTimeout;
                                            break;
                                        }
                                        continue;
                                    }
                                    if (step == Http2Step.Failed)
                                    {
                                        failure = _http2Failure;
                                        cause = _http2Cause;
                                        break;
                                    }
                                    // UseHttp2 went false (auto, the peer picked http/1.1): on to the HTTP/1.1 path below.
                                }
                                UpstreamConnection? upstream = attempt == 0 ? pool.TryRentIdle() : null;
                                if (upstream is null)
                                {
                                    if (breaker is not null && !breaker.TryEnterPending())
                                    {
                                        failure = ProxyError.UpstreamOverloaded;
                                        break;
                                    }
                                    // No idle connection: the request waits for a connect (and maybe a max_connections slot).
                                    long waitStarted = Stopwatch.GetTimestamp();
                                    _client.WaitingForUpstreamConnection = true; // the heartbeat watches for the client's close meanwhile
                                    var (connection, error) = await pool.ConnectAsync(takesReturned: true).ConfigureAwait(false);
                                    _client.WaitingForUpstreamConnection = false;
                                    cluster.Metrics?.PoolWaited(Stopwatch.GetTimestamp() - waitStarted);
                                    breaker?.ExitPending();
                                    if (connection is null)
                                    {
                                        failure = ClientGone ? ProxyError.ClientAborted : ConnectFailure(error);
                                        if (error is ConnectError.Refused or ConnectError.Timeout)
                                        {
                                            cause = RetryOn.ConnectFailure;
                                            health.ReportFailure(destination);
                                        }
                                        break;
                                    }
                                    upstream = connection;
                                    // The client may have left during the connect, when there was no connection for its
                                    // abort to cut: then nothing goes up. The fence orders the store before the read, so
                                    // an abort from now on finds the connection (AbortUpstream) or is seen here.
                                    Interlocked.Exchange(ref _active, upstream);
                                    if (ClientGone)
                                    {
                                        if (TakeBackActive(upstream))
                                        {
                                            upstream.Destination.Pool!.Return(upstream); // unused: another request may have it
                                        }
                                        else
                                        {
                                            upstream.Dispose();
                                        }
                                        failure = ProxyError.ClientAborted;
                                        break;
                                    }
                                }
                                _active = upstream;
                                // A reused connection that dies before any response byte is replayed once, unasked, for an
                                // idempotent method only (as HTTP/2's MayReplayLost): the upstream may have run it, and
                                // retry.non_idempotent opts into configured retries, never into this one.
                                bool mayRetry = replayable && attempt == 0 && upstream.RequestCount > 0 && IsIdempotent(head.Method);

                                UpstreamRequestWriter.WriteHead(upstream.Output, head, _client.Listener.Forwarded, _client.RemoteAddress, destination,
                                    _client.Telemetry, _client.Transport, _client.Listener.Tls?.ForwardHeader, _client.FilterContext, route.Rewrite);

                                if (bodySent)
                                {
                                    // A retry, or a body the request-body phase buffered: send the kept copy in the client's framing.
                                    replay!.WriteHttp1(upstream.Output, head.Chunked ? BodyFraming.Chunked : BodyFraming.ContentLength, _client);
                                    if (!await FlushUpstreamAsync(upstream).ConfigureAwait(false))
                                    {
                                        ReleaseUpstream();
                                        if (mayRetry && !ClientGone)
                                        {
                                            continue;
                                        }
                                        failure = ProxyError.UpstreamRequestWriteFailed;
                                        cause = RetryOn.Reset;
                                        break;
                                    }
                                }
                                else if (head.HasBody)
                                {
                                    if (!await _client.SendContinueIfExpectedAsync().ConfigureAwait(false))
                                    {
                                        ReleaseUpstream();
                                        outcome = false;
                                        goto Done;
                                    }
                                    BodyFraming framing = head.Chunked ? BodyFraming.Chunked : BodyFraming.ContentLength;
                                    _client.SetUpstreamTimeout(timeouts.StreamIdle);
                                    _sendingBody = true;
                                    PumpResult sent = await _client.RequestPump.CopyAsync(_client.Input, upstream.Output, framing, head.ContentLength,
                                        framing, _client.Listener.Limits.MaxBodyBytes, _client, replay).ConfigureAwait(false);
                                    lock (_ownerLock)
                                    {
                                        _sendingBody = false;
                                    }
                                    if ((sent == PumpResult.DestinationFailed || (sent == PumpResult.Cancelled && _earlyWatch is { IsCompletedSuccessfully: true, Result: true }))
                                        && !ClientGone)
                                    {
                                        // The upstream stopped taking the body: often because it answered early (a 413 or a 401
                                        // before reading an upload) and closed, or kept its connection without reading on (the
                                        // heartbeat's watch then saw the answer and stopped the body, see WatchForEarlyAnswer).
                                        // RFC 9112 section 9.5: a client sending a body watches for such an answer. Its head is
                                        // read below (briefly, see EarlyResponseWait) and relayed; the client connection then
                                        // closes, its body unread. Never retried. A client that stalled mid-body after the watch
                                        // found the answer (its read ran into body_timeout) gets that answer, not a 408.
                                        _client.TakeFiredTimeout();
                                        _earlyResponse = true;
                                        replayable = mayRetry = false;
                                        replay = null;
                                    }
                                    else if (sent != PumpResult.Completed)
                                    {
                                        // Never retried: the client's side of the body failed.
                                        if (_earlyWatch is not null)
                                        {
                                            await EndEarlyWatchAsync(upstream, abort: true).ConfigureAwait(false);
                                        }
                                        if (sent == PumpResult.Cancelled && _client.ExchangeDeadlinePassed && _client.TakeFiredTimeout() != TimeoutKind.None)
                                        {
                                            // request_timeout (or the gRPC deadline) ran out while the client was still sending its
                                            // body: the exchange's answer, as when it runs out before the head (and as on the HTTP/2
                                            // upstream path, whose head wait runs alongside the body). The client's slowness, not
                                            // the upstream's: no health report, no retry. FailAsync closes (the body is unread).
                                            outcome = await FailAsync(ProxyError.UpstreamRequestTimeout, cluster, destination).ConfigureAwait(false);
                                            goto Done;
                                        }
                                        ReleaseUpstream();
                                        outcome = await RequestBodyFailedAsync(sent).ConfigureAwait(false);
                                        goto Done;
                                    }
                                    bodySent = !_earlyResponse;
                                    if (replay is { IsOverLimit: true })
                                    {
                                        BodyTooLargeToReplay(cluster);
                                        replay = null;
                                        replayable = mayRetry = false;
                                    }
                                }
                                else if (!await FlushUpstreamAsync(upstream).ConfigureAwait(false))
                                {
                                    ReleaseUpstream();
                                    if (mayRetry && !ClientGone)
                                    {
                                        continue;
                                    }
                                    failure = ProxyError.UpstreamRequestWriteFailed;
                                    cause = RetryOn.Reset;
                                    break;
                                }

                                // ---- response head (and any 1xx interim responses before it)
                                ResponseHead response = upstream.Response;
                                PipeReader input = upstream.Input;
                                if (_earlyWatch is not null && await WaitForEarlyWatchAsync(upstream, timeouts, cluster.Retry, exchangeDeadline).ConfigureAwait(false))
                                {
                                    // The watch stopped the body as the pump ended: the connection cannot be reused, and the
                                    // answer is relayed as an early one.
                                    _earlyResponse = true;
                                    replayable = mayRetry = false;
                                    replay = null;
                                }
                                bool receivedAny = false;
                                bool retryDead = false;
                                while (failure == ProxyError.None && !retryDead && !retryStatus)
                                {
                                    ProxyError headTimeout = HeadWait(timeouts.Response, cluster.Retry, exchangeDeadline, out TimeSpan wait);
                                    if (wait <= TimeSpan.Zero)
                                    {
                                        failure = ProxyError.UpstreamRequestTimeout;
                                        break;
                                    }
                                    if (_earlyResponse && wait > s_earlyResponseWait)
                                    {
                                        wait = s_earlyResponseWait;
                                    }
                                    _client.ArmUpstream(input, wait);
                                    HeadStatus status = HeadStatus.Incomplete;
                                    while (true)
                                    {
                                        ReadResult result;
                                        try
                                        {
                                            result = await input.ReadAsync().ConfigureAwait(false);
                                        }
                                        catch (Exception)
                                        {
                                            retryDead = mayRetry && !receivedAny && !ClientGone;
                                            failure = retryDead ? ProxyError.None : ProxyError.UpstreamReset;
                                            break;
                                        }
                                        ReadOnlySequence<byte> buffer = result.Buffer;
                                        if (result.IsCanceled)
                                        {
                                            input.AdvanceTo(buffer.Start, buffer.End);
                                            if (_client.TakeFiredTimeout() != TimeoutKind.None)
                                            {
                                                failure = headTimeout;
                                                break;
                                            }
                                            continue;
                                        }
                                        receivedAny |= !buffer.IsEmpty;
                                        status = Http1ResponseReader.TryRead(buffer, response,
                                            _client.Listener.Limits.MaxHeaderBytes + _client.Listener.Limits.MaxRequestLine,
                                            out SequencePosition consumed, out _);
                                        if (status == HeadStatus.Complete)
                                        {
                                            input.AdvanceTo(consumed);
                                            break;
                                        }
                                        if (status == HeadStatus.Rejected)
                                        {
                                            input.AdvanceTo(buffer.End);
                                            failure = ProxyError.UpstreamInvalidResponse;
                                            break;
                                        }
                                        if (result.IsCompleted)
                                        {
                                            input.AdvanceTo(buffer.End);
                                            retryDead = mayRetry && !receivedAny && !ClientGone;
                                            failure = retryDead ? ProxyError.None : ProxyError.UpstreamReset;
                                            break;
                                        }
                                        input.AdvanceTo(buffer.Start, buffer.End);
                                    }
                                    _client.DisarmUpstream();
                                    if (status != HeadStatus.Complete)
                                    {
                                        break;
                                    }

                                    int code = response.StatusCode;
                                    if (code == 101)
                                    {
                                        if (!head.IsUpgrade)
                                        {
                                            failure = ProxyError.UpstreamInvalidResponse;
                                            break;
                                        }
                                        await TunnelAsync(upstream, cluster).ConfigureAwait(false);
                                        outcome = false;
                                        goto Done;
                                    }
                                    if (code >= 200 && response.Chunked && InvalidChunkedBodyArrived(cluster, destination, upstream))
                                    {
                                        // Nothing is relayed yet: answered 502 like a malformed head (a failure for health, never retried).
                                        failure = ProxyError.UpstreamInvalidBody;
                                        break;
                                    }
                                    if (code >= 500)
                                    {
                                        health.ReportFailure(destination);
                                        // A 5xx that will be retried is never relayed: its connection is dropped below, body unread.
                                        if (replayable && budget is not null && budget.Model.RetriesStatus(code)
                                            && TryTakeRetry(budget, retries, ref retrySlot))
                                        {
                                            retryStatus = true;
                                            break;
                                        }
                                    }
                                    else if (code >= 200)
                                    {
                                        health.ReportSuccess(destination);
                                        // retry.on: unavailable: a trailers-only grpc-status 14 is retried like a retryable 5xx.
                                        if (grpc && replayable && budget is not null && (budget.Model.On & RetryOn.Unavailable) != 0
                                            && GrpcStatus.IsUnavailable(response) && TryTakeRetry(budget, retries, ref retrySlot))
                                        {
                                            retryStatus = true;
                                            break;
                                        }
                                    }
                                    if (code >= 200)
                                    {
                                        if (cluster.Affinity is { } pinning && !ReferenceEquals(_affinityPinned, destination))
                                        {
                                            // No valid cookie for the destination that answered: (re)pin the client to it.
                                            _setCookie = pinning.SetCookieFor(destination);
                                        }
                                        // The answer is final: the kept body is not needed while a long response streams.
                                        replay?.Reset();
                                        EndRetry(budget, ref retrySlot);
                                        // The body's waits are awaited here, in the loop, not in a nested async method: see BeginResponseBody.
                                        if (BeginResponseBody(cluster, upstream, out BodyFraming inFraming, out BodyFraming outFraming, out bool keepAlive))
                                        {
                                            // A Content-Length source is relayed with a Content-Length (BeginResponseBody).
                                            if (inFraming == BodyFraming.ContentLength
                                                && _client.ResponsePump.TryCopyBuffered(upstream.Input, _client.Output, response.ContentLength))
                                            {
                                                // The whole body came with the head: it leaves with it, in one flush. The upstream connection
                                                // is free before that flush (the body is consumed), as EndResponseBody would free it after.
                                                ReturnOrRelease(upstream, response);
                                                outcome = await _client.FlushAnswerAsync(closing: !keepAlive).ConfigureAwait(false) && keepAlive;
                                                goto Done;
                                            }
                                            _client.AnswerCloses(!keepAlive);
                                            PumpResult copied = await _client.ResponsePump.CopyAsync(upstream.Input, _client.Output, inFraming,
                                                upstream.Response.ContentLength, outFraming, long.MaxValue, _client).ConfigureAwait(false);
                                            _client.ShutSendAfterPump();
                                            if (copied == PumpResult.SourceInvalid && !ClientGone)
                                            {
                                                // The broken framing came in a read the pump had not flushed yet (bytes that arrived
                                                // after the check above, or after good chunks): the head and those chunks are still in
                                                // the output. They go out first, so the cut below truncates the response rather than
                                                // leaving the client an empty reply.
                                                await _client.FlushClientAsync().ConfigureAwait(false);
                                            }
                                            outcome = EndResponseBody(copied, inFraming, keepAlive, cluster, destination, upstream);
                                        }
                                        else
                                        {
                                            outcome = await _client.FlushAnswerAsync(closing: !keepAlive).ConfigureAwait(false) && keepAlive;
                                        }
                                        goto Done;
                                    }
                                    // Interim responses go to HTTP/1.1 clients only (RFC 9110 section 15.2).
                                    if (head.Version == Http.HttpVersion.Http11)
                                    {
                                        WriteResponseHead(response, BodyFraming.None, -1, interim: true, keepAlive: true);
                                        if (!await _client.FlushClientAsync().ConfigureAwait(false))
                                        {
                                            ReleaseUpstream();
                                            outcome = false;
                                            goto Done;
                                        }
                                    }
                                }

                                ReleaseUpstream();
                                if (_earlyResponse && failure != ProxyError.None)
                                {
                                    // No early answer after all: the upstream just stopped taking the body.
                                    failure = ProxyError.UpstreamRequestWriteFailed;
                                    retryStatus = false;
                                }
                                if (retryDead)
                                {
                                    continue;
                                }
                                if (failure != ProxyError.None && !ClientGone)
                                {
                                    if (failure != ProxyError.UpstreamRequestWriteFailed)
                                    {
                                        // A failed request write (here: an early answer that never came) is reported
                                        // below, once, with those of the sends above and of the HTTP/2 path.
                                        health.ReportFailure(destination);
                                    }
                                    cause = failure switch
                                    {
                                        ProxyError.UpstreamReset => RetryOn.Reset,
                                        ProxyError.UpstreamPerTryTimeout => RetryOn.PerTryTimeout,
                                        _ => RetryOn.None,
                                    };
                                }
                                break;
                            }
                        }
                        finally
                        {
                            destination.RequestEnded();
                        }

                        if (failure != ProxyError.None && ClientGone)
                        {
                            // Cut from our side (AbortUpstream): the client left, its HTTP/2 stream was reset, or shutdown's
                            // deadline passed. Not the upstream's failure: no health report, no retry, nobody to answer.
                            failure = ProxyError.ClientAborted;
                            cause = RetryOn.None;
                            retryStatus = false;
                        }
                        else if (failure == ProxyError.UpstreamRequestWriteFailed)
                        {
                            // The one report of a failed request write, whichever path and step failed it: each failed
                            // try counts once (the tries above leave it to this line).
                            health.ReportFailure(destination);
                        }
                        if ((!retryStatus && (cause == RetryOn.None || !replayable || budget is null || (budget.Model.On & cause) == 0
                            || !TryTakeRetry(budget, retries, ref retrySlot))) || Environment.TickCount64 >= exchangeDeadline)
                        {
                            if (failure == ProxyError.None)
                            {
                                // A 5xx kept for a retry that the deadline then ruled out: its connection is gone, so answer it as a timeout.
                                failure = ProxyError.UpstreamRequestTimeout;
                            }
                            EndRetry(budget, ref retrySlot);
                            outcome = await FailAsync(failure, cluster, destination).ConfigureAwait(false);
                            goto Done;
                        }
                        TimeSpan backoff = RetryBudget.Backoff(retries + 1, budget!.Model.BackoffBase, budget.Model.BackoffMax, Random.Shared.NextDouble());
                        // No retry starts past request_timeout (both upstream protocols come here): a backoff that would end
                        // past it is cut to it, and the deadline is checked again after the wait (a timer may fire late).
                        // A retry sent then would run upstream with nobody to read its answer.
                        long untilDeadline = exchangeDeadline - Environment.TickCount64;
                        bool backoffPastDeadline = TimedConnection.Milliseconds(backoff) >= untilDeadline;
                        if (backoffPastDeadline)
                        {
                            backoff = TimeSpan.FromMilliseconds(Math.Max(0, untilDeadline));
                        }
                        if (backoff > TimeSpan.Zero)
                        {
                            await Task.Delay(backoff).ConfigureAwait(false);
                        }
                        if (backoffPastDeadline || Environment.TickCount64 >= exchangeDeadline)
                        {
                            EndRetry(budget, ref retrySlot);
                            outcome = await FailAsync(ProxyError.UpstreamRequestTimeout, cluster, destination).ConfigureAwait(false);
                            goto Done;
                        }
                        cluster.Metrics?.Retried();
                    }
                }
                finally
                {
                    if (retrySlot)
                    {
                        budget!.RetryEnded();
                    }
                    budget?.RequestEnded();
                    breaker?.ExitRequest();
                }
            Done:;
            }
            catch (Exception e)
            {
                loopError = e;
            }
            // Every path (answered, failed, client gone) gives the kept body's blocks back here.
            _replay?.Reset();
            _client.SetExchangeDeadline(long.MaxValue);
            // Reset before publishing: publishing may run the connection inline up to its next ForwardAsync call.
            _work.Reset();
            // Parked before publishing too: what publishing runs inline may decide on reuse before the loop's await below.
            _parked = true;
            if (loopError is null)
            {
                _result.SetResult(outcome);
            }
            else
            {
                _result.SetException(loopError);
            }
            await _work.Task.ConfigureAwait(false);
        }
    }

    /// <summary>The answer for a connection that could not be had (both upstream protocols).</summary>
    private static ProxyError ConnectFailure(ConnectError error) => error switch
    {
        ConnectError.Timeout => ProxyError.UpstreamConnectTimeout,
        ConnectError.PoolExhausted => ProxyError.UpstreamPoolExhausted,
        ConnectError.Overloaded => ProxyError.UpstreamOverloaded,
        _ => ProxyError.UpstreamConnectFailed,
    };

    /// <summary>
    /// How long to wait for a response head: the response timeout, shortened by the per-try timeout and by what is left
    /// of the whole-exchange deadline; returns the error to answer if that wait runs out (which of the three bound it).
    /// </summary>
    private static ProxyError HeadWait(TimeSpan response, RetryModel? retry, long exchangeDeadline, out TimeSpan wait)
    {
        wait = response;
        ProxyError error = ProxyError.UpstreamResponseTimeout;
        if (retry is { PerTryTimeout: var perTry } && perTry > TimeSpan.Zero && perTry < wait)
        {
            wait = perTry;
            error = ProxyError.UpstreamPerTryTimeout;
        }
        if (exchangeDeadline != long.MaxValue)
        {
            long left = exchangeDeadline - Environment.TickCount64;
            if (left <= TimedConnection.Milliseconds(wait))
            {
                wait = TimeSpan.FromMilliseconds(left);
                error = ProxyError.UpstreamRequestTimeout;
            }
        }
        return error;
    }

    /// <summary>
    /// Arms the replay buffer for a request body, or returns null when the cluster keeps no copy (no retry block,
    /// <c>max_replay_body_bytes: 0</c>) or the declared length already passes the limit (counted like an overflow).
    /// </summary>
    private RequestReplayBuffer? StartReplay(ClusterModel cluster, RequestHead head)
    {
        if (cluster.Retry is not { MaxReplayBodyBytes: > 0 and var limit })
        {
            return null;
        }
        if (!head.Chunked && head.ContentLength > limit)
        {
            BodyTooLargeToReplay(cluster);
            return null;
        }
        RequestReplayBuffer replay = _replay ??= new RequestReplayBuffer(BlockMemoryPool.Large);
        replay.Start(limit);
        return replay;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void BodyTooLargeToReplay(ClusterModel cluster)
    {
        cluster.RetryBudget?.BodyTooLarge();
        cluster.Metrics?.RetrySkippedBodyTooLarge();
    }

    /// <summary>
    /// Gives the retry slot back once the answer is chosen (no try follows), before it is written: the client's next
    /// request, sent as soon as this answer arrives, must never find the slot still held by this one.
    /// </summary>
    private static void EndRetry(RetryBudget? budget, ref bool slot)
    {
        if (slot)
        {
            slot = false;
            budget!.RetryEnded();
        }
    }

    /// <summary>
    /// Takes the budget for one more try of this request: within retry.attempts, not while draining, and within the
    /// cluster's retry budget. A request holds at most one budget slot, from its first retry to its end.
    /// </summary>
    private bool TryTakeRetry(RetryBudget budget, int retriesDone, ref bool slot)
    {
        if (retriesDone >= budget.Model.Attempts || _client.Draining)
        {
            return false;
        }
        if (slot)
        {
            return true;
        }
        slot = budget.TryStartRetry();
        return slot;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> RequestBodyFailedAsync(PumpResult result)
    {
        switch (result)
        {
            case PumpResult.TooLarge:
            case PumpResult.SourceInvalid:
                RejectReason reason = _client.RequestPump.Reject;
                await _client.SendErrorAsync(reason.StatusCode(), reason.DetailsCode(), close: true).ConfigureAwait(false);
                return false;
            case PumpResult.Cancelled:
                if (_client.TakeFiredTimeout() != TimeoutKind.None)
                {
                    await _client.SendErrorAsync(408, RejectReason.BodyTimeout.DetailsCode(), close: true).ConfigureAwait(false);
                }
                return false;
            case PumpResult.DestinationFailed:
                await _client.SendErrorAsync(ProxyError.UpstreamRequestWriteFailed.StatusCode(),
                    ProxyError.UpstreamRequestWriteFailed.DetailsCode(), close: true).ConfigureAwait(false);
                return false;
            default:
                // The client closed or broke the body mid-way: nobody to answer.
                return false;
        }
    }

    /// <summary>
    /// Writes the final response's head and chooses the body's framing both ways; true when a body is to be relayed
    /// (<see cref="BodyPump.CopyAsync"/>, then <see cref="EndResponseBody"/>), false when the head is all there is (the
    /// upstream connection is already returned; flush the answer). Synchronous on purpose: the relay's only waits are
    /// awaited in <see cref="ForwardLoopAsync"/>, whose box lives as long as the connection, where a nested async method
    /// rents a box from the pooling builder each time a body that does not arrive in one read makes it suspend.
    /// </summary>
    private bool BeginResponseBody(ClusterModel cluster, UpstreamConnection upstream,
        out BodyFraming inFraming, out BodyFraming outFraming, out bool keepAlive)
    {
        RequestHead request = _client.Head;
        ResponseHead response = upstream.Response;

        // ---- final response: choose framing both ways (RFC 9112 section 6.3)
        bool http11Client = request.Version == Http.HttpVersion.Http11;
        if (request.Method == Http.HttpMethod.Head || response.StatusCode is 204 or 304)
        {
            inFraming = outFraming = BodyFraming.None;
        }
        else if (response.Chunked)
        {
            inFraming = BodyFraming.Chunked;
            outFraming = http11Client ? BodyFraming.Chunked : BodyFraming.CloseDelimited;
        }
        else if (response.ContentLength >= 0)
        {
            inFraming = outFraming = BodyFraming.ContentLength;
        }
        else
        {
            inFraming = BodyFraming.CloseDelimited;
            outFraming = http11Client ? BodyFraming.Chunked : BodyFraming.CloseDelimited;
        }
        keepAlive = request.KeepAlive && !_client.Draining && outFraming != BodyFraming.CloseDelimited && !_earlyResponse;
        if (_earlyResponse)
        {
            // The rest of the client's body is still on its way: read and dropped for a while after the answer, so that
            // closing with it unread does not reset the connection before the client has read the answer.
            _client.LingerOnClose();
        }

        UpstreamResponded(cluster);
        _client.RunResponseHeadersFilters(response, _respondedAt);
        WriteResponseHead(response, outFraming, response.ContentLength, interim: false, keepAlive);

        // "content-length: 0" (a gRPC trailers-only answer, an empty 200) has nothing to read: a pump would wait for
        // bytes a keep-alive upstream never sends.
        if (inFraming == BodyFraming.None || (inFraming == BodyFraming.ContentLength && response.ContentLength == 0))
        {
            ReturnOrRelease(upstream, response);
            return false;
        }

        _client.SetUpstreamTimeout(_route!.Timeouts.Over(cluster.Timeouts).StreamIdle);
        return true;
    }

    /// <summary>After the response body's copy: hands the upstream connection back (or drops it) and says whether the client connection may go on.</summary>
    private bool EndResponseBody(PumpResult copied, BodyFraming inFraming, bool keepAlive, ClusterModel cluster,
        DestinationState destination, UpstreamConnection upstream)
    {
        if (copied != PumpResult.Completed)
        {
            ResponseBodyFailed(copied, cluster, destination);
            return false;
        }
        if (inFraming == BodyFraming.CloseDelimited)
        {
            ReleaseUpstream();
        }
        else
        {
            ReturnOrRelease(upstream, upstream.Response);
        }
        return keepAlive;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ResponseBodyFailed(PumpResult copied, ClusterModel cluster, DestinationState destination)
    {
        // The head is already on its way: the only honest signal left is to cut the client connection. A client that
        // left (the heartbeat cut the upstream read for it) is not the upstream's failure: no warning.
        _client.TakeFiredTimeout();
        if (copied != PumpResult.DestinationFailed && !ClientGone)
        {
            ProxyLog.Warn("upstream_body_failed", ("cluster", cluster.Name), ("destination", destination.Address),
                ("result", copied.ToString()), ("reason", _client.ResponsePump.Reject.DetailsCode()));
        }
        ReleaseUpstream();
        _client.Abort();
    }

    /// <summary>
    /// A final chunked response whose body bytes, those already received with its head, break the chunked framing
    /// (RFC 9112 section 7.1): checked before the head is written, since the head is relayed with the body's first bytes
    /// and can no longer be taken back once the pump finds the error in them. One pass over the framing of what is
    /// buffered (usually the whole of a small body); nothing is consumed. A response with no body (HEAD, 204, 304) is
    /// never checked: its framing is not read.
    /// </summary>
    private bool InvalidChunkedBodyArrived(ClusterModel cluster, DestinationState destination, UpstreamConnection upstream)
    {
        if (_client.Head.Method == Http.HttpMethod.Head || upstream.Response.StatusCode is 204 or 304
            || !upstream.Input.TryRead(out ReadResult result))
        {
            return false;
        }
        ReadOnlySequence<byte> buffer = result.Buffer;
        RejectReason error = result.IsCanceled ? RejectReason.None : ChunkedDecoder.FindError(buffer);
        upstream.Input.AdvanceTo(buffer.Start);
        if (result.IsCanceled)
        {
            upstream.Input.CancelPendingRead(); // TryRead took the cancel: the pump's read must still get it
        }
        if (error == RejectReason.None)
        {
            return false;
        }
        InvalidBodyArrived(cluster, destination, error);
        return true;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void InvalidBodyArrived(ClusterModel cluster, DestinationState destination, RejectReason error)
        => ProxyLog.Warn("upstream_body_failed", ("cluster", cluster.Name), ("destination", destination.Address),
            ("result", nameof(PumpResult.SourceInvalid)), ("reason", error.DetailsCode()));

    /// <summary>
    /// The final response head of the try that is relayed arrived: one clock read, recorded as the cluster's upstream
    /// duration and kept for the response-headers phase and the access log. A 5xx that is retried is not counted.
    /// </summary>
    private void UpstreamResponded(ClusterModel cluster)
    {
        _respondedAt = Stopwatch.GetTimestamp();
        cluster.Metrics?.UpstreamResponded(_respondedAt - _tryStarted);
    }

    private void ReturnOrRelease(UpstreamConnection upstream, ResponseHead response)
    {
        if (TakeBackActive(upstream) && response.KeepAlive && !_earlyResponse && !_client.Head.IsUpgrade && !HasUnexpectedBytes(upstream))
        {
            upstream.PollBeforeReuse = _client.Head.Method == Http.HttpMethod.Head || response.StatusCode is 204 or 304;
            upstream.Destination.Pool!.Return(upstream);
        }
        else
        {
            upstream.Dispose();
        }
    }

    /// <summary>
    /// Clears <see cref="_active"/> under the lock <see cref="AbortUpstream"/> reads it under, so that a client's abort
    /// either ran before (and cut this connection: false, it must not be pooled) or finds no connection. Cleared without
    /// the lock, an abort that had just read it could cut it after it went back to the pool, under another request.
    /// </summary>
    private bool TakeBackActive(UpstreamConnection upstream)
    {
        lock (_ownerLock)
        {
            _active = null;
        }
        return !upstream.WasAborted;
    }

    /// <summary>
    /// Bytes already received past the end of the response (a body on a HEAD or 304, or garbage) would be read as
    /// the next response on this connection: such a connection is not reused. The check reads only what is buffered.
    /// </summary>
    private static bool HasUnexpectedBytes(UpstreamConnection upstream)
    {
        if (!upstream.Input.TryRead(out ReadResult result))
        {
            return false;
        }
        bool extra = !result.Buffer.IsEmpty || result.IsCompleted;
        upstream.Input.AdvanceTo(result.Buffer.Start);
        return extra;
    }

    /// <summary>Drops the active upstream connection (not reusable after a failure).</summary>
    public void ReleaseUpstream()
    {
        UpstreamConnection? upstream = _active;
        _active = null;
        upstream?.Dispose();
    }

    /// <summary>
    /// The client connection was aborted: the exchange's upstream connection was cut from our side
    /// (<see cref="AbortUpstream"/>), so a failure that follows is not the upstream's.
    /// </summary>
    private bool ClientGone => _client.IsAborted;

    /// <summary>
    /// Aborts the upstream side of <paramref name="owner"/>'s exchange (a write timeout, an aborted client): its HTTP/1.1
    /// connection is cut; a wait on its HTTP/2 stream is woken, and the try, seeing the client gone, ends and resets the
    /// stream (the shared connection stays). A no-op once the forwarder serves another connection.
    /// </summary>
    public void AbortUpstream(Http1ServerConnection owner)
    {
        lock (_ownerLock)
        {
            if (ReferenceEquals(_client, owner))
            {
                _active?.Abort();
                Volatile.Read(ref _activeStream)?.ResponseReader.CancelPendingRead();
            }
        }
    }

    /// <summary>
    /// Heartbeat, while the request pump sends a streamed body to an HTTP/1.1 upstream (<see cref="SendingBody"/>): when
    /// the upstream has sent something (bytes, or its close) that nobody reads yet, a watch starts reading it
    /// (<see cref="WatchForEarlyAnswerAsync"/>), once per exchange. Without it, an upstream that answered early and stopped
    /// reading without closing is seen only when body_timeout cuts the stalled write; nginx too reads an upstream whenever
    /// it is readable, while the request is still being sent. One poll() per such connection per second; nothing on the
    /// request path.
    /// </summary>
    public void WatchForEarlyAnswer(Http1ServerConnection owner)
    {
        lock (_ownerLock)
        {
            if (!ReferenceEquals(_client, owner) || !_sendingBody || _earlyWatch is not null || _active is not { } upstream
                || !upstream.HasData())
            {
                return;
            }
            int maxHead = owner.Listener.Limits.MaxHeaderBytes + owner.Listener.Limits.MaxRequestLine;
            // On the thread pool, not inline: the watch may stop the body, and what that wakes must not run on the heartbeat.
            _earlyWatch = Task.Run(() => WatchForEarlyAnswerAsync(upstream, maxHead));
        }
    }

    /// <summary>True while the request pump sends a streamed body upstream (a hint for the heartbeat; see <see cref="_sendingBody"/>).</summary>
    public bool SendingBody => _sendingBody;

    /// <summary>
    /// Reads the upstream while the request body is still being sent, until it holds a final response head (after any
    /// interim ones), the connection ends, or the read is cancelled. Nothing is consumed: the exchange's own head read
    /// finds every byte. A final head found while the body is still being sent stops the body: the pump's pending (or
    /// next) flush is cancelled, so it returns <see cref="PumpResult.DestinationFailed"/>, and the answer is relayed as
    /// an early response (true). An interim head (a 103, an unasked 100) does not: the body goes on. Control plane: runs
    /// only for an upload whose upstream sent something mid-body; never reads alongside the exchange (see <see cref="_earlyWatch"/>).
    /// </summary>
    private async Task<bool> WatchForEarlyAnswerAsync(UpstreamConnection upstream, int maxHead)
    {
        PipeReader input = upstream.Input;
        try
        {
            while (true)
            {
                ReadResult result = await input.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                if (result.IsCanceled)
                {
                    input.AdvanceTo(buffer.Start);
                    input.CancelPendingRead(); // the exchange's deadline, while it waits on this watch: its own read must see it
                    return false;
                }
                if (HoldsFinalHead(buffer, upstream.Response, maxHead))
                {
                    input.AdvanceTo(buffer.Start);
                    bool stop;
                    lock (_ownerLock)
                    {
                        stop = _sendingBody;
                    }
                    if (stop)
                    {
                        upstream.Output.CancelPendingFlush();
                    }
                    return stop;
                }
                if (result.IsCompleted)
                {
                    input.AdvanceTo(buffer.Start);
                    return false;
                }
                input.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (Exception)
        {
            return false; // the connection failed or was cut: the exchange's own read or write sees it
        }
    }

    /// <summary>True when <paramref name="buffer"/> starts with a complete final response head, after any interim ones (or is not a response at all).</summary>
    private static bool HoldsFinalHead(ReadOnlySequence<byte> buffer, ResponseHead response, int maxHead)
    {
        while (true)
        {
            HeadStatus status = Http1ResponseReader.TryRead(buffer, response, maxHead, out SequencePosition consumed, out _);
            if (status == HeadStatus.Rejected)
            {
                return true; // answered 502 rather than sent more body
            }
            if (status != HeadStatus.Complete)
            {
                return false;
            }
            if (response.StatusCode >= 200 || response.StatusCode == 101)
            {
                return true;
            }
            buffer = buffer.Slice(consumed);
        }
    }

    /// <summary>
    /// The body is done (sent, or stopped by the watch) and the watch may still read: the exchange waits for it under the
    /// response head's deadline, as for the head itself (a watch that waits past an interim head is waiting for the
    /// answer). The deadline cancels the watch's read, which passes the cancel on to the head read. True when the watch
    /// stopped the body.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private async ValueTask<bool> WaitForEarlyWatchAsync(UpstreamConnection upstream, UpstreamTimeouts timeouts, RetryModel? retry, long exchangeDeadline)
    {
        Task<bool> watch = _earlyWatch!;
        if (!watch.IsCompleted)
        {
            HeadWait(timeouts.Response, retry, exchangeDeadline, out TimeSpan wait);
            if (wait <= TimeSpan.Zero)
            {
                return await EndEarlyWatchAsync(upstream, abort: true).ConfigureAwait(false);
            }
            if (_earlyResponse && wait > s_earlyResponseWait)
            {
                wait = s_earlyResponseWait;
            }
            _client.ArmUpstream(upstream.Input, wait);
            await watch.ConfigureAwait(false);
            _client.DisarmUpstream();
        }
        return await EndEarlyWatchAsync(upstream, abort: false).ConfigureAwait(false);
    }

    /// <summary>Ends the watch (cutting the connection under it when <paramref name="abort"/>) before the connection is dropped or read.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private async ValueTask<bool> EndEarlyWatchAsync(UpstreamConnection upstream, bool abort)
    {
        Task<bool> watch = _earlyWatch!;
        _earlyWatch = null;
        if (abort)
        {
            upstream.Abort();
        }
        return await watch.ConfigureAwait(false);
    }

    /// <summary>
    /// Sends what the upstream writer holds; false when the upstream stopped taking bytes. A small request head is
    /// usually sent before FlushAsync returns: that case needs no state machine and no write deadline (nothing is left
    /// to wait for), so the deadline is armed only when the flush really waits for the socket.
    /// </summary>
    private ValueTask<bool> FlushUpstreamAsync(UpstreamConnection upstream)
    {
        ValueTask<FlushResult> flush;
        try
        {
            flush = upstream.Output.FlushAsync();
        }
        catch (Exception)
        {
            return new ValueTask<bool>(false);
        }
        if (flush.IsCompletedSuccessfully)
        {
            FlushResult result = flush.Result;
            return new ValueTask<bool>(!result.IsCanceled && !result.IsCompleted);
        }
        return AwaitUpstreamFlushAsync(flush);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> AwaitUpstreamFlushAsync(ValueTask<FlushResult> flush)
    {
        _client.ArmWrite();
        try
        {
            FlushResult result = await flush.ConfigureAwait(false);
            return !result.IsCanceled && !result.IsCompleted;
        }
        catch (Exception)
        {
            return false;
        }
        finally
        {
            _client.DisarmPump();
        }
    }

    /// <summary>
    /// Answers an upstream failure (502/503/504) with one log line. The client connection closes when the
    /// request body may be partly unread; otherwise it stays usable.
    /// </summary>
    private async ValueTask<bool> FailAsync(ProxyError error, ClusterModel cluster, DestinationState? destination)
    {
        ReleaseUpstream();
        if (error == ProxyError.ClientAborted)
        {
            _client.RecordClientAborted(cluster.Name, destination?.Address);
            return false;
        }
        ProxyLog.Warn("upstream_error", ("details", error.DetailsCode()), ("status", error.StatusCode()),
            ("cluster", cluster.Name), ("destination", destination?.Address));
        RequestHead head = _client.Head;
        // A body the request-body phase read whole left nothing unread: the connection may stay.
        bool close = (head.HasBody && _client.BufferedBody is null) || !head.KeepAlive || _client.Draining;
        if (error == ProxyError.UpstreamOverloaded)
        {
            cluster.Metrics?.Overloaded();
        }
        await _client.SendErrorAsync(error.StatusCode(), error.DetailsCode(), close,
            error == ProxyError.UpstreamOverloaded ? OverloadedField : null, GrpcStatus.ForError(error)).ConfigureAwait(false);
        return !close;
    }

    /// <summary>The exchange deadline shortened to the request's grpc-timeout, when it has a valid one.</summary>
    private static long GrpcDeadline(RequestHead head, long exchangeDeadline)
    {
        long timeout = GrpcTimeout.Find(head);
        return timeout < 0 ? exchangeDeadline : Math.Min(exchangeDeadline, Environment.TickCount64 + timeout);
    }

    // ---- heads -----------------------------------------------------------------------------------

    private static bool IsRequestIdField(ReadOnlySpan<byte> name)
        => name.Length == RequestId.FieldName.Length && System.Text.Ascii.EqualsIgnoreCase(name, RequestId.FieldName);

    private void WriteResponseHead(ResponseHead response, BodyFraming outFraming, long contentLength, bool interim, bool keepAlive)
    {
        var writer = new HeadWriter(_client.Output);
        writer.Write("HTTP/1.1 "u8);
        writer.WriteNumber(response.StatusCode);
        writer.Write(" "u8);
        writer.Write(response.Reason);
        writer.Write("\r\n"u8);
        HeaderField[] fields = response.Fields;
        for (int i = 0; i < response.FieldCount; i++)
        {
            // The final response carries the proxy's request id (below); an upstream's echo of it would duplicate it.
            if (!fields[i].HopByHop && (interim || !IsRequestIdField(response.Name(i))))
            {
                writer.WriteField(response.Name(i), response.Value(i));
            }
        }
        if (!interim)
        {
            if (_setCookie is { } setCookie)
            {
                // The one hook of session affinity in the response: appended after the upstream's own fields
                // (several Set-Cookie fields are allowed, RFC 6265 section 3).
                writer.Write(setCookie);
                _setCookie = null;
            }
            _client.ResponseStatus = response.StatusCode;
            writer.Write(_client.FilterFields);
            _client.Telemetry?.UpstreamResponseReceived(_client.Head, response.StatusCode, _respondedAt);
            writer.WriteField(RequestId.FieldName, _client.ReplyRequestId());
            if (outFraming == BodyFraming.Chunked)
            {
                writer.Write("transfer-encoding: chunked\r\n"u8);
            }
            else if (contentLength >= 0 && (outFraming == BodyFraming.ContentLength || response.StatusCode != 204))
            {
                // Also for HEAD and 304: the length describes the representation (RFC 9110 section 8.6).
                writer.WriteContentLength(contentLength);
            }
            writer.Write(_client.ConnectionField(keepAlive));
        }
        writer.Write("\r\n"u8);
        writer.Commit();
    }

    private void WriteUpgradeResponseHead(ResponseHead response)
    {
        _client.ResponseStatus = 101;
        PipeWriter output = _client.Output;
        output.Write("HTTP/1.1 101 "u8);
        output.Write(response.Reason);
        output.Write("\r\n"u8);
        for (int i = 0; i < response.FieldCount; i++)
        {
            if (!response.Fields[i].HopByHop)
            {
                output.WriteField(response.Name(i), response.Value(i));
            }
        }
        output.Write("connection: upgrade\r\n"u8);
        if (response.TryGetHeader("upgrade"u8, out ReadOnlySpan<byte> protocol))
        {
            output.WriteField("upgrade"u8, protocol);
        }
        output.Write("\r\n"u8);
    }

    // ---- tunnel (Upgrade, RFC 9110 section 7.8) ---------------------------------------------------

    private async Task TunnelAsync(UpstreamConnection upstream, ClusterModel cluster)
    {
        WriteUpgradeResponseHead(upstream.Response);
        if (!await _client.FlushClientAsync().ConfigureAwait(false))
        {
            ReleaseUpstream();
            return;
        }
        var activity = new TunnelActivity();
        Volatile.Write(ref _tunnel, activity);
        Task<bool> up = CopyRawAsync(_client.Input, upstream.Output, activity, TunnelSide.Upstream);
        Task<bool> down = CopyRawAsync(upstream.Input, _client.Output, activity, TunnelSide.Client);
        Task<Task<bool>> either = Task.WhenAny(up, down);
        if (await activity.IdledOutAsync(either, cluster.TunnelIdleTimeout).ConfigureAwait(false))
        {
            TunnelIdledOut(cluster);
            upstream.Abort();
            _client.Input.CancelPendingRead();
            _client.Output.CancelPendingFlush();
        }
        else if (await either.ConfigureAwait(false) == down)
        {
            // The upstream closed (or the client stopped taking bytes). Stop reading the client, and take back a write
            // to the upstream that waits (it may wait for ever: nothing reads it any more). Closed by the upstream:
            // the client connection then closes gracefully, so the last bytes relayed to it are not cut by a reset.
            _client.Input.CancelPendingRead();
            upstream.Output.CancelPendingFlush();
            if (!down.Result)
            {
                upstream.Abort();
            }
        }
        else
        {
            // The client closed (or reset, or the upstream stopped taking bytes): cut the upstream, and take back a
            // write to the client that waits on a client that no longer reads.
            upstream.Abort();
            _client.Output.CancelPendingFlush();
        }
        await Task.WhenAll(up, down).ConfigureAwait(false);
        Volatile.Write(ref _tunnel, null);
        ReleaseUpstream();
    }

    /// <summary>One log line for a tunnel closed by <c>tunnel_idle_timeout</c> (its access-log line follows, status 101).</summary>
    private void TunnelIdledOut(ClusterModel cluster)
        => ProxyLog.Info("tunnel_idle_timeout", ("route", _route?.Id ?? ""), ("cluster", cluster.Name),
            ("timeout_ms", (long)cluster.TunnelIdleTimeout.TotalMilliseconds));

    /// <summary>
    /// Copies <paramref name="source"/> to <paramref name="destination"/> until either ends. True when the source ended
    /// (end of stream), false when the destination failed or a read or write was taken back.
    /// </summary>
    private static async Task<bool> CopyRawAsync(PipeReader source, PipeWriter destination, TunnelActivity activity, TunnelSide side)
    {
        try
        {
            while (true)
            {
                ReadResult result = await source.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                if (!buffer.IsEmpty)
                {
                    activity.Touch();
                    destination.Write(buffer);
                }
                source.AdvanceTo(buffer.End);
                FlushResult flush = await FlushTunnelAsync(destination, activity, side).ConfigureAwait(false);
                if (flush.IsCompleted || flush.IsCanceled || result.IsCanceled)
                {
                    return false;
                }
                if (result.IsCompleted)
                {
                    return true;
                }
            }
        }
        catch (Exception)
        {
            return false;
        }
    }
}
