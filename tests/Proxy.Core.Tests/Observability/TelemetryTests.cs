using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Text;
using Proxy.Core.Tests.Routing;
using Proxy.Diagnostics;
using Proxy.Diagnostics.Tracing;
using Proxy.Forwarding;
using Proxy.Http;
using Proxy.Model;
using Proxy.Upstream;

namespace Proxy.Core.Tests.Observability;

public sealed class TelemetryTests
{
    private const string ClientTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
    private const string ClientParent = "00f067aa0ba902b7";
    private static readonly DestinationState s_destination = new("http://127.0.0.1:9", "127.0.0.1", 9, 1);

    private static string WriteUpstreamHead(RequestHead head, RequestTelemetry? telemetry)
    {
        var pipe = new Pipe();
        UpstreamRequestWriter.WriteHead(pipe.Writer, head, ForwardedModel.Default, IPAddress.Loopback, s_destination, telemetry);
        pipe.Writer.FlushAsync().AsTask().GetAwaiter().GetResult();
        pipe.Writer.Complete();
        pipe.Reader.TryRead(out var result);
        return Encoding.Latin1.GetString(result.Buffer.ToArray());
    }

    private static List<string> Fields(string head, string name)
        => head.Split("\r\n").Where(l => l.StartsWith(name + ":", StringComparison.OrdinalIgnoreCase)).Select(l => l[(name.Length + 1)..].Trim()).ToList();

    private static RequestTelemetry Telemetry(double sampling)
    {
        var telemetry = new RequestTelemetry();
        telemetry.Prepare(new TracingModel { Sampling = sampling }, "public", "backend");
        return telemetry;
    }

    [Fact]
    public void WriteHead_ValidTraceParent_ContinuesTraceWithNewParentIdAndKeepsTraceState()
    {
        var head = TestRequests.Create("GET", "/a", "example.test",
            ("traceparent", $"00-{ClientTrace}-{ClientParent}-01"), ("tracestate", "rojo=1"), ("tracestate", "congo=2"));

        string upstream = WriteUpstreamHead(head, Telemetry(0));

        var parents = Fields(upstream, "traceparent");
        Assert.Single(parents);
        var parts = parents[0].Split('-');
        Assert.Equal(["00", ClientTrace], parts[..2]);
        Assert.NotEqual(ClientParent, parts[2]);
        Assert.Equal(16, parts[2].Length);
        Assert.Equal("01", parts[3]); // the caller's sampling decision is kept
        Assert.Equal(["rojo=1,congo=2"], Fields(upstream, "tracestate"));
    }

    /// <summary>W3C Trace Context section 3.3.1.1: keys are unique; a list with a key twice (in one field or across
    /// two) is invalid and dropped, while the trace itself continues.</summary>
    [Theory]
    [InlineData("foo=1,foo=2", null)]
    [InlineData("foo=1, bar=2 ,foo=1", null)]
    [InlineData("foo=1", "foo=2")]
    [InlineData("a@t=1,b=2", "c=3,a@t=4")]
    public void WriteHead_TraceStateDuplicateKey_TraceStateDropped(string first, string? second)
    {
        (string, string)[] fields = second is null
            ? [("traceparent", $"00-{ClientTrace}-{ClientParent}-01"), ("tracestate", first)]
            : [("traceparent", $"00-{ClientTrace}-{ClientParent}-01"), ("tracestate", first), ("tracestate", second)];
        var head = TestRequests.Create("GET", "/a", "example.test", fields);

        string upstream = WriteUpstreamHead(head, Telemetry(0));

        Assert.Equal(ClientTrace, Assert.Single(Fields(upstream, "traceparent")).Split('-')[1]);
        Assert.Empty(Fields(upstream, "tracestate"));
    }

    [Fact]
    public void WriteHead_TraceStateDistinctKeysAcrossFields_Kept()
    {
        var head = TestRequests.Create("GET", "/a", "example.test",
            ("traceparent", $"00-{ClientTrace}-{ClientParent}-01"), ("tracestate", "foo=1,,bar=1"), ("tracestate", "baz=1,foox=1"));

        Assert.Equal(["foo=1,,bar=1,baz=1,foox=1"], Fields(WriteUpstreamHead(head, Telemetry(0)), "tracestate"));
    }

    [Fact]
    public void WriteHead_InvalidTraceParent_StartsNewTraceAndDropsTraceState()
    {
        var head = TestRequests.Create("GET", "/a", "example.test",
            ("traceparent", $"00-{ClientTrace.ToUpperInvariant()}-{ClientParent}-01"), ("tracestate", "rojo=1"));

        string upstream = WriteUpstreamHead(head, Telemetry(0));

        var parts = Assert.Single(Fields(upstream, "traceparent")).Split('-');
        Assert.NotEqual(ClientTrace, parts[1]);
        Assert.NotEqual(new string('0', 32), parts[1]);
        Assert.Equal("00", parts[3]); // sampling 0: a new trace is not sampled
        Assert.Empty(Fields(upstream, "tracestate"));
    }

    [Fact]
    public void WriteHead_TwoTraceParents_StartsNewTrace()
    {
        var head = TestRequests.Create("GET", "/a", "example.test",
            ("traceparent", $"00-{ClientTrace}-{ClientParent}-01"), ("traceparent", $"00-{ClientTrace}-{ClientParent}-01"));

        string upstream = WriteUpstreamHead(head, Telemetry(0));

        Assert.NotEqual(ClientTrace, Assert.Single(Fields(upstream, "traceparent")).Split('-')[1]);
    }

    [Fact]
    public void WriteHead_SamplingOne_NewTraceIsSampled()
    {
        var head = TestRequests.Create("GET", "/a", "example.test");
        Assert.EndsWith("-01", Assert.Single(Fields(WriteUpstreamHead(head, Telemetry(1)), "traceparent")));
    }

    [Fact]
    public void WriteHead_TracingOff_ForwardsClientFieldsUntouched()
    {
        var head = TestRequests.Create("GET", "/a", "example.test", ("traceparent", $"00-{ClientTrace}-{ClientParent}-01"), ("tracestate", "x=1"));
        var telemetry = new RequestTelemetry();
        telemetry.Prepare(null, "public", "backend"); // access log only

        string upstream = WriteUpstreamHead(head, telemetry);

        Assert.Equal([$"00-{ClientTrace}-{ClientParent}-01"], Fields(upstream, "traceparent"));
        Assert.Equal(["x=1"], Fields(upstream, "tracestate"));
        Assert.Equal(["x=1"], Fields(WriteUpstreamHead(head, null), "tracestate"));
    }

    [Fact]
    public async Task Propagate_UnsampledOrUnobserved_AllocatesNothing()
    {
        // No ActivityListener on "Proxy" here, so even a sampled request builds no Activity.
        Assert.False(ProxyTracing.Source.HasListeners());
        var head = TestRequests.Create("GET", "/a", "example.test", ("traceparent", $"00-{ClientTrace}-{ClientParent}-01"), ("tracestate", "rojo=1"));
        var telemetry = Telemetry(0);
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
        telemetry.UpstreamRequestStarting(head, s_destination);
        var headWriter = new HeadWriter(pipe.Writer);
        telemetry.WriteTraceFields(ref headWriter, head);
        headWriter.Commit();
        telemetry.End(head, "all", 200, default);
        telemetry.Reset();
        await pipe.Writer.FlushAsync();
        pipe.Reader.TryRead(out var r);
        pipe.Reader.AdvanceTo(r.Buffer.End);

        long allocated = SteadyStateAllocation.BestOfRounds(() =>
        {
            telemetry.Prepare(telemetry.Tracing, "public", "backend");
            telemetry.UpstreamRequestStarting(head, s_destination);
            var headWriter = new HeadWriter(pipe.Writer);
            telemetry.WriteTraceFields(ref headWriter, head);
            headWriter.Commit();
            telemetry.End(head, "all", 200, default);
            telemetry.Reset();
            // With no pause threshold the flush completes at once, so the round runs on this thread and its
            // allocations are all counted here (an await that went async could resume on another thread).
            ValueTask<FlushResult> flush = pipe.Writer.FlushAsync();
            Assert.True(flush.IsCompletedSuccessfully, "the flush went asynchronous");
            flush.GetAwaiter().GetResult();
            pipe.Reader.TryRead(out var read);
            pipe.Reader.AdvanceTo(read.Buffer.End);
        }, iterations: 100);
        Assert.Equal(0, allocated);
    }

    [Fact]
    public void Begin_SampledWithListener_StartsServerAndClientSpansOnTheClientsTrace()
    {
        var stopped = new List<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == ProxyTracing.SourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => { lock (stopped) { stopped.Add(a); } },
        };
        ActivitySource.AddActivityListener(listener);
        var head = TestRequests.Create("POST", "/orders", "example.test", ("traceparent", $"00-{ClientTrace}-{ClientParent}-01"));
        var telemetry = Telemetry(0);
        var pipe = new Pipe();

        telemetry.UpstreamRequestStarting(head, s_destination);
        var headWriter = new HeadWriter(pipe.Writer);
        telemetry.WriteTraceFields(ref headWriter, head);
        headWriter.Commit();
        telemetry.UpstreamResponseReceived(head, 201);
        telemetry.End(head, "orders", 201, DateTime.UtcNow.AddMilliseconds(-5));
        string upstreamSpan = Encoding.ASCII.GetString(telemetry.UpstreamSpanId);
        telemetry.Reset();

        Assert.Null(Activity.Current);
        lock (stopped)
        {
            var server = Assert.Single(stopped, a => a.Kind == ActivityKind.Server);
            var client = Assert.Single(stopped, a => a.Kind == ActivityKind.Client);
            Assert.Equal(ClientTrace, server.TraceId.ToHexString());
            Assert.Equal(ClientParent, server.ParentSpanId.ToHexString());
            Assert.Equal(server.SpanId, client.ParentSpanId);
            Assert.Equal(upstreamSpan, client.SpanId.ToHexString());
            Assert.Equal("POST orders", server.DisplayName);
            Assert.Equal("orders", server.GetTagItem("http.route"));
            Assert.Equal(201, server.GetTagItem("http.response.status_code"));
        }
    }

    /// <summary>
    /// W3C Trace Context: the spans carry the caller's tracestate as their trace state; OpenTelemetry's semantic
    /// conventions: the client span has the destination's host in server.address and its port in server.port (it had
    /// the configured URL in server.address and no tracestate).
    /// </summary>
    [Fact]
    public void End_SampledWithTraceState_SpansCarryTraceStateAndServerAddressPort()
    {
        const string Trace = "5e3c5e3c5e3c5e3c5e3c5e3c5e3c5e3c";
        var stopped = new List<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == ProxyTracing.SourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => { if (a.TraceId.ToHexString() == Trace) { lock (stopped) { stopped.Add(a); } } },
        };
        ActivitySource.AddActivityListener(listener);
        var head = TestRequests.Create("GET", "/orders", "example.test",
            ("traceparent", $"00-{Trace}-{ClientParent}-01"), ("tracestate", "rojo=1"), ("tracestate", "congo=2"));
        var telemetry = Telemetry(0);

        telemetry.UpstreamRequestStarting(head, s_destination);
        telemetry.UpstreamResponseReceived(head, 200);
        telemetry.End(head, "orders", 200, DateTime.UtcNow.AddMilliseconds(-5));
        telemetry.Reset();

        lock (stopped)
        {
            var server = Assert.Single(stopped, a => a.Kind == ActivityKind.Server);
            var client = Assert.Single(stopped, a => a.Kind == ActivityKind.Client);
            Assert.Equal("rojo=1,congo=2", server.TraceStateString);
            Assert.Equal("rojo=1,congo=2", client.TraceStateString);
            Assert.Equal("127.0.0.1", client.GetTagItem("server.address"));
            Assert.Equal(9, client.GetTagItem("server.port"));
            Assert.Equal("http://127.0.0.1:9", client.GetTagItem("proxy.destination"));
        }
    }
}
