using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Proxy.Diagnostics;
using Proxy.Http;
using Proxy.Http1;
using Proxy.Http2.Client;
using Proxy.Model;
using Proxy.Transport;
using Proxy.Upstream;

namespace Proxy.Forwarding;

/// <summary>
/// The HTTP/2 upstream exchange (cluster <c>protocol: h2 | h2c | auto</c>, docs/http2.md): one stream on a
/// multiplexed connection, the request body pumped concurrently with reading the response (full duplex, which gRPC
/// bidirectional streaming needs), the response relayed to the HTTP/1.1 client with upstream trailers as the chunked
/// trailer section (RFC 9112 section 7.1.2). Timeouts, health reporting and retries follow the HTTP/1.1 path; the
/// hook in <see cref="ForwardLoopAsync"/> maps the outcome.
/// </summary>
internal sealed partial class HttpForwarder
{
    private enum Http2Step : byte
    {
        /// <summary>The client got an answer (relayed, or a local error); <see cref="_http2Outcome"/> says if its connection stays.</summary>
        Answered,
        /// <summary>The try failed before any response: <see cref="_http2Failure"/> and <see cref="_http2Cause"/> go to the retry logic.</summary>
        Failed,
        /// <summary>The request was never processed (GOAWAY, REFUSED_STREAM) and had no body: send it again.</summary>
        Replay,
        /// <summary>An <c>auto</c> destination chose http/1.1: continue on the HTTP/1.1 path.</summary>
        UseHttp1,
        /// <summary>A retryable status (retry.on 5xx, or a trailers-only grpc-status 14 with <c>unavailable</c>) took a retry slot: try again.</summary>
        RetryStatus,
    }

    private FieldLineWriter? _http2Fields;
    private byte[] _http2Authority = new byte[64];
    /// <summary>The rewritten :path of the route's <c>rewrite</c>; grown to the longest seen, then reused.</summary>
    private byte[] _http2Path = [];
    private ChunkedDecoder _http2Chunked;
    private RejectReason _http2Reject;
    private bool _http2Outcome;
    private ProxyError _http2Failure;
    private RetryOn _http2Cause;
    /// <summary>In: the request holds a retry slot; out: it holds one after this try (a status retry may take it).</summary>
    private bool _http2RetrySlot;
    /// <summary>Out: the client's body was read in part (never retried: it cannot be read again) or whole (kept for a retry when within the limit).</summary>
    private bool _http2BodyTouched, _http2BodySent;

    // The current try's arguments, handed from ForwardHttp2Async to Http2LoopAsync.
    private Http2ConnectionPool? _h2Pool;
    private ClusterModel? _h2Cluster;
    private DestinationState? _h2Destination;
    private UpstreamTimeouts _h2Timeouts;
    private long _h2ExchangeDeadline;
    private int _h2Attempt;
    private RequestReplayBuffer? _h2Replay;
    private bool _h2FromReplay;
    private int _h2Retries;
    /// <summary>
    /// While the request body goes up: the tick count (<see cref="Environment.TickCount64"/>) at which the pump last moved
    /// (began waiting for the client's next bytes, or got some and began sending them), and whether it now waits for the
    /// client (else for the upstream: its flow-control window, or the connection's writes). Written by the pump, read by
    /// the head wait on another thread when the body's deadline fires: the flag is written before the tick (release) and
    /// read after it (acquire), so it is at least as new as the tick read; a stale pair only re-arms the wait once more.
    /// </summary>
    private long _http2BodyMoved;
    private bool _http2BodyAwaitsClient;
    /// <summary>
    /// Set by <see cref="StopHttp2PumpAsync"/> before it wakes the pump's read of the client: a cancelled read is then
    /// ours (<see cref="PumpResult.Cancelled"/>); any other is the client's (its HTTP/2 stream was reset), which the pump
    /// reports as <see cref="PumpResult.SourceFailed"/>. Decided by the pump when the read returns, before it resets the
    /// upstream stream, so the answer does not depend on which side sees the end first.
    /// </summary>
    private bool _http2PumpStopping;
    private readonly ReusableValueTaskSource<Http2Step> _http2Result = new();
    private readonly ReusableValueTaskSource<bool> _http2Work = new();
    private Task? _http2Loop;

    /// <summary>
    /// The HTTP/2 stream of the current try, for <see cref="AbortUpstream"/> to wake; null outside a try. Set with a full
    /// fence before the try looks at <see cref="ClientGone"/>, so an abort either finds the stream or is seen by the try.
    /// </summary>
    private Http2ClientStream? _activeStream;

    /// <summary>
    /// One try on an HTTP/2 destination. The work runs in <see cref="Http2LoopAsync"/>, one long-lived loop per
    /// forwarder, for the reason <see cref="ForwardAsync"/> gives: a try is rented on the client's thread and ends on
    /// the upstream connection's read loop thread, so a pooled box per try often missed the pooling builder's
    /// per-thread cache (GC allocation sampling, one warm h2c connection: about 14 B per request from that box; none
    /// with this loop).
    /// </summary>
    private ValueTask<Http2Step> ForwardHttp2Async(Http2ConnectionPool pool, ClusterModel cluster, DestinationState destination,
        UpstreamTimeouts timeouts, long exchangeDeadline, int attempt, RequestReplayBuffer? replay, bool fromReplay, int retries)
    {
        _h2Pool = pool;
        _h2Cluster = cluster;
        _h2Destination = destination;
        _h2Timeouts = timeouts;
        _h2ExchangeDeadline = exchangeDeadline;
        _h2Attempt = attempt;
        _h2Replay = replay;
        _h2FromReplay = fromReplay;
        _h2Retries = retries;
        _http2Result.Reset();
        if (_http2Loop is null)
        {
            _http2Loop = Http2LoopAsync();
        }
        else
        {
            _http2Work.SetResult(true);
        }
        return _http2Result.Task;
    }

    /// <summary>One iteration per try (see <see cref="ForwardHttp2Async"/>); never ends while the forwarder lives.</summary>
    private async Task Http2LoopAsync()
    {
        while (true)
        {
            Http2ConnectionPool pool = _h2Pool!;
            ClusterModel cluster = _h2Cluster!;
            DestinationState destination = _h2Destination!;
            UpstreamTimeouts timeouts = _h2Timeouts;
            long exchangeDeadline = _h2ExchangeDeadline;
            int attempt = _h2Attempt;
            RequestReplayBuffer? replay = _h2Replay;
            bool fromReplay = _h2FromReplay;
            int retries = _h2Retries;
            _h2Pool = null;
            _h2Cluster = null;
            _h2Destination = null;
            _h2Replay = null;
            Http2Step step = Http2Step.Failed;
            Exception? loopError = null;
            try
            {
                ClusterHealth health = cluster.Health;
                _http2BodyTouched = _http2BodySent = _http2PumpStopping = false;
                _http2Failure = ProxyError.None;
                _http2Cause = RetryOn.None;
                _http2Outcome = false;
                var (stream, error) = await pool.RentStreamAsync(cluster.Breaker).ConfigureAwait(false);
                if (stream is null)
                {
                    if (error == ConnectError.None)
                    {
                        step = Http2Step.UseHttp1;
                        goto Done;
                    }
                    _http2Failure = ConnectFailure(error);
                    if (error is ConnectError.Refused or ConnectError.Timeout)
                    {
                        _http2Cause = RetryOn.ConnectFailure;
                        health.ReportFailure(destination);
                    }
                    step = Http2Step.Failed;
                    goto Done;
                }

                Interlocked.Exchange(ref _activeStream, stream);
                Http2ClientConnection connection = stream.Connection;
                RequestHead head = _client.Head;
                bool hasBody = head.HasBody;
                // An HTTP/1.1 WebSocket upgrade goes up as an extended CONNECT (RFC 8441), when the upstream allows it.
                bool webSocket = IsWebSocketUpgrade(head);
                bool pumping = false;
                ValueTask<PumpResult> pump = default;
                try
                {
                    // ---- request head: the shared field lines, re-encoded as an HTTP/2 field block
                    FieldLineWriter fields = _http2Fields ??= new FieldLineWriter();
                    fields.Reset();
                    UpstreamRequestWriter.WriteFields(fields, head, _client.Listener.Forwarded, _client.RemoteAddress, destination,
                        _client.Telemetry, _client.Transport, _client.Listener.Tls?.ForwardHeader, _client.FilterContext);
                    int authorityLength = CopyAuthority(head, destination);
                    int pathLength = CopyRewrittenPath(head);
                    // RFC 9113 section 8.2.2: "te" may only say "trailers"; gRPC servers want it to know trailers are understood.
                    bool teTrailers = WantsTrailers(head);

                    if (hasBody && !fromReplay && !await _client.SendContinueIfExpectedAsync().ConfigureAwait(false))
                    {
                        step = Http2Step.Answered;
                        goto Done;
                    }
                    if (webSocket && !await ExtendedConnectAllowedAsync(connection, cluster, destination, timeouts).ConfigureAwait(false))
                    {
                        step = Http2Step.Answered;
                        goto Done;
                    }
                    if (!await connection.SendHeadersAsync(stream, head, destination.Secure, _http2Authority, authorityLength,
                        fields.Buffer, fields.Length, endStream: !hasBody && !webSocket, teTrailers, webSocket ? s_webSocketProtocol : null,
                        pathLength < 0 ? null : _http2Path, pathLength).ConfigureAwait(false))
                    {
                        // Refused, or the connection died under the HEADERS (nothing of the body was read yet).
                        if ((stream.Refused && attempt < 3) || MayReplayLost(stream, head, attempt))
                        {
                            step = Http2Step.Replay;
                            goto Done;
                        }
                        // Reported to health by the forward loop, which reports every failed request write of both
                        // paths once (reporting it here too counted one failed try twice).
                        _http2Failure = ProxyError.UpstreamRequestWriteFailed;
                        _http2Cause = RetryOn.Reset;
                        step = Http2Step.Failed;
                        goto Done;
                    }
                    if (hasBody)
                    {
                        // Full duplex: the body goes up while the response is read (gRPC streams answer before the request ends).
                        Http2BodyMoved(awaitsClient: false);
                        pump = PumpHttp2RequestAsync(stream, replay, fromReplay);
                        pumping = true;
                        _http2BodyTouched = !fromReplay;
                    }

                    // ---- response head
                    // As on the HTTP/1.1 path (and as nginx's proxy_read_timeout and Envoy's route timeout measure), the
                    // response timeouts start once the whole request is sent. Until then (bodyGoing) the wait is the body's:
                    // each gap within body_timeout, all of it within request_timeout, judged by Http2BodyWaitRanOut when the
                    // deadline fires; the pump wakes this read when it has sent END_STREAM (Http2BodySent). The head is read
                    // all along: an upstream may answer before the request ends.
                    PipeReader reader = stream.ResponseReader;
                    ProxyError failure = ProxyError.None;
                    bool clientGone = false;
                    bool bodyGoing = pumping && !stream.EndSent;
                    // The failure happened while the body went up and is not the upstream's: no health report, no retry.
                    bool notUpstreams = false;
                    ProxyError headTimeout = ArmHttp2HeadWait(reader, bodyGoing, timeouts, cluster.Retry, exchangeDeadline, out TimeSpan wait);
                    if (wait <= TimeSpan.Zero)
                    {
                        failure = ProxyError.UpstreamRequestTimeout;
                        notUpstreams = bodyGoing;
                    }
                    else
                    {
                        while (!stream.HeadReady)
                        {
                            if (ClientGone)
                            {
                                // Aborted (the client closed, reset its stream, or shutdown's deadline passed): the
                                // abort woke this read, or came before it.
                                clientGone = true;
                                break;
                            }
                            ReadResult result;
                            try
                            {
                                result = await reader.ReadAsync().ConfigureAwait(false);
                            }
                            catch (Exception)
                            {
                                failure = ProxyError.UpstreamReset;
                                break;
                            }
                            reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                            // 1xx heads go out as they come (103 Early Hints is worth sending before the final head exists).
                            if (stream.HasInterim)
                            {
                                if (!await RelayInterimAsync(stream).ConfigureAwait(false))
                                {
                                    clientGone = true;
                                    break;
                                }
                                // The client flush used (and cleared) the connection's one deadline: the wait for the final
                                // head starts again, as on the HTTP/1.1 path, within the exchange's deadline.
                                bodyGoing &= !stream.EndSent;
                                headTimeout = ArmHttp2HeadWait(reader, bodyGoing, timeouts, cluster.Retry, exchangeDeadline, out wait);
                                if (wait <= TimeSpan.Zero)
                                {
                                    failure = ProxyError.UpstreamRequestTimeout;
                                    notUpstreams = bodyGoing;
                                    break;
                                }
                            }
                            if (stream.HeadReady)
                            {
                                break;
                            }
                            if (result.IsCanceled)
                            {
                                bool fired = _client.TakeFiredTimeout() != TimeoutKind.None;
                                if (bodyGoing && stream.EndSent)
                                {
                                    // The whole request is sent (the pump woke this read, or the body's deadline fired just
                                    // after): the upstream's time starts now.
                                    bodyGoing = false;
                                    headTimeout = ArmHttp2HeadWait(reader, bodyGoing, timeouts, cluster.Retry, exchangeDeadline, out wait);
                                    if (wait <= TimeSpan.Zero)
                                    {
                                        failure = ProxyError.UpstreamRequestTimeout;
                                        break;
                                    }
                                    continue;
                                }
                                if (!fired)
                                {
                                    continue;
                                }
                                if (!bodyGoing)
                                {
                                    failure = headTimeout;
                                    connection.OnStreamTimedOut(wait);
                                    break;
                                }
                                failure = Http2BodyWaitRanOut(out notUpstreams);
                                if (failure != ProxyError.None)
                                {
                                    break;
                                }
                                // The body moved since the deadline was armed: wait for what is left of its gap.
                                ArmHttp2HeadWait(reader, bodyGoing, timeouts, cluster.Retry, exchangeDeadline, out wait);
                                if (wait <= TimeSpan.Zero)
                                {
                                    failure = ProxyError.UpstreamRequestTimeout;
                                    notUpstreams = true;
                                    break;
                                }
                                continue;
                            }
                            if (result.IsCompleted)
                            {
                                failure = ProxyError.UpstreamReset;
                                break;
                            }
                        }
                        _client.DisarmUpstream();
                        _client.TakeFiredTimeout();
                        // Interim heads that came with the final one (the read loop keeps them in order, before HeadReady).
                        clientGone |= failure == ProxyError.None && stream.HasInterim && !await RelayInterimAsync(stream).ConfigureAwait(false);
                    }

                    if (clientGone)
                    {
                        // The client left while the upstream worked, or while we relayed a 1xx: nobody to answer, and not
                        // the upstream's failure (no health report, no retry). The release below resets the stream, so
                        // the upstream stops working for nobody; the exchange is recorded as 499 client_aborted.
                        _client.Abort();
                        _http2Failure = ProxyError.ClientAborted;
                        step = Http2Step.Failed;
                        goto Done;
                    }
                    if (failure != ProxyError.None)
                    {
                        if (pumping)
                        {
                            pumping = false;
                            bool pumpEnded = pump.IsCompleted;
                            PumpResult sent = await StopHttp2PumpAsync(stream, pump).ConfigureAwait(false);
                            _http2BodySent = pumpEnded && sent == PumpResult.Completed;
                            // The client broke its own request: the pump reset the upstream stream, and the head wait may
                            // have seen that reset before the pump returned (so pump.IsCompleted says nothing here). Never
                            // the upstream's failure: no health report, no retry. A Cancelled result is our own stop.
                            if (sent is PumpResult.TooLarge or PumpResult.SourceInvalid)
                            {
                                await _client.SendErrorAsync(_http2Reject.StatusCode(), _http2Reject.DetailsCode(), close: true).ConfigureAwait(false);
                                step = Http2Step.Answered;
                                goto Done;
                            }
                            if (sent == PumpResult.SourceFailed)
                            {
                                step = Http2Step.Answered; // nobody to answer (the client cut its connection or its stream)
                                goto Done;
                            }
                        }
                        if (notUpstreams)
                        {
                            // While the body went up: the client's gap ran past body_timeout (408, as the HTTP/1.1 path
                            // answers), or the exchange's deadline passed (504 upstream_request_timeout, through the
                            // forward loop, which closes: the body is unread). Either way the client's slowness.
                            if (failure == ProxyError.RequestBodyFailed)
                            {
                                await _client.SendErrorAsync(408, RejectReason.BodyTimeout.DetailsCode(), close: true).ConfigureAwait(false);
                                step = Http2Step.Answered;
                                goto Done;
                            }
                            _http2Failure = failure;
                            step = Http2Step.Failed;
                            goto Done;
                        }
                        if (failure == ProxyError.UpstreamRequestWriteFailed)
                        {
                            // The upstream took none of the body for body_timeout (its flow-control window stayed shut): a
                            // send to a peer that stops reading, answered 502 and reported by the forward loop, as a failed
                            // request write is on both paths.
                            _http2Failure = failure;
                            step = Http2Step.Failed;
                            goto Done;
                        }
                        if (stream.Refused && !hasBody && attempt < 3)
                        {
                            step = Http2Step.Replay;
                            goto Done;
                        }
                        if (!hasBody && MayReplayLost(stream, head, attempt))
                        {
                            step = Http2Step.Replay;
                            goto Done;
                        }
                        if (!ClientGone)
                        {
                            // As on the HTTP/1.1 path: a failure after the client left may be our own cut (the forward
                            // loop answers it as client_aborted), never counted against the upstream.
                            health.ReportFailure(destination);
                        }
                        _http2Failure = failure;
                        _http2Cause = failure switch
                        {
                            ProxyError.UpstreamReset => RetryOn.Reset,
                            ProxyError.UpstreamPerTryTimeout => RetryOn.PerTryTimeout,
                            _ => RetryOn.None,
                        };
                        step = Http2Step.Failed;
                        goto Done;
                    }

                    // ---- final response
                    if (ArrivedShorterOrLongerThanDeclared(stream, head))
                    {
                        // RFC 9113 section 8.1.1: malformed. Nothing of it went to the client yet, so it gets a 502, as
                        // for a broken chunked body on HTTP/1.1, rather than a cut connection.
                        health.ReportFailure(destination);
                        ProxyLog.Warn("upstream_body_failed", ("cluster", cluster.Name), ("destination", destination.Address),
                            ("result", "h2"), ("reason", "content_length_mismatch"), ("h2_error", stream.ResetCode.ToString()));
                        _http2Failure = ProxyError.UpstreamInvalidBody;
                        _http2Cause = RetryOn.None;
                        step = Http2Step.Failed;
                        goto Done;
                    }
                    int code = stream.Head.StatusCode;
                    if (code >= 500)
                    {
                        health.ReportFailure(destination);
                    }
                    else
                    {
                        health.ReportSuccess(destination);
                    }
                    if (webSocket && code is >= 200 and < 300)
                    {
                        // RFC 8441 section 5: a 2xx accepts the extended CONNECT; the client gets its RFC 6455 101, then the tunnel.
                        EndRetry(cluster.RetryBudget, ref _http2RetrySlot);
                        UpstreamResponded(cluster);
                        _http2Outcome = await TunnelHttp2Async(stream, cluster).ConfigureAwait(false);
                        step = Http2Step.Answered;
                        goto Done;
                    }
                    if (retries >= 0 && cluster.RetryBudget is { } budget && IsRetryableAnswer(budget.Model, stream.Head))
                    {
                        // Only a request whose whole body went up (and was kept) can go again. A pump still reading the client
                        // is not waited for; one that has written END_STREAM is only finishing its last flush (an upstream that
                        // reads the whole call before it answers, as a gRPC server turning a call away does, answers right
                        // then, often before the pump's continuation has run): that one is awaited, never cancelled.
                        bool endSent = stream.EndSent;
                        bool bodyDone = !pumping || pump.IsCompleted || endSent;
                        if (pumping && bodyDone)
                        {
                            pumping = false;
                            PumpResult sent = endSent ? await pump.ConfigureAwait(false) : await StopHttp2PumpAsync(stream, pump).ConfigureAwait(false);
                            _http2BodySent = sent == PumpResult.Completed;
                            bodyDone = _http2BodySent && replay is not { IsOverLimit: true };
                        }
                        bool slot = _http2RetrySlot;
                        if (bodyDone && TryTakeRetry(budget, retries, ref slot))
                        {
                            _http2RetrySlot = slot;
                            step = Http2Step.RetryStatus; // the stream is reset by the release below, its body unread
                            goto Done;
                        }
                    }
                    if (cluster.Affinity is { } pinning && !ReferenceEquals(_affinityPinned, destination))
                    {
                        _setCookie = pinning.SetCookieFor(destination);
                    }
                    _http2Outcome = await RelayHttp2ResponseAsync(cluster, destination, stream, teTrailers).ConfigureAwait(false);
                    if (pumping)
                    {
                        pumping = false;
                        bool finished = pump.IsCompleted;
                        PumpResult sent = await StopHttp2PumpAsync(stream, pump).ConfigureAwait(false);
                        // The upstream answered before the request ended (RFC 9113 section 8.1): the rest of the client's body is unread.
                        _http2Outcome &= finished && sent == PumpResult.Completed;
                    }
                    step = Http2Step.Answered;
                    goto Done;
                }
                finally
                {
                    if (pumping)
                    {
                        await StopHttp2PumpAsync(stream, pump).ConfigureAwait(false);
                    }
                    Volatile.Write(ref _activeStream, null);
                    await connection.ReleaseAsync(stream).ConfigureAwait(false);
                }
            }
            catch (Exception e)
            {
                loopError = e;
            }
        Done:
            // Reset before publishing: publishing may run the forward loop inline up to its next ForwardHttp2Async call.
            _http2Work.Reset();
            if (loopError is null)
            {
                _http2Result.SetResult(step);
            }
            else
            {
                _http2Result.SetException(loopError);
            }
            await _http2Work.Task.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Arms the client connection's one deadline for the wait on <paramref name="reader"/> (the response head). While
    /// the request body still goes up (<paramref name="bodyGoing"/>), for what is left of <c>limits.body_timeout</c> since
    /// the pump last moved, clamped to the exchange's deadline; its expiry is judged by <see cref="Http2BodyWaitRanOut"/>
    /// (the return value means nothing then). After, <see cref="HeadWait"/>'s wait, and the error its expiry answers.
    /// <paramref name="wait"/> is zero or less when the exchange's deadline has passed.
    /// </summary>
    private ProxyError ArmHttp2HeadWait(PipeReader reader, bool bodyGoing, UpstreamTimeouts timeouts, RetryModel? retry,
        long exchangeDeadline, out TimeSpan wait)
    {
        ProxyError error;
        if (bodyGoing)
        {
            error = ProxyError.UpstreamRequestTimeout;
            long now = Environment.TickCount64;
            long left = TimedConnection.Milliseconds(_client.Listener.Limits.BodyTimeout) - (now - Volatile.Read(ref _http2BodyMoved));
            if (exchangeDeadline != long.MaxValue)
            {
                left = Math.Min(left, exchangeDeadline - now);
            }
            // At least a millisecond while the exchange lasts: a gap that just ran out is judged when this fires.
            wait = TimeSpan.FromMilliseconds(exchangeDeadline - now <= 0 ? 0 : Math.Max(left, 1));
        }
        else
        {
            error = HeadWait(timeouts.Response, retry, exchangeDeadline, out wait);
        }
        if (wait > TimeSpan.Zero)
        {
            _client.ArmUpstream(reader, wait);
        }
        return error;
    }

    /// <summary>
    /// The body's deadline fired while the request body went up: <see cref="ProxyError.None"/> when the body moved since
    /// (the wait goes on); <see cref="ProxyError.UpstreamRequestTimeout"/> when the exchange's deadline has passed, and
    /// <see cref="ProxyError.RequestBodyFailed"/> (answered 408 body_timeout) when the client sent nothing for
    /// body_timeout, both the client's slowness (<paramref name="notUpstreams"/>); and
    /// <see cref="ProxyError.UpstreamRequestWriteFailed"/> when the upstream took nothing for body_timeout.
    /// </summary>
    private ProxyError Http2BodyWaitRanOut(out bool notUpstreams)
    {
        notUpstreams = true;
        if (_client.ExchangeDeadlinePassed)
        {
            return ProxyError.UpstreamRequestTimeout;
        }
        long idle = Environment.TickCount64 - Volatile.Read(ref _http2BodyMoved);
        if (idle < TimedConnection.Milliseconds(_client.Listener.Limits.BodyTimeout))
        {
            return ProxyError.None;
        }
        if (Volatile.Read(ref _http2BodyAwaitsClient))
        {
            return ProxyError.RequestBodyFailed;
        }
        notUpstreams = false;
        return ProxyError.UpstreamRequestWriteFailed;
    }

    /// <summary>The request pump moved (see <see cref="_http2BodyMoved"/>): two field writes per read of the client.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Http2BodyMoved(bool awaitsClient)
    {
        _http2BodyAwaitsClient = awaitsClient;
        Volatile.Write(ref _http2BodyMoved, Environment.TickCount64);
    }

    /// <summary>
    /// The request body is all sent (END_STREAM): wakes the head wait, which then starts the response timeouts. Once per
    /// request with a body; a wake that finds the head already there is a cancelled read that the relay skips.
    /// </summary>
    private static void Http2BodySent(Http2ClientStream stream)
    {
        if (!stream.HeadReady)
        {
            stream.ResponseReader.CancelPendingRead();
        }
    }

    /// <summary>
    /// Relays the 1xx interim heads the stream holds (RFC 9110 section 15.2) the way the HTTP/1.1 path does: to an
    /// HTTP/1.1 client (an HTTP/2 client's bridge turns each into a HEADERS frame without END_STREAM), dropped for
    /// HTTP/1.0. False when the client is gone. Not on the common path: only called when a 1xx arrived.
    /// </summary>
    private ValueTask<bool> RelayInterimAsync(Http2ClientStream stream)
    {
        bool http11 = _client.Head.Version == Http.HttpVersion.Http11;
        if (!stream.TakeInterim(http11 ? _client.Output : null))
        {
            return ValueTask.FromResult(true);
        }
        return _client.FlushClientAsync();
    }

    /// <summary>
    /// The whole response is here (END_STREAM, no trailers) and its DATA add up to other than its content-length
    /// (RFC 9113 section 8.1.1). HEAD, 204 and 304 carry no content whatever the field says.
    /// </summary>
    private static bool ArrivedShorterOrLongerThanDeclared(Http2ClientStream stream, RequestHead request)
    {
        ResponseHead response = stream.Head;
        long length = response.ContentLength;
        if (length < 0 || !stream.EndReceived || stream.HasTrailers || request.Method == Http.HttpMethod.Head
            || response.StatusCode is 204 or 304 || !stream.ResponseReader.TryRead(out ReadResult ready))
        {
            return false;
        }
        stream.ResponseReader.AdvanceTo(ready.Buffer.Start);
        return ready.IsCompleted && ready.Buffer.Length != length;
    }

    /// <summary>
    /// The connection died before this stream saw a response byte (the peer closed it, perhaps just after answering the
    /// previous request, or its framing broke on another stream): an idempotent request goes once more, on another
    /// connection, as it does after a dead pooled HTTP/1.1 connection (RFC 9110 section 9.2.2).
    /// </summary>
    private static bool MayReplayLost(Http2ClientStream stream, RequestHead head, int attempt)
        => stream.ConnectionLost && attempt == 0 && IsIdempotent(head.Method);

    /// <summary>RFC 9110 section 9.2.2 (CONNECT is not: it opens a tunnel).</summary>
    private static bool IsIdempotent(Http.HttpMethod method) => method is Http.HttpMethod.Get or Http.HttpMethod.Head
        or Http.HttpMethod.Options or Http.HttpMethod.Trace or Http.HttpMethod.Put or Http.HttpMethod.Delete;

    /// <summary>retry.on: a retryable 5xx, or (gRPC, <c>unavailable</c>) a trailers-only grpc-status 14, as on the HTTP/1.1 path.</summary>
    private bool IsRetryableAnswer(RetryModel model, ResponseHead response)
        => response.StatusCode >= 500 ? model.RetriesStatus(response.StatusCode)
            : _client.IsGrpc && (model.On & RetryOn.Unavailable) != 0 && GrpcStatus.IsUnavailable(response);

    /// <summary>Ends a request pump that may still run: the stream is reset and the client read woken, then the pump is awaited (once).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<PumpResult> StopHttp2PumpAsync(Http2ClientStream stream, ValueTask<PumpResult> pump)
    {
        if (!pump.IsCompleted)
        {
            Volatile.Write(ref _http2PumpStopping, true);
            await stream.Connection.CancelAsync(stream).ConfigureAwait(false);
            _client.Input.CancelPendingRead();
        }
        return await pump.ConfigureAwait(false);
    }

    /// <summary>
    /// Copies the client's request body (Content-Length or chunked, RFC 9112 section 6) into DATA frames. The send
    /// windows pace it: nothing is read from the client while the upstream's window is closed. The chunked trailer
    /// section is not kept by <see cref="ChunkedDecoder"/>, so the last DATA frame carries END_STREAM.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<PumpResult> PumpHttp2RequestAsync(Http2ClientStream stream, RequestReplayBuffer? replay, bool fromReplay)
    {
        if (fromReplay)
        {
            PumpResult replayed = await SendReplayAsync(stream, replay!, _client).ConfigureAwait(false);
            if (replayed == PumpResult.Completed)
            {
                Http2BodySent(stream);
            }
            return replayed;
        }
        RequestHead head = _client.Head;
        PipeReader source = _client.Input;
        Http2ClientConnection connection = stream.Connection;
        bool chunked = head.Chunked;
        long remaining = head.ContentLength;
        long maxBytes = _client.Listener.Limits.MaxBodyBytes;
        long total = 0;
        _http2Reject = RejectReason.None;
        if (chunked)
        {
            _http2Chunked.Reset();
        }
        while (true)
        {
            ReadResult result;
            Http2BodyMoved(awaitsClient: true);
            try
            {
                result = await source.ReadAsync().ConfigureAwait(false);
            }
            catch (Exception)
            {
                await connection.CancelAsync(stream).ConfigureAwait(false);
                return PumpResult.SourceFailed;
            }
            Http2BodyMoved(awaitsClient: false);
            ReadOnlySequence<byte> buffer = result.Buffer;
            if (result.IsCanceled)
            {
                // Ours (StopHttp2PumpAsync), or the client's stream reset: decided before the upstream stream is reset,
                // which the head wait may see (and act on) before this returns.
                PumpResult cancelled = Volatile.Read(ref _http2PumpStopping) ? PumpResult.Cancelled : PumpResult.SourceFailed;
                source.AdvanceTo(buffer.Start);
                await connection.CancelAsync(stream).ConfigureAwait(false);
                return cancelled;
            }
            SequencePosition consumed = buffer.Start;
            bool done = false;
            if (!chunked)
            {
                long take = Math.Min(remaining, buffer.Length);
                ReadOnlySequence<byte> slice = buffer.Slice(0, take);
                replay?.Append(slice);
                _client.RequestPump.Count(take);
                remaining -= take;
                done = remaining == 0;
                if ((take > 0 || done) && !await connection.SendDataAsync(stream, slice, done).ConfigureAwait(false))
                {
                    source.AdvanceTo(buffer.Start);
                    return PumpResult.DestinationFailed;
                }
                consumed = slice.End;
            }
            else
            {
                ReadOnlySequence<byte> rest = buffer;
                while (true)
                {
                    ChunkStatus status = _http2Chunked.Read(rest, out ReadOnlySequence<byte> data, out SequencePosition at, out RejectReason reason);
                    if (status == ChunkStatus.Error)
                    {
                        source.AdvanceTo(at, buffer.End);
                        _http2Reject = reason;
                        await connection.CancelAsync(stream).ConfigureAwait(false);
                        return PumpResult.SourceInvalid;
                    }
                    if (status == ChunkStatus.Data)
                    {
                        total += data.Length;
                        if (total > maxBytes)
                        {
                            source.AdvanceTo(at);
                            _http2Reject = RejectReason.BodyTooLarge;
                            await connection.CancelAsync(stream).ConfigureAwait(false);
                            return PumpResult.TooLarge;
                        }
                        replay?.Append(data);
                        _client.RequestPump.Count(data.Length);
                        if (!await connection.SendDataAsync(stream, data, endStream: false).ConfigureAwait(false))
                        {
                            source.AdvanceTo(consumed, buffer.End);
                            return PumpResult.DestinationFailed;
                        }
                    }
                    consumed = at;
                    rest = buffer.Slice(at);
                    if (status == ChunkStatus.Done)
                    {
                        done = true;
                        // The client's trailer section (if any) ends the stream as a trailing HEADERS frame (RFC 9113 section 8.1).
                        if (_http2Chunked.HasTrailers)
                        {
                            replay?.SetTrailers(_http2Chunked.TrailerSection);
                            KeepRequestTrailers(stream, _http2Chunked.TrailerSection, _client);
                            _http2Chunked.ReleaseTrailers();
                        }
                        if (!await EndRequestAsync(stream).ConfigureAwait(false))
                        {
                            source.AdvanceTo(consumed);
                            return PumpResult.DestinationFailed;
                        }
                        break;
                    }
                    if (status == ChunkStatus.NeedMore)
                    {
                        break;
                    }
                }
            }
            if (done)
            {
                source.AdvanceTo(consumed);
                Http2BodySent(stream);
                return PumpResult.Completed;
            }
            source.AdvanceTo(consumed, buffer.End);
            if (result.IsCompleted)
            {
                await connection.CancelAsync(stream).ConfigureAwait(false);
                return PumpResult.SourceFailed;
            }
        }
    }

    /// <summary>Copies a trailer section into the stream's reusable buffer, so it outlives the decoder's pooled one.</summary>
    /// <summary>Copies the trailer lines that go upstream (<paramref name="owned"/>: the connection's request filter).</summary>
    private static void KeepRequestTrailers(Http2ClientStream stream, ReadOnlySpan<byte> section, ITrailerFieldFilter owned)
    {
        if (stream.RequestTrailers.Length < section.Length)
        {
            stream.RequestTrailers = new byte[Math.Max(section.Length, 256)];
        }
        int length = 0;
        var fields = new TrailerFields(section, owned);
        while (fields.MoveNext(out _, out _, out ReadOnlySpan<byte> line))
        {
            line.CopyTo(stream.RequestTrailers.AsSpan(length));
            length += line.Length;
        }
        stream.RequestTrailersLength = length;
    }

    /// <summary>Ends the request: trailing HEADERS when trailers were kept, else an empty DATA frame with END_STREAM.</summary>
    private static ValueTask<bool> EndRequestAsync(Http2ClientStream stream)
    {
        if (stream.RequestTrailersLength > 0)
        {
            return stream.Connection.SendTrailersAsync(stream); // clears RequestTrailersLength once encoded
        }
        return stream.Connection.SendDataAsync(stream, ReadOnlySequence<byte>.Empty, endStream: true);
    }

    /// <summary>A retry: the client's body went to an earlier try; send the kept copy (and its trailers) instead.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<PumpResult> SendReplayAsync(Http2ClientStream stream, RequestReplayBuffer replay, ITrailerFieldFilter owned)
    {
        for (int i = 0; i < replay.SegmentCount; i++)
        {
            if (!await stream.Connection.SendDataAsync(stream, new ReadOnlySequence<byte>(replay.GetSegment(i)), endStream: false).ConfigureAwait(false))
            {
                return PumpResult.DestinationFailed;
            }
        }
        if (!replay.TrailerSection.IsEmpty)
        {
            KeepRequestTrailers(stream, replay.TrailerSection, owned);
        }
        return await EndRequestAsync(stream).ConfigureAwait(false) ? PumpResult.Completed : PumpResult.DestinationFailed;
    }

    /// <summary>
    /// Relays the final response: head through the shared head writer, then the body as it arrives, returning the
    /// stream window as the client takes the bytes. Framing (RFC 9112 section 6.3): Content-Length when the upstream
    /// gave one and the client did not ask for trailers (or the whole response is already here), otherwise chunked so
    /// trailers can follow the body. A reset or lost connection mid-body cuts the client connection, as on HTTP/1.1.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> RelayHttp2ResponseAsync(ClusterModel cluster, DestinationState destination, Http2ClientStream stream, bool teTrailers)
    {
        RequestHead request = _client.Head;
        ResponseHead response = stream.Head;
        PipeReader reader = stream.ResponseReader;
        SetReasonPhrase(response);
        int code = response.StatusCode;
        bool http11Client = request.Version == Http.HttpVersion.Http11;

        BodyFraming outFraming;
        long length = response.ContentLength;
        if (request.Method == Http.HttpMethod.Head || code is 204 or 304)
        {
            outFraming = BodyFraming.None;
        }
        else if (stream.EndReceived && !stream.HasTrailers && reader.TryRead(out ReadResult ready))
        {
            // Everything is here (a trailers-only gRPC answer, a small body): say how long it is.
            long arrived = ready.IsCompleted ? ready.Buffer.Length : -1;
            reader.AdvanceTo(ready.Buffer.Start);
            if (length >= 0 && arrived >= 0 && arrived != length)
            {
                // DATA that disagree with the content-length (RFC 9113 section 8.1.1). ArrivedShorterOrLongerThanDeclared
                // answers that 502 when END_STREAM is in by the time the head is looked at; this one ended after that
                // look (the upstream's read loop runs on its own), so the head is not relayed at all: never a 200 for a
                // body other than the one declared.
                return AbortHttp2Relay(cluster, destination, stream, "content_length_mismatch");
            }
            length = arrived;
            outFraming = length >= 0 ? BodyFraming.ContentLength : http11Client ? BodyFraming.Chunked : BodyFraming.CloseDelimited;
        }
        else if (length >= 0 && !teTrailers)
        {
            outFraming = BodyFraming.ContentLength;
        }
        else
        {
            outFraming = http11Client ? BodyFraming.Chunked : BodyFraming.CloseDelimited;
        }
        bool keepAlive = request.KeepAlive && !_client.Draining && outFraming != BodyFraming.CloseDelimited;

        UpstreamResponded(cluster);
        _client.RunResponseHeadersFilters(response, _respondedAt);
        WriteResponseHead(response, outFraming, length, interim: false, keepAlive);
        if (outFraming == BodyFraming.None || (outFraming == BodyFraming.ContentLength && length == 0))
        {
            return await _client.FlushAnswerAsync(closing: !keepAlive).ConfigureAwait(false) && keepAlive;
        }
        // The head goes now: a streaming response may hold its first body bytes for long.
        if (!await _client.FlushClientAsync().ConfigureAwait(false))
        {
            _client.Abort();
            return false;
        }

        PipeWriter output = _client.Output;
        long remaining = length;
        _client.SetUpstreamTimeout(_route!.Timeouts.Over(cluster.Timeouts).StreamIdle);
        while (true)
        {
            _client.ArmRead(reader);
            // The clock, not the configured idle timeout: the deadline that fires may be another one (request_timeout).
            long armed = Stopwatch.GetTimestamp();
            ReadResult result;
            try
            {
                result = await reader.ReadAsync().ConfigureAwait(false);
            }
            catch (Exception)
            {
                _client.DisarmPump();
                return AbortHttp2Relay(cluster, destination, stream, "source_failed");
            }
            _client.DisarmPump();
            ReadOnlySequence<byte> buffer = result.Buffer;
            if (result.IsCanceled && buffer.IsEmpty)
            {
                reader.AdvanceTo(buffer.Start);
                if (_client.TakeFiredTimeout() != TimeoutKind.None)
                {
                    stream.Connection.OnStreamTimedOut(Stopwatch.GetElapsedTime(armed));
                    return AbortHttp2Relay(cluster, destination, stream, "stream_idle_timeout");
                }
                if (ClientGone)
                {
                    return false; // the client left mid-body (AbortUpstream woke us): the release resets the stream
                }
                continue;
            }
            long received = buffer.Length;
            if (received > 0)
            {
                _client.ResponsePump.Count(received);
                if (outFraming == BodyFraming.ContentLength)
                {
                    if (received > remaining)
                    {
                        reader.AdvanceTo(buffer.End);
                        return AbortHttp2Relay(cluster, destination, stream, "content_length_mismatch");
                    }
                    remaining -= received;
                    output.Write(buffer);
                }
                else if (outFraming == BodyFraming.Chunked)
                {
                    output.WriteChunkHeader(received);
                    output.Write(buffer);
                    output.Write("\r\n"u8);
                }
                else
                {
                    output.Write(buffer);
                }
            }
            reader.AdvanceTo(buffer.End);
            bool end = result.IsCompleted;
            if (end)
            {
                if (stream.Aborted || (outFraming == BodyFraming.ContentLength && remaining != 0))
                {
                    return AbortHttp2Relay(cluster, destination, stream, stream.Aborted ? "upstream_reset" : "content_length_mismatch");
                }
                if (outFraming == BodyFraming.Chunked)
                {
                    // RFC 9112 section 7.1.2: the upstream's trailers become the trailer section of the last chunk.
                    output.Write("0\r\n"u8);
                    ResponseHead trailers = stream.Trailers;
                    for (int i = 0; i < trailers.FieldCount; i++)
                    {
                        if (!trailers.Fields[i].HopByHop)
                        {
                            output.WriteField(trailers.Name(i), trailers.Value(i));
                        }
                    }
                    output.Write("\r\n"u8);
                }
            }
            if (!await (end ? _client.FlushAnswerAsync(closing: !keepAlive) : _client.FlushClientAsync()).ConfigureAwait(false))
            {
                _client.Abort();
                return false;
            }
            if (end)
            {
                return keepAlive;
            }
            if (received > 0)
            {
                await stream.Connection.ConsumedAsync(stream, (int)received).ConfigureAwait(false);
            }
        }
    }

    private bool AbortHttp2Relay(ClusterModel cluster, DestinationState destination, Http2ClientStream stream, string reason)
    {
        _client.TakeFiredTimeout();
        ProxyLog.Warn("upstream_body_failed", ("cluster", cluster.Name), ("destination", destination.Address),
            ("result", "h2"), ("reason", reason), ("h2_error", stream.ResetCode.ToString()));
        _client.Abort();
        return false;
    }

    private int CopyAuthority(RequestHead head, DestinationState destination)
    {
        ReadOnlySpan<byte> authority = head.HostIndex >= 0 ? head.Host : destination.HostHeader;
        if (_http2Authority.Length < authority.Length)
        {
            _http2Authority = new byte[authority.Length];
        }
        authority.CopyTo(_http2Authority);
        return authority.Length;
    }

    /// <summary>
    /// The route's <c>rewrite</c> of the target into <see cref="_http2Path"/> (HPACK wants the value contiguous);
    /// -1 without one, when :path is the client's target.
    /// </summary>
    private int CopyRewrittenPath(RequestHead head)
    {
        if (_route!.Rewrite is not { } rewrite || !Routing.PathRewrite.AppliesTo(head))
        {
            return -1;
        }
        int length = rewrite.TargetLength(head);
        if (_http2Path.Length < length)
        {
            _http2Path = new byte[Math.Max(length, 256)];
        }
        return rewrite.CopyTarget(head, _http2Path);
    }

    private static bool WantsTrailers(RequestHead head)
        => head.TryGetHeader("te"u8, out ReadOnlySpan<byte> te) && te.IndexOf("trailers"u8) >= 0;

    /// <summary>HTTP/2 has no reason phrase (RFC 9113 section 8.3.2): the HTTP/1.1 client gets the standard one.</summary>
    private static void SetReasonPhrase(ResponseHead response)
    {
        string reason = StatusCodes.ReasonPhrase(response.StatusCode);
        int start = response.Length;
        int needed = start + reason.Length;
        if (response.Buffer.Length < needed)
        {
            Array.Resize(ref response.Buffer, Math.Max(needed, response.Buffer.Length * 2));
        }
        int written = System.Text.Encoding.ASCII.GetBytes(reason, response.Buffer.AsSpan(start));
        response.Length = start + written;
        response.ReasonStart = start;
        response.ReasonLength = written;
        response.Version = Http.HttpVersion.Http11;
    }
}
