using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Text;
using Proxy.Diagnostics;
using Proxy.Forwarding;
using Proxy.Handlers;
using Proxy.Http;
using Proxy.Http2;
using Proxy.Http2.Server;
using Proxy.Model;
using Proxy.Pipeline;
using Proxy.Transport;

namespace Proxy.Http1;

/// <summary>
/// One client connection speaking HTTP/1.1: reads request heads, enforces limits and deadlines, then routes
/// each request to a direct answer, the echo handler or the forwarder. Requests on a connection are handled
/// one at a time (pipelined requests wait in the receive buffer), so per-request state lives here unlocked.
/// </summary>
internal sealed partial class Http1ServerConnection : TimedConnection, IBodyPumpTimer, ITrailerFieldFilter
{
    private readonly ProxyRuntime _runtime;
    private readonly ClientTransport _transport;
    /// <summary>Rented when a request starts and returned while the connection waits for the next one, so an
    /// idle keep-alive connection holds no head buffer (10,000 idle connections must stay cheap).</summary>
    private ExchangeState? _state;
    private readonly HttpForwarder _forwarder;
    private PipeReader? _timedReader;
    private TimeSpan _upstreamTimeout;
    private volatile bool _draining;
    /// <summary>Set when we close after an error answer: the client may still be sending what we did not read.</summary>
    private bool _lingerOnClose;
    private volatile bool _waitingForRequest;
    /// <summary>A first request head was read: from then on, waiting for a request is idling between requests.</summary>
    private volatile bool _servedFirstRequest;
    private int _aborted;
    /// <summary>Route of the current request, for metrics (null until routed).</summary>
    private RouteModel? _route;

    /// <summary>Status of the final response to the current request, for metrics; 0 while none was written.</summary>
    internal int ResponseStatus;

    /// <summary>
    /// The current request is gRPC (content-type application/grpc*), decided once when its head is handled: local
    /// replies then go out as gRPC trailers-only responses (<see cref="GrpcStatus"/>). False before a head is parsed.
    /// </summary>
    internal bool IsGrpc;

    public Http1ServerConnection(ProxyRuntime runtime, ListenerModel listener, ClientTransport transport)
    {
        _runtime = runtime;
        Listener = listener;
        _transport = transport;
        Input = transport.Input;
        Output = transport.Output;
        _forwarder = runtime.Forwarders.Get();
        _forwarder.Attach(this);
    }

    public PipeReader Input { get; }
    public PipeWriter Output { get; }
    public ClientTransport Transport => _transport;
    /// <summary>
    /// This connection's listener settings, re-read from the listener it came from when a request starts, so a reload
    /// that changes limits, the handler or the routes applies from the next request (the head of that next request is
    /// read with the limits of the one before).
    /// </summary>
    public ListenerModel Listener { get; private set; }

    /// <summary>The snapshot the current request started with (read once per request).</summary>
    private ProxySnapshot? _snapshot;

    /// <summary>
    /// Keeps the client's X-Request-Id when valid, else generates one into the head's buffer (no allocation). A field
    /// the client named in Connection is hop-by-hop and not forwarded: the upstream would get no id while the client
    /// got this one back, so ours is made and forwarded instead.
    /// </summary>
    private static void AssignRequestId(RequestHead head)
    {
        for (int i = 0; i < head.FieldCount; i++)
        {
            if (!head.Name(i).EqualsIgnoreCaseAscii(RequestId.FieldName))
            {
                continue;
            }
            ReadOnlySpan<byte> incoming = head.Value(i);
            if (!head.Fields[i].HopByHop && RequestId.IsValid(incoming))
            {
                incoming.CopyTo(head.RequestIdBuffer);
                head.RequestIdLength = incoming.Length;
                head.RequestIdGenerated = false;
                return;
            }
            break;
        }
        head.RequestIdLength = RequestId.Generate(head.RequestIdBuffer);
        head.RequestIdGenerated = true;
    }

    /// <summary>
    /// The value of the <c>x-request-id</c> field of the current request's response head (local replies write it; the
    /// forwarder writes it for relayed responses). A head rejected before routing gets a fresh id here.
    /// </summary>
    internal ReadOnlySpan<byte> ReplyRequestId()
    {
        RequestHead head = Head;
        if (head.RequestIdLength == 0)
        {
            head.RequestIdLength = RequestId.Generate(head.RequestIdBuffer);
            head.RequestIdGenerated = true;
        }
        return head.RequestIdValue;
    }

    /// <summary>
    /// The snapshot for a new request and this connection's listener settings in it, read as one pair from the listener
    /// the connection came from (<see cref="SocketListener.Serving"/>): a reload swaps them together, and a removed
    /// listener keeps its last pair, so a connection it accepted while closing is routed with the routes it was sent
    /// for. A connection of a listener that stopped accepting closes after this request.
    /// </summary>
    private ProxySnapshot BeginSnapshot()
    {
        if (Origin is not { } origin)
        {
            return BeginSnapshotWithoutOrigin();
        }
        ListenerSnapshot serving = origin.Serving;
        if (!ReferenceEquals(serving.Snapshot, _snapshot))
        {
            _snapshot = serving.Snapshot;
            Listener = serving.Model;
        }
        if (origin.Retired && !_transport.IsStream)
        {
            // Also for a connection the drain's sweep did not see: accepted by another engine thread as the listener
            // stopped, or still in its TLS handshake.
            _draining = true;
        }
        return serving.Snapshot;
    }

    /// <summary>Every connection has an origin; should one be made without, it reads the runtime's snapshot and finds its listener by name.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private ProxySnapshot BeginSnapshotWithoutOrigin()
    {
        ProxySnapshot current = _runtime.Current;
        if (!ReferenceEquals(current, _snapshot))
        {
            _snapshot = current;
            foreach (ListenerModel model in current.Listeners)
            {
                if (model.Name == Listener.Name)
                {
                    Listener = model;
                    break;
                }
            }
        }
        return current;
    }

    public RequestHead Head => State.Head;
    public BodyPump RequestPump => State.RequestPump;
    public BodyPump ResponsePump => State.ResponsePump;

    private ExchangeState State => _state ?? AttachState();

    private ExchangeState AttachState()
    {
        ExchangeState state = _runtime.ExchangeStates.Get();
        state.RequestPump.TrailerFieldFilter = this;
        return _state = state;
    }

    /// <summary>
    /// A request trailer field named like one the proxy owns in the head: X-Forwarded-*, X-Request-Id, trace context,
    /// the client certificate header, and whatever the route's filters set or remove. The head's copy of such a field
    /// is replaced or dropped; a trailer must not bring it back to an upstream that merges trailers into headers.
    /// Likewise a field whose value a screen of the route (a <c>deny</c> policy) refuses: in the head it would have cost
    /// the request a 403; as a trailer it comes after the request went upstream, so it is dropped instead.
    /// </summary>
    bool ITrailerFieldFilter.Drops(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        if (ProxyOwnedFields.Contains(name, FilterContext, forwarded: true, Listener.Tls?.ForwardHeader))
        {
            return true;
        }
        if (_chain is { TrailerScreens: { Length: > 0 } screens })
        {
            foreach (IRequestTrailerScreen screen in screens)
            {
                if (screen.Refuses(name, value))
                {
                    return true;
                }
            }
        }
        return false;
    }

    private void ReleaseState()
    {
        if (_state is { } state)
        {
            _state = null;
            // An exchange that did not end (the client or bridge aborted mid-body) may still run its body pumps on this
            // state: pooled, it could reach another connection while they run, and two bodies would share a pump's
            // decoder. Only a parked forwarder's state goes back; the rare other one is left to the collector.
            if (_forwarder.IsParked)
            {
                state.RequestPump.TrailerFieldFilter = null;
                _runtime.ExchangeStates.Return(state);
            }
        }
    }

    /// <summary>
    /// The connection closed: its forwarder goes back to the pool for the next connection when nothing of the last
    /// exchange still runs on it (as with <see cref="ReleaseState"/>, a forwarder still busy is left to the collector).
    /// </summary>
    private bool ReleaseForwarder()
    {
        if (_forwarder.IsReusable)
        {
            _forwarder.Detach();
            _runtime.Forwarders.Return(_forwarder);
            return true;
        }
        return false;
    }

    public IPAddress RemoteAddress => _transport.RemoteAddress;
    public IPEndPoint? RemoteEndPoint => _transport.RemoteEndPoint;
    public bool Draining => _draining;

    /// <summary>This client's counters in the per-IP tables; set when a per-IP cap applies.</summary>
    private ClientIpSlots _ipSlots;
    private bool _ipConnectionHeld;

    public async Task RunAsync()
    {
        if (!TryEnterConnectionPerIp())
        {
            return;
        }
        _runtime.Registry.Add(this, admin: Listener.Handler == ListenerHandler.Admin);
        try
        {
            await ProcessRequestsAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // The peer went away or the connection was aborted; nothing to answer.
            ProxyLog.Write(ProxyLogLevel.Debug, "connection_closed", ("error", e.ToString()));
        }
        catch (Exception e)
        {
            ProxyLog.Error("connection_failed", ("listener", Listener.Name), ("client", ProxyLog.Format(RemoteEndPoint)), ("error", e.ToString()));
        }
        finally
        {
            Disarm();
            _forwarder.ReleaseUpstream();
            if (!_handedOff)
            {
                await CloseGracefullyAsync().ConfigureAwait(false);
            }
            _runtime.Registry.Remove(this);
            ReleaseState();
            bool idle = ReleaseForwarder();
            if (_ipConnectionHeld)
            {
                _runtime.ConnectionsPerIp.Exit(_ipSlots);
            }
            // From here the heartbeat, a drain or an abort that still holds this connection does nothing (Enter), and
            // the transport may serve the next connection if this one closed it cleanly with nothing in flight.
            int outsideCalls = Interlocked.Or(ref _lifecycle, Ended);
            if (idle && _closedByUs && !_handedOff && outsideCalls == 0)
            {
                _transport.Recycle();
            }
        }
    }

    /// <summary>
    /// Calls from outside in progress (<see cref="EnterOutsideCall"/>), plus <see cref="Ended"/> once the connection
    /// has ended: one word, so that a call and the end are ordered by the same atomic operations.
    /// </summary>
    private int _lifecycle;
    private const int Ended = 1 << 30;
    /// <summary>The close was ours (<see cref="CloseGracefullyAsync"/>), not an abort's.</summary>
    private bool _closedByUs;

    /// <summary>
    /// The heartbeat (timeouts), a drain or an abort may reach this connection from another thread, late: after it
    /// ended, its transport may already serve another client. Such calls run between Enter and <see cref="ExitOutsideCall"/>:
    /// either the call comes first and the end sees it running (and keeps the transport), or the end comes first and
    /// the call sees <see cref="Ended"/> and does nothing.
    /// </summary>
    private bool EnterOutsideCall()
    {
        if ((Interlocked.Increment(ref _lifecycle) & Ended) != 0)
        {
            Interlocked.Decrement(ref _lifecycle);
            return false;
        }
        return true;
    }

    private void ExitOutsideCall() => Interlocked.Decrement(ref _lifecycle);

    /// <summary>
    /// The request came as an HTTP/2 stream: its head is the equivalent HTTP/1.1 head (version 1.1) the stream wrote.
    /// </summary>
    internal bool IsHttp2Stream => _transport is Http2StreamTransport;

    /// <summary>
    /// One HTTP/2 stream's exchange (the transport is an <see cref="Http2StreamTransport"/>). A pooled
    /// <see cref="Http2Stream"/> runs the streams it carries on the same instance, with its forwarder (whose loop stays
    /// alive between streams) and pumps, so a proxied HTTP/2 request allocates no bridge. A bridge is not a client
    /// connection: it is not in the registry (its HTTP/2 connection is, and checks the bridge's deadlines from its
    /// heartbeat) and takes no per-IP connection slot. The result says whether the instance may serve another stream:
    /// only after an exchange that ended normally, with nothing of it still running (the forwarder parked); after an
    /// abort, a timeout or an error, work of this exchange may still be in flight, and the stream takes a fresh bridge.
    /// <para>The exchange runs in <see cref="StreamLoopAsync"/>, one long-lived loop per bridge, and the caller awaits a
    /// reusable source, as with the forwarder: an async method per stream suspends (for the forwarder's answer) and
    /// rents a box from the pooling builder each time, and with many connections interleaved on one thread its caches
    /// (one box per thread and per core) nearly always missed (two boxes, about 250 B per request at 16 connections).</para>
    /// </summary>
    internal ValueTask<bool> RunStreamAsync()
    {
        if (!_streamParked)
        {
            // Only a bridge whose last exchange ended cleanly gets another stream, and a second awaiter on the sources
            // would break both exchanges: fail this one instead (the caller's stream is refused, and it drops the bridge).
            throw new InvalidOperationException("The bridge is still running the previous stream.");
        }
        _streamParked = false;
        // Here, not at the top of the loop: the loop may resume on another thread after this returns, and the stream's
        // pump may read the flag (an abort before the exchange starts) before it does.
        Volatile.Write(ref _reachedForwarder, false);
        _streamDone ??= new ReusableValueTaskSource<bool>();
        _streamDone.Reset();
        if (_streamNext is null)
        {
            // Created before the loop runs: it runs inline up to its first wait, and a direct answer ends the stream
            // (and waits for the next one) before this call returns.
            _streamNext = new ReusableValueTaskSource<bool>();
            _ = StreamLoopAsync();
        }
        else
        {
            _streamNext.SetResult(true);
        }
        return _streamDone.Task;
    }

    /// <summary>
    /// The current exchange was handed to the forwarder, so its request may have reached an upstream (set by any
    /// exchange, reset per stream by <see cref="RunStreamAsync"/>). An HTTP/2 stream that ends without a response tells
    /// its client REFUSED_STREAM ("not processed, retry it", RFC 9113 section 8.7) only while this is false.
    /// </summary>
    internal bool ReachedForwarder => Volatile.Read(ref _reachedForwarder);
    private bool _reachedForwarder;

    // Bridges only, created by their first stream (an HTTP/1.1 connection never needs them): see RunStreamAsync.
    private ReusableValueTaskSource<bool>? _streamNext;
    private ReusableValueTaskSource<bool>? _streamDone;
    /// <summary>The loop published its last stream's result and waits (or is about to wait) for the next one.</summary>
    private volatile bool _streamParked = true;

    /// <summary>
    /// One iteration per stream this bridge carries: its one request (RFC 9113 section 8.1: a stream carries one
    /// exchange) read, handled and ended as <see cref="ProcessRequestsAsync"/> does a connection's first request (less
    /// the h2c preface check), then the close and the result. Every wait of a stream (the forwarder's answer above all,
    /// a request head still in the pipe) is in this loop, whose one box lives as long as the bridge. Never ends while
    /// the bridge is reused; a dropped bridge's loop waits for a stream that never comes, collected with it.
    /// </summary>
    private async Task StreamLoopAsync()
    {
        while (true)
        {
            // Per-exchange state a previous stream may have left (the per-request fields are reset by BeginRequest).
            Volatile.Write(ref _aborted, 0);
            _draining = false;
            _lingerOnClose = false;
            _timedReader = null;
            FiredTimeout = TimeoutKind.None;
            bool clean = false;
            try
            {
                HttpLimits limits = Listener.Limits;
                _waitingForRequest = true;
                Arm(TimeoutKind.RequestHead, limits.HeaderTimeout);
                _timedReader = Input;
                bool headRead = false;
                while (true)
                {
                    ReadResult result = await Input.ReadAsync().ConfigureAwait(false);
                    if (result.IsCanceled)
                    {
                        TimeoutKind fired = TakeCancellation(result);
                        if (fired == TimeoutKind.RequestHead)
                        {
                            _waitingForRequest = false;
                            await HeadTimedOutAsync().ConfigureAwait(false);
                            break;
                        }
                        if (fired != TimeoutKind.None || _draining)
                        {
                            break;
                        }
                        continue; // a stale cancellation
                    }
                    if (!result.Buffer.IsEmpty)
                    {
                        _waitingForRequest = false;
                    }
                    HeadStep step = TakeHead(result, limits, out RejectReason reason);
                    if (step == HeadStep.NeedMore)
                    {
                        continue;
                    }
                    if (step == HeadStep.Rejected)
                    {
                        await RejectHeadAsync(reason.StatusCode(), reason.DetailsCode()).ConfigureAwait(false);
                    }
                    // Ended: the stream ended before its head was whole, nothing to answer.
                    headRead = step == HeadStep.Complete;
                    break;
                }
                if (headRead && _transport.ClientCertificateMissing)
                {
                    await RefuseWithoutCertificateAsync().ConfigureAwait(false);
                    headRead = false;
                }
                bool failed = false;
                if (headRead)
                {
                    long started = BeginRequest();
                    try
                    {
                        // Whether the answer allows another request does not matter: the stream ends with this one.
                        await HandleRequestPerIpAsync().ConfigureAwait(false);
                    }
                    catch (Exception e) when (!IsConnectionGone(e))
                    {
                        await AnswerFailedRequestAsync(e).ConfigureAwait(false);
                        failed = true; // what failed may have left state behind: the stream takes a fresh bridge next time
                    }
                    finally
                    {
                        ReleaseRequestBody();
                    }
                    EndRequest(started);
                }
                clean = !failed;
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                ProxyLog.Write(ProxyLogLevel.Debug, "connection_closed", ("error", e.ToString()));
            }
            catch (Exception e)
            {
                ProxyLog.Error("connection_failed", ("listener", Listener.Name), ("client", ProxyLog.Format(RemoteEndPoint)), ("error", e.ToString()));
            }
            try
            {
                // Read before the close, which marks the instance closed (aborted) itself.
                clean = clean && Volatile.Read(ref _aborted) == 0 && FiredTimeout == TimeoutKind.None && _forwarder.IsParked;
                Disarm();
                _forwarder.ReleaseUpstream();
                await CloseGracefullyAsync().ConfigureAwait(false);
                ReleaseState();
            }
            catch (Exception e)
            {
                // The loop must go on to publish a result: the stream waits for it.
                clean = false;
                ProxyLog.Error("connection_failed", ("listener", Listener.Name), ("client", ProxyLog.Format(RemoteEndPoint)), ("error", e.ToString()));
            }
            // Reset and parked before publishing: publishing may run the stream inline up to its next RunStreamAsync.
            _streamNext!.Reset();
            _streamParked = true;
            _streamDone!.SetResult(clean);
            await _streamNext.Task.ConfigureAwait(false);
        }
    }

    /// <summary>The peer went away or the connection was aborted: nothing to answer, not worth more than a debug line.</summary>
    private static bool IsConnectionGone(Exception e) => e is IOException or SocketException or ObjectDisposedException;

    /// <summary>
    /// An unexpected exception while a request was handled (a bug or an impossible state, never the peer's doing): one
    /// error line, and when no response has started, 500 <c>internal_error</c> with connection: close, so the client
    /// is answered rather than left waiting on a connection nobody serves. The connection closes after it either way.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private async ValueTask AnswerFailedRequestAsync(Exception e)
    {
        ProxyLog.Error("request_failed", ("listener", Listener.Name), ("route", _route?.Id),
            ("client", ProxyLog.Format(RemoteEndPoint)), ("error", e.ToString()));
        if (ResponseStatus != 0 || IsAborted)
        {
            return; // a head already went out (or nothing can): the close tells the client the answer is cut
        }
        try
        {
            await SendErrorAsync(500, InternalErrorDetails, close: true).ConfigureAwait(false);
        }
        catch (Exception sendError)
        {
            ProxyLog.Write(ProxyLogLevel.Debug, "connection_closed", ("error", sendError.ToString()));
        }
    }

    /// <summary>Details code of the 500 answered for an unexpected exception (<see cref="AnswerFailedRequestAsync"/>).</summary>
    internal const string InternalErrorDetails = "internal_error";

    /// <summary>
    /// <c>limits.max_connections_per_ip</c>: past the cap the connection is closed at once, before any byte is read
    /// (HAProxy's <c>tcp-request connection reject</c>): answering would mean reading the request of the client being
    /// shed, and an answer sent before the request is read can be destroyed by the RST of the close anyway.
    /// </summary>
    private bool TryEnterConnectionPerIp()
    {
        HttpLimits limits = Listener.Limits;
        _ipSlots = ClientIpLimiter.Slots(RemoteAddress);
        if (limits.MaxConnectionsPerIp <= 0 || Listener.Handler == ListenerHandler.Admin || _transport.IsStream
            || _transport.ClientIpCounted)
        {
            return true;
        }
        if (_runtime.ConnectionsPerIp.TryEnter(_ipSlots, limits.MaxConnectionsPerIp))
        {
            _ipConnectionHeld = true;
            return true;
        }
        ProxyLog.Write(ProxyLogLevel.Debug, "client_connection_refused", ("client", ProxyLog.Format(RemoteEndPoint)), ("details", "client_ip_connection_limit"));
        Interlocked.Exchange(ref _aborted, 1);
        try
        {
            Input.Complete();
            Output.Complete();
            _transport.ShutdownSend();
        }
        catch (Exception)
        {
        }
        _transport.Dispose();
        return false;
    }

    /// <summary>
    /// <c>limits.max_requests_per_ip</c>: a request past the cap gets 503 with <c>x-proxy-overloaded</c> and the
    /// connection closes (its body, if any, is not read).
    /// </summary>
    private ValueTask<bool> HandleRequestPerIpAsync()
    {
        int cap = Listener.Limits.MaxRequestsPerIp;
        // No cap: no extra async frame on the hot path.
        return cap <= 0 || Listener.Handler == ListenerHandler.Admin ? HandleRequestAsync() : HandleCappedRequestAsync(cap);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> HandleCappedRequestAsync(int cap)
    {
        if (!_runtime.RequestsPerIp.TryEnter(_ipSlots, cap))
        {
            _route = null;
            ResponseStatus = 0;
            await SendErrorAsync(503, "client_ip_request_limit", close: true, HttpForwarder.OverloadedField).ConfigureAwait(false);
            return false;
        }
        _ipRequestHeld = true;
        try
        {
            return await HandleRequestAsync().ConfigureAwait(false);
        }
        finally
        {
            // Normally released already, just before the answer's last flush (ReleaseRequestSlot); here on the other paths.
            ReleaseRequestSlot();
        }
    }

    /// <summary>True while the current request holds its <c>limits.max_requests_per_ip</c> slot.</summary>
    private bool _ipRequestHeld;

    /// <summary>
    /// Gives the per-IP request slot back once the answer is complete in the output but not yet flushed: a client
    /// that sends its next request as soon as it has read this answer must never find the slot still held by this
    /// one (the same reasoning as the retry budget's EndRetry in HttpForwarder). Idempotent.
    /// </summary>
    internal void ReleaseRequestSlot()
    {
        if (_ipRequestHeld)
        {
            _ipRequestHeld = false;
            _runtime.RequestsPerIp.Exit(_ipSlots);
        }
    }

    /// <summary>
    /// Flushes the last bytes of the answer: the per-IP request slot is released first (<see cref="ReleaseRequestSlot"/>).
    /// When the connection ends after this answer (<paramref name="closing"/>) and the transport can hold its tail
    /// (<see cref="ClientTransport.HoldTailForClose"/>), the send side is shut as soon as the flush is done: the answer's
    /// last bytes and the FIN leave in one segment, and nothing of ours runs between the two.
    /// </summary>
    internal ValueTask<bool> FlushAnswerAsync(bool closing)
    {
        ReleaseRequestSlot();
        if (!closing || _sendShut || !_transport.HoldTailForClose())
        {
            return FlushClientAsync();
        }
        ValueTask<bool> flush = FlushClientAsync();
        if (!flush.IsCompletedSuccessfully)
        {
            return ShutSendAfterAsync(flush);
        }
        bool sent = flush.Result;
        if (sent)
        {
            ShutSend();
        }
        return new ValueTask<bool>(sent);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> ShutSendAfterAsync(ValueTask<bool> flush)
    {
        // The rest of the flush goes out as the client acknowledges what it has: a cork keeps the tail for the FIN.
        _transport.CorkTailForClose();
        bool sent = await flush.ConfigureAwait(false);
        if (sent)
        {
            ShutSend();
        }
        return sent;
    }

    /// <summary>FIN after the last answer; a peer already gone makes it fail, which the close that follows does not mind.</summary>
    private void ShutSend()
    {
        _sendShut = true;
        try
        {
            _transport.ShutdownSend();
        }
        catch (Exception)
        {
        }
    }

    /// <summary>The send side was shut after the last answer (<see cref="FlushAnswerAsync"/>): a lingering close does not shut it again.</summary>
    private bool _sendShut;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ProcessRequestsAsync()
    {
        bool first = true;
        while (true)
        {
            HttpLimits limits = Listener.Limits;
            if (!first)
            {
                ReleaseState();
            }
            _waitingForRequest = true;
            if (_draining && !first)
            {
                return;
            }
            Arm(first ? TimeoutKind.RequestHead : TimeoutKind.KeepAlive, first ? limits.HeaderTimeout : limits.KeepAliveTimeout);
            _timedReader = Input;
            bool headStarted = false;

            while (true)
            {
                ReadResult result = await Input.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;

                if (result.IsCanceled)
                {
                    TimeoutKind fired = TakeCancellation(result);
                    if (fired == TimeoutKind.RequestHead && (headStarted || first))
                    {
                        _waitingForRequest = false;
                        await HeadTimedOutAsync().ConfigureAwait(false);
                        return;
                    }
                    if (fired != TimeoutKind.None || (_draining && !first))
                    {
                        return; // keep-alive timeout or shutdown: close quietly
                    }
                    continue; // a stale cancellation
                }

                if (!headStarted && !buffer.IsEmpty)
                {
                    headStarted = true;
                    _waitingForRequest = false;
                    if (!first)
                    {
                        Arm(TimeoutKind.RequestHead, limits.HeaderTimeout);
                    }
                }

                if (first && !buffer.IsEmpty && buffer.FirstSpan[0] == (byte)'P' && _transport is not Http2StreamTransport)
                {
                    // h2c with prior knowledge (RFC 9113 section 3.3) on the same port: only the first bytes of a
                    // connection are looked at, and "POST"/"PUT"/"PATCH" differ from "PRI " by the second octet.
                    PrefaceCheck preface = Http2Preface.Check(buffer);
                    if (preface == PrefaceCheck.NeedMore && !result.IsCompleted)
                    {
                        Input.AdvanceTo(buffer.Start, buffer.End);
                        continue;
                    }
                    if (preface == PrefaceCheck.Yes)
                    {
                        Input.AdvanceTo(buffer.Start);
                        await HandOffToHttp2Async().ConfigureAwait(false);
                        return;
                    }
                }

                HeadStep step = TakeHead(result, limits, out RejectReason reason);
                if (step == HeadStep.Complete)
                {
                    break;
                }
                if (step == HeadStep.Rejected)
                {
                    await RejectHeadAsync(reason.StatusCode(), reason.DetailsCode()).ConfigureAwait(false);
                    return;
                }
                if (step == HeadStep.Ended)
                {
                    return; // clean close between requests, or a truncated head: nothing to answer either way
                }
            }
            if (_transport.ClientCertificateMissing)
            {
                await RefuseWithoutCertificateAsync().ConfigureAwait(false);
                return;
            }

            first = false;
            _servedFirstRequest = true;
            long started = BeginRequest();
            bool keepAlive;
            try
            {
                keepAlive = await HandleRequestPerIpAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (!IsConnectionGone(e))
            {
                await AnswerFailedRequestAsync(e).ConfigureAwait(false);
                keepAlive = false;
            }
            finally
            {
                ReleaseRequestBody();
            }
            EndRequest(started);
            if (!keepAlive || _draining)
            {
                return;
            }
        }
    }

    /// <summary>What one read of a request head came to (<see cref="TakeHead"/>).</summary>
    private enum HeadStep : byte
    {
        /// <summary>Not whole yet: everything examined, nothing consumed; read again.</summary>
        NeedMore,
        /// <summary>A whole head, parsed into <see cref="Head"/> and consumed.</summary>
        Complete,
        /// <summary>Malformed or over a limit: the deadline is disarmed; answer with the reason's status and close.</summary>
        Rejected,
        /// <summary>The input ended before a whole head: nothing to answer.</summary>
        Ended,
    }

    /// <summary>
    /// The part of reading a request head that does not wait, shared by the request loop and the HTTP/2 bridge's
    /// loop: parse what arrived and consume or examine it. Synchronous, so neither loop gains an async frame.
    /// </summary>
    private HeadStep TakeHead(in ReadResult result, HttpLimits limits, out RejectReason reason)
    {
        ReadOnlySequence<byte> buffer = result.Buffer;
        HeadStatus status = Http1RequestReader.TryRead(buffer, Head, limits, out SequencePosition consumed, out reason);
        if (status == HeadStatus.Complete)
        {
            Input.AdvanceTo(consumed);
            return HeadStep.Complete;
        }
        if (status == HeadStatus.Rejected)
        {
            Input.AdvanceTo(buffer.End);
            Disarm();
            _waitingForRequest = false;
            return HeadStep.Rejected;
        }
        if (result.IsCompleted)
        {
            Input.AdvanceTo(buffer.End);
            return HeadStep.Ended;
        }
        Input.AdvanceTo(buffer.Start, buffer.End);
        return HeadStep.NeedMore;
    }

    /// <summary>
    /// Answers a head the parser or a head limit refused (400, 414, 431, ...) and closes: the access log gets its line
    /// first (<see cref="ObserveRejectedHead"/>), and the request metrics count it under the unrouted labels, as for
    /// every other request. The HTTP/2 bridge's heads come here too.
    /// </summary>
    private ValueTask RejectHeadAsync(int status, string details)
    {
        ObserveRejectedHead(status, details);
        _runtime.Metrics.HeadRejected(Listener, Head.Method, status);
        return SendErrorAsync(status, details, close: true);
    }

    /// <summary>
    /// Details code of the 400 that answers every request of a client that sent no certificate to a listener with
    /// <c>client_certificates.mode: require</c> (nginx: "No required SSL certificate was sent").
    /// </summary>
    internal const string ClientCertificateRequiredDetails = "client_certificate_required";

    /// <summary>
    /// A whole head from a client without the certificate the listener requires: refused like a head the parser
    /// refuses, before anything else looks at it (no handler, route, filter or upstream sees it), with the access-log
    /// line, the unrouted request metrics, 400 and close. On HTTP/2 the stream ends so; each stream is answered alike.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private ValueTask RefuseWithoutCertificateAsync()
    {
        Disarm();
        _waitingForRequest = false;
        return RejectHeadAsync(400, ClientCertificateRequiredDetails);
    }

    /// <summary>
    /// 408: the head did not arrive within header_timeout. Nothing of it was parsed: the head still holds the previous
    /// request of the connection, cleared so that neither the answer nor the log line shows that one's id or target.
    /// </summary>
    private ValueTask HeadTimedOutAsync()
    {
        Head.Reset();
        return RejectHeadAsync(408, RejectReason.HeaderTimeout.DetailsCode());
    }

    /// <summary>A read cancelled by a deadline or a drain: examines nothing, returns the deadline that fired (None for a stale cancellation).</summary>
    private TimeoutKind TakeCancellation(in ReadResult result)
    {
        Input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        TimeoutKind fired = FiredTimeout;
        FiredTimeout = TimeoutKind.None;
        return fired;
    }

    /// <summary>A head was read: the request starts (shared by the request loop and the HTTP/2 bridge's loop). Returns its start timestamp.</summary>
    private long BeginRequest()
    {
        Disarm();
        _waitingForRequest = false;
        IsGrpc = GrpcStatus.IsGrpcRequest(Head);
        long started = Stopwatch.GetTimestamp();
        ResetFilterRequest();
        return started;
    }

    /// <summary>The request was answered (or failed): metrics, observers, the response-complete phase.</summary>
    private void EndRequest(long started)
    {
        _runtime.Metrics.RequestEnded(Listener, _route, Head.Method, ResponseStatus, started, RequestBodyBytes, ResponseBodyBytes);
        ObserveRequestEnd(started);
        RunResponseCompleteFilters(started);
        IsGrpc = false;
    }

    /// <summary>Set when the connection turned out to speak HTTP/2: the HTTP/2 connection owns the transport then.</summary>
    private bool _handedOff;

    /// <summary>Runs the rest of the connection as HTTP/2; it registers itself, so this one leaves the registry.</summary>
    private async Task HandOffToHttp2Async()
    {
        Disarm();
        _waitingForRequest = false;
        _handedOff = true;
        _runtime.Registry.Remove(this);
        ReleaseState();
        // The same origin: a reload that removes this listener must drain the HTTP/2 connection too.
        await new Http2ServerConnection(_runtime, Listener, _transport) { Origin = Origin }.RunAsync().ConfigureAwait(false);
    }

    private ValueTask<bool> HandleRequestAsync()
    {
        RequestHead head = Head;
        ProxySnapshot snapshot = BeginSnapshot();
        AssignRequestId(head);
        _runtime.CountRequest();
        _route = null;
        ResponseStatus = 0;
        if (head.ContentLength > Listener.Limits.MaxBodyBytes)
        {
            return ErrorAndCloseAsync(413, RejectReason.BodyTooLarge.DetailsCode());
        }
        if (Listener.Handler == ListenerHandler.Echo)
        {
            return EchoResponder.HandleAsync(this);
        }
        if (Listener.Handler == ListenerHandler.Admin)
        {
            return AdminApi.HandleAsync(this, _runtime);
        }
        if (head.Method == Http.HttpMethod.Connect)
        {
            return ErrorAndCloseAsync(ProxyError.MethodNotAllowed.StatusCode(), ProxyError.MethodNotAllowed.DetailsCode());
        }

        RouteModel? route = snapshot.Routes.Match(head, Listener.Index);
        _route = route;
        if (route is null)
        {
            BeginUnmatched();
            return LocalReplyAsync(ProxyError.NoRoute.StatusCode(), ProxyError.NoRoute.DetailsCode());
        }
        if (route.Filters(Listener.Index) is { IsEmpty: false } chain)
        {
            FilterStatus status = RunFilters(chain, route);
            if (status != FilterStatus.Continue)
            {
                return status == FilterStatus.Pause ? ResumeFiltersAsync(chain, route) : FilterReplyAsync();
            }
        }
        return AfterFilters(route);
    }

    private async ValueTask<bool> ErrorAndCloseAsync(int status, string details)
    {
        await SendErrorAsync(status, details, close: true).ConfigureAwait(false);
        return false;
    }

    /// <summary>
    /// Answers locally after consuming the request body, so the connection can stay open. With
    /// <c>Expect: 100-continue</c> the body is never invited: answer and close instead (RFC 9110 section 10.1.1).
    /// A request that asked to close (<c>Connection: close</c>, HTTP/1.0 without keep-alive) or a draining
    /// connection closes after the answer (RFC 9112 section 9.6), as the answer says.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    internal async ValueTask<bool> LocalReplyAsync(int status, string details)
    {
        bool keepAlive = await DiscardBodyAsync().ConfigureAwait(false);
        keepAlive &= Head.KeepAlive && !_draining;
        await SendErrorAsync(status, details, close: !keepAlive).ConfigureAwait(false);
        return keepAlive;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> DirectResponseAsync(DirectResponseModel respond)
    {
        bool keepAlive = await DiscardBodyAsync().ConfigureAwait(false);
        keepAlive &= Head.KeepAlive && !_draining;
        ResponseStatus = respond.Status;
        _replyDetails = "direct_response";
        RunLocalResponseHeadersFilters(respond.Status);
        PipeWriter output = Output;
        output.Write(respond.HeadPrefix);
        output.Write(FilterFields);
        WriteLocalReplyTail(output, respond.Body, extraFields: null, keepAlive);
        return await FlushAnswerAsync(closing: !keepAlive).ConfigureAwait(false) && keepAlive;
    }

    /// <summary>Reads and drops the request body. False when the connection cannot be reused afterwards.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> DiscardBodyAsync()
    {
        RequestHead head = Head;
        if (!head.HasBody || _bodyTaken)
        {
            // Taken: the request-body phase read it whole already.
            return true;
        }
        if (head.ExpectContinue)
        {
            return false;
        }
        PumpResult result = await RequestPump.CopyAsync(Input, null, head.Chunked ? BodyFraming.Chunked : BodyFraming.ContentLength,
            head.ContentLength, BodyFraming.None, Listener.Limits.MaxBodyBytes, this).ConfigureAwait(false);
        return result == PumpResult.Completed;
    }

    /// <summary>
    /// Reads the request body to its end for a handler that answers itself (echo, admin): invites it with
    /// 100-continue when asked, answers a malformed or oversized body. False when the connection cannot go on.
    /// The byte count is in <see cref="BodyPump.BytesRead"/> of <see cref="RequestPump"/>.
    /// </summary>
    internal async ValueTask<bool> ConsumeBodyAsync()
    {
        RequestHead head = Head;
        if (!head.HasBody)
        {
            return true;
        }
        if (!await SendContinueIfExpectedAsync().ConfigureAwait(false))
        {
            return false;
        }
        PumpResult result = await RequestPump.CopyAsync(Input, null, head.Chunked ? BodyFraming.Chunked : BodyFraming.ContentLength,
            head.ContentLength, BodyFraming.None, Listener.Limits.MaxBodyBytes, this).ConfigureAwait(false);
        if (result == PumpResult.Completed)
        {
            return true;
        }
        if (result is PumpResult.TooLarge or PumpResult.SourceInvalid)
        {
            RejectReason reason = RequestPump.Reject;
            await SendErrorAsync(reason.StatusCode(), reason.DetailsCode(), close: true).ConfigureAwait(false);
        }
        return false;
    }

    /// <summary>The response's connection field line: "connection: close", or "connection: keep-alive" for a kept HTTP/1.0 connection, or none.</summary>
    internal ReadOnlySpan<byte> ConnectionField(bool keepAlive)
        => !keepAlive ? "connection: close\r\n"u8
            : Head.Version == Http.HttpVersion.Http10 ? "connection: keep-alive\r\n"u8
            : default;

    /// <summary>Sends "100 Continue" when the client asked for it (RFC 9110 section 10.1.1), before reading the body.</summary>
    internal ValueTask<bool> SendContinueIfExpectedAsync()
    {
        if (!Head.ExpectContinue || !Head.HasBody || Head.Version != Http.HttpVersion.Http11)
        {
            return ValueTask.FromResult(true);
        }
        Output.Write("HTTP/1.1 100 Continue\r\n\r\n"u8);
        return FlushClientAsync();
    }

    /// <summary>True once the connection was aborted (or closed): nothing more reaches the client.</summary>
    internal bool IsAborted => Volatile.Read(ref _aborted) != 0;

    /// <summary>
    /// The exchange ended because the client connection was aborted while the upstream had the request: status 499
    /// for the access log and metrics (nginx's "client closed request"), one info line, no answer.
    /// </summary>
    internal void RecordClientAborted(string cluster, string? destination)
    {
        ProxyLog.Info("client_aborted", ("listener", Listener.Name), ("client", ProxyLog.Format(RemoteEndPoint)),
            ("cluster", cluster), ("destination", destination));
        ResponseStatus = 499;
        _replyDetails = "client_aborted";
        _telemetry?.MarkClientAborted();
        _runtime.Metrics.LocalReply(Listener, 499, "client_aborted");
    }

    /// <summary>
    /// Answers with a short text body: "{status} {reason}: {details}". One log line per answer. Error path:
    /// allocation is fine here.
    /// </summary>
    /// <para>A gRPC request gets HTTP 200 with <c>grpc-status</c> (<paramref name="grpcStatus"/>, or the one for
    /// <paramref name="status"/>) and <c>grpc-message</c> in the head and no body, a gRPC trailers-only response.</para>
    internal async ValueTask SendErrorAsync(int status, string details, bool close, byte[]? extraFields = null, int grpcStatus = -1)
    {
        LogLocalReply(status, details);

        _lingerOnClose |= close;
        ResponseStatus = status;
        _replyDetails = details;
        _runtime.Metrics.LocalReply(Listener, status, details);
        if (IsGrpc)
        {
            ResponseStatus = 200;
            WriteGrpcReply(Output, grpcStatus >= 0 ? grpcStatus : GrpcStatus.ForHttpStatus(status), details, default, extraFields,
                keepAlive: !close && Head.KeepAlive);
            await FlushAnswerAsync(closing: close || !Head.KeepAlive).ConfigureAwait(false);
            return;
        }
        string reason = StatusCodes.ReasonPhrase(status);
        byte[] body = Encoding.ASCII.GetBytes($"{status} {reason}: {details}\n");
        PipeWriter output = Output;
        output.Write(Encoding.ASCII.GetBytes($"HTTP/1.1 {status} {reason}\r\n"));
        output.Write("content-type: text/plain\r\n"u8);
        if (_chain is { ResponseHeaders.Length: > 0 })
        {
            // Only what the response-headers phase added: the request phase's fields never went on error answers.
            RunLocalResponseHeadersFilters(status);
            output.Write(State.Filters.ResponsePhaseFields);
        }
        WriteLocalReplyTail(output, body, extraFields, keepAlive: !close && Head.KeepAlive);
        await FlushAnswerAsync(closing: close || !Head.KeepAlive).ConfigureAwait(false);
    }

    /// <summary>
    /// A gRPC trailers-only local reply: HTTP 200, content-type application/grpc, the status and message (our details
    /// code: lower-case ASCII and '_', so no percent-encoding is needed), filter fields, then the usual tail with
    /// content-length 0. An HTTP/2 client gets it as one HEADERS frame with END_STREAM.
    /// </summary>
    internal void WriteGrpcReply(PipeWriter output, int grpcStatus, string details, ReadOnlySpan<byte> fields, byte[]? extraFields, bool keepAlive)
    {
        output.Write(GrpcStatus.ReplyHead);
        output.Write(GrpcStatus.StatusField(grpcStatus));
        output.Write("grpc-message: "u8);
        Span<byte> span = output.GetSpan(details.Length);
        output.Advance(Encoding.ASCII.GetBytes(details, span));
        output.Write("\r\n"u8);
        output.Write(fields);
        WriteLocalReplyTail(output, default, extraFields, keepAlive);
    }

    /// <summary>
    /// The end of every answer the proxy makes itself: length, date, extra fields, request id, connection, the empty
    /// line, then the body (none for HEAD, RFC 9110 section 9.3.2).
    /// </summary>
    internal void WriteLocalReplyTail(PipeWriter output, ReadOnlySpan<byte> body, byte[]? extraFields, bool keepAlive)
    {
        var writer = new HeadWriter(output);
        writer.WriteContentLength(body.Length);
        writer.Write("date: "u8);
        writer.Write(DateHeader.Value);
        writer.Write("\r\n"u8);
        if (extraFields is not null)
        {
            writer.Write(extraFields);
        }
        writer.WriteField(RequestId.FieldName, ReplyRequestId());
        writer.Write(ConnectionField(keepAlive));
        writer.Write("\r\n"u8);
        writer.Commit();
        RequestHead head = Head;
        if (head.Method != Http.HttpMethod.Head || head.MethodLength == 0)
        {
            output.Write(body);
            _localBodyBytes = body.Length;
        }
    }

    /// <summary>The connection closes after this answer with the request's body unread: linger, as an error answer does.</summary>
    internal void LingerOnClose() => _lingerOnClose = true;

    /// <summary>
    /// The target as logged: without its query, as in the access log (queries carry secrets: an <c>api_key</c>, a
    /// signed URL's signature, an OAuth code), and at most 256 bytes.
    /// </summary>
    /// <summary>
    /// The one <c>local_reply</c> line of an answer the proxy made itself, whichever path made it (a refused head, no
    /// route, a filter's answer or failure, an upstream failure): the same fields on all. <c>route</c> is null before
    /// routing; method and target are null when the head never parsed that far. Formatted only when the level is on.
    /// </summary>
    private void LogLocalReply(int status, string details)
    {
        ProxyLogLevel level = status >= 500 ? ProxyLogLevel.Warn : ProxyLogLevel.Info;
        if (!ProxyLog.IsEnabled(level))
        {
            return;
        }
        RequestHead head = Head;
        ProxyLog.Write(level, "local_reply",
            ("status", status), ("details", details), ("listener", Listener.Name), ("route", _route?.Id),
            ("client", ProxyLog.Format(RemoteEndPoint)),
            ("method", head.MethodLength > 0 ? Encoding.ASCII.GetString(head.MethodBytes) : null),
            ("target", head.TargetLength > 0 ? SafeTarget(head) : null));
    }

    private static string SafeTarget(RequestHead head)
    {
        ReadOnlySpan<byte> target = head.Target;
        int query = target.IndexOf((byte)'?');
        if (query >= 0)
        {
            target = target[..query];
        }
        if (target.Length > 256)
        {
            target = target[..256];
        }
        return Encoding.ASCII.GetString(target);
    }

    /// <summary>Flushes the client output under the write deadline. False when the client is gone.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    internal async ValueTask<bool> FlushClientAsync()
    {
        ArmWrite();
        try
        {
            FlushResult result = await Output.FlushAsync().ConfigureAwait(false);
            return !result.IsCanceled && !result.IsCompleted;
        }
        catch (Exception)
        {
            return false;
        }
        finally
        {
            Disarm();
        }
    }

    // ---- deadlines -------------------------------------------------------------------------------

    internal void ArmUpstream(PipeReader upstreamInput, TimeSpan timeout)
    {
        _upstreamTimeout = timeout;
        _timedReader = upstreamInput;
        Arm(TimeoutKind.Upstream, timeout);
    }

    internal void DisarmUpstream() => Disarm();

    /// <summary>Reads and clears the timeout that fired, if any.</summary>
    internal TimeoutKind TakeFiredTimeout()
    {
        TimeoutKind fired = FiredTimeout;
        FiredTimeout = TimeoutKind.None;
        return fired;
    }

    internal void SetUpstreamTimeout(TimeSpan timeout) => _upstreamTimeout = timeout;

    /// <summary>Tick count by which the current exchange with the upstream must end (request_timeout); MaxValue: none.</summary>
    private long _exchangeDeadline = long.MaxValue;

    internal void SetExchangeDeadline(long deadline) => _exchangeDeadline = deadline;

    /// <summary>The current exchange's deadline (request_timeout, grpc-timeout) has passed.</summary>
    internal bool ExchangeDeadlinePassed => _exchangeDeadline != long.MaxValue && Environment.TickCount64 >= _exchangeDeadline;

    /// <summary>
    /// A wait of the exchange (for the upstream, or for the client's body while it is forwarded), shortened to what is
    /// left of the exchange deadline.
    /// </summary>
    private TimeSpan ExchangeWait(TimeSpan timeout)
    {
        long deadline = _exchangeDeadline;
        if (deadline == long.MaxValue)
        {
            return timeout;
        }
        long left = Math.Max(0, deadline - Environment.TickCount64);
        return left < Milliseconds(timeout) ? TimeSpan.FromMilliseconds(left) : timeout;
    }

    public void ArmRead(PipeReader source)
    {
        _timedReader = source;
        if (ReferenceEquals(source, Input))
        {
            // Each wait for the client's body is bounded by body_timeout, and while the body is forwarded all of them by
            // the exchange's request_timeout (outside an exchange the deadline is MaxValue: body_timeout alone).
            Arm(TimeoutKind.RequestBody, ExchangeWait(Listener.Limits.BodyTimeout));
        }
        else
        {
            Arm(TimeoutKind.Upstream, ExchangeWait(_upstreamTimeout));
        }
    }

    public void ArmWrite() => Arm(TimeoutKind.Write, Listener.Limits.BodyTimeout);

    public void DisarmPump() => Disarm();

    /// <summary>The response pump is about to flush the body's last bytes: the answer is complete.</summary>
    public void LastFlush(BodyPump pump)
    {
        if (ReferenceEquals(pump, State.ResponsePump))
        {
            ReleaseRequestSlot();
            if (_answerCloses && !_sendShut)
            {
                // The flush that carries the body's last bytes, shut by ShutSendAfterPump once the pump has returned: the
                // hold has to last across awaits, so a cork rather than FlushAnswerAsync's MSG_MORE.
                _tailHeld = _transport.CorkTailForClose();
            }
        }
    }

    /// <summary>
    /// Set by the forwarder before a response body is pumped: the connection closes after this answer, so the pump's
    /// last flush may hold its tail for the FIN (<see cref="LastFlush"/>).
    /// </summary>
    internal void AnswerCloses(bool closes)
    {
        _answerCloses = closes;
        _tailHeld = false;
    }

    /// <summary>After the pump's last flush: the FIN, which carries the held tail (<see cref="FlushAnswerAsync"/>).</summary>
    internal void ShutSendAfterPump()
    {
        _answerCloses = false;
        if (_tailHeld)
        {
            _tailHeld = false;
            ShutSend();
        }
    }

    private bool _answerCloses;
    private bool _tailHeld;

    /// <summary>
    /// Heartbeat: the deadline, then a client that left while the upstream works on its request. Nothing reads the
    /// client then (a request body is read through, a pipelined next request waits), so its close would go unseen
    /// until the answer is written, and the upstream would work on, holding its connection, for nobody. Like nginx and
    /// Envoy, a close (FIN, or RST) ends the exchange: the upstream connection is cut or its HTTP/2 stream reset, and the
    /// exchange is recorded as 499 <c>client_aborted</c>. A client that only half-closed after its request is ended
    /// too, since FIN looks the same; a route with <c>ignore_client_abort: true</c> keeps serving it (HAProxy's default).
    /// Only while an upstream wait is armed, or while the request waits for an upstream connection (a connect, or a
    /// place at the pool's max_connections cap: a request whose client left is then never sent, as Envoy cancels its
    /// pending requests), so it costs the request path nothing: one poll() per such connection per second.
    /// </summary>
    internal override void Heartbeat(long now)
    {
        base.Heartbeat(now);
        if ((Awaits(TimeoutKind.Upstream) || Volatile.Read(ref _waitingForUpstreamConnection))
            && !IsAborted && _route is { IgnoreClientAbort: false })
        {
            AbortIfClientGone();
        }
        else if (_forwarder.Tunnel is { } tunnel && !IsAborted)
        {
            CheckTunnel(tunnel, now);
        }
        WatchUpstream();
    }

    /// <summary>
    /// Heartbeat, also for an HTTP/2 stream's bridge (its connection's heartbeat): while a request body is being sent to
    /// an HTTP/1.1 upstream, looks for an early answer (<see cref="HttpForwarder.WatchForEarlyAnswer"/>). One flag read
    /// otherwise.
    /// </summary>
    internal void WatchUpstream()
    {
        if (!_forwarder.SendingBody || !EnterOutsideCall())
        {
            return;
        }
        try
        {
            _forwarder.WatchForEarlyAnswer(this);
        }
        finally
        {
            ExitOutsideCall();
        }
    }

    /// <summary>
    /// A tunnel whose write waits for a peer that does not read (see <see cref="TunnelActivity"/>): past
    /// <c>limits.body_timeout</c>, or at once when the client reset its connection (a reset is not seen by a tunnel
    /// whose reads are paused), both sides are closed. Polls the socket only while a write waits.
    /// </summary>
    private void CheckTunnel(TunnelActivity tunnel, long now)
    {
        long stalled = tunnel.WriteStalledMilliseconds(now);
        if (stalled == 0 || !EnterOutsideCall())
        {
            return;
        }
        try
        {
            bool timedOut = stalled >= Milliseconds(Listener.Limits.BodyTimeout);
            if (timedOut || _transport.PeerReset())
            {
                ProxyLog.Info("tunnel_write_timeout", ("listener", Listener.Name), ("route", _route?.Id ?? ""),
                    ("reason", timedOut ? "peer_not_reading" : "client_reset"), ("stalled_ms", stalled));
                Abort();
            }
        }
        finally
        {
            ExitOutsideCall();
        }
    }

    private bool _waitingForUpstreamConnection;

    /// <summary>Set by the forwarder while the request waits for an upstream connection (see <see cref="Heartbeat"/>).</summary>
    internal bool WaitingForUpstreamConnection
    {
        set => Volatile.Write(ref _waitingForUpstreamConnection, value);
    }

    private void AbortIfClientGone()
    {
        if (!EnterOutsideCall())
        {
            return;
        }
        try
        {
            if (_transport.PeerHungUp())
            {
                Abort();
            }
        }
        finally
        {
            ExitOutsideCall();
        }
    }

    protected override void OnTimeout(TimeoutKind kind)
    {
        if (!EnterOutsideCall())
        {
            return;
        }
        try
        {
            if (kind == TimeoutKind.Write)
            {
                // A peer that stops reading cannot be woken by cancelling a read: close the sockets.
                _forwarder.AbortUpstream(this);
                Abort();
                return;
            }
            _timedReader?.CancelPendingRead();
        }
        finally
        {
            ExitOutsideCall();
        }
    }

    public override void BeginDrain()
    {
        if (!EnterOutsideCall())
        {
            return;
        }
        try
        {
            _draining = true;
            // Only an idle keep-alive connection closes at once, as nginx closes its idle ones. A connection that waits
            // for its first request was just accepted (perhaps from the queue of a listener that is closing) and its
            // client is sending that request now: it is served, with connection: close, or closed by header_timeout,
            // as nginx's old workers finish the connections they accepted.
            if (_waitingForRequest && _servedFirstRequest)
            {
                Input.CancelPendingRead();
            }
        }
        finally
        {
            ExitOutsideCall();
        }
    }

    /// <summary>
    /// Sends FIN, then reads and drops what the client still sends for a short while before closing. Closing
    /// with unread bytes in the receive buffer makes the kernel send RST, which can destroy the answer we just
    /// sent (a 413 while the client is still uploading); nginx's lingering close solves the same problem.
    /// </summary>
    private async ValueTask CloseGracefullyAsync()
    {
        try
        {
            Output.Complete();
        }
        catch (Exception)
        {
        }
        if (Volatile.Read(ref _aborted) == 0 && _lingerOnClose)
        {
            try
            {
                if (!_sendShut)
                {
                    _transport.ShutdownSend();
                }
                _timedReader = Input;
                Arm(TimeoutKind.RequestBody, s_lingerTime);
                long discarded = 0;
                while (discarded < LingerMaxBytes)
                {
                    ReadResult result = await Input.ReadAsync().ConfigureAwait(false);
                    discarded += result.Buffer.Length;
                    Input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted || result.IsCanceled)
                    {
                        break;
                    }
                }
            }
            catch (Exception)
            {
            }
            finally
            {
                Disarm();
            }
        }
        try
        {
            Input.Complete();
        }
        catch (Exception)
        {
        }
        _closedByUs = Interlocked.Exchange(ref _aborted, 1) == 0;
        _transport.Dispose();
    }

    private const long LingerMaxBytes = 1024 * 1024;
    private static readonly TimeSpan s_lingerTime = TimeSpan.FromSeconds(2);

    public override void Abort()
    {
        if (!EnterOutsideCall())
        {
            return;
        }
        try
        {
            // Marked before the upstream is cut: the forwarder, woken by that cut on another thread, must see the
            // client gone (IsAborted) and not blame the upstream for it.
            bool first = Interlocked.Exchange(ref _aborted, 1) == 0;
            _forwarder.AbortUpstream(this);
            if (!first)
            {
                return;
            }
            try
            {
                _transport.Abort();
            }
            catch (Exception)
            {
            }
        }
        finally
        {
            ExitOutsideCall();
        }
    }
}
