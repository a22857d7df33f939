using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Proxy.Benchmarks.EndToEnd;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;
using Proxy.Http2.HPack;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// The proxy as an HTTP/2 client against a hostile h2c upstream (seeded, so a failure names the case): each fuzz
/// request is answered with a mutated frame sequence (bad HPACK, bad or missing :status, connection-specific fields,
/// a content-length that disagrees with DATA, frames on other or idle streams, stray RST_STREAM, GOAWAY, PUSH_PROMISE,
/// WINDOW_UPDATE 0, truncated frames, a missing end), after which the upstream either keeps the connection or drops
/// it. The HTTP/1.1 client gets a well-formed answer (the relayed response, or 502/504) and its connection closes; a
/// control request right after gets its own answer over the multiplexed pool (no frame of a broken exchange ever
/// lands on another stream); every connection is released and the proxy keeps serving.
/// </summary>
public sealed class Http2UpstreamFuzzTests
{
    private static readonly int Cases = FromEnvironment("PROXY_FUZZ_CASES", 150);
    private static readonly int Seed = FromEnvironment("PROXY_FUZZ_SEED", 20261128);

    [Fact]
    public async Task MutatedUpstreamFrames_ClientAnsweredWellFormed_NextRequestGetsItsOwnAnswer()
    {
        using var upstream = new HostileH2cUpstream();
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c",
            cluster: "request_timeout: 1s");
        var statuses = new SortedDictionary<int, int>();
        for (int i = 0; i < Cases; i++)
        {
            string script = HostileH2cUpstream.Describe(i);
            await using (var client = await proxy.ConnectAsync())
            {
                await client.SendAsync($"GET /fuzz/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
                var result = await client.ReadToCloseAsync(TimeSpan.FromSeconds(10));
                Assert.True(result.Closed, $"case {i} (seed {Seed + i}): client connection still open 10 s later; upstream sent: {script}");
                string text = Encoding.Latin1.GetString(result.Bytes);
                Assert.True(text.StartsWith("HTTP/1.1 ", StringComparison.Ordinal) && text.Contains("\r\n\r\n", StringComparison.Ordinal),
                    $"case {i} (seed {Seed + i}): no well-formed answer: '{WireMutator.Show(result.Bytes)}'; upstream sent: {script}");
                int status = int.Parse(text.AsSpan(9, 3), CultureInfo.InvariantCulture);
                statuses[status] = statuses.GetValueOrDefault(status) + 1;
            }
            await FuzzAssert.ControlAnsweredAsync(proxy, i, Seed, script);
        }

        await FuzzAssert.AllConnectionsReleasedAsync(proxy);
        string seen = string.Join(", ", statuses.Select(s => $"{s.Key}: {s.Value}"));
        Assert.True(statuses.GetValueOrDefault(200) > 0, "nothing was relayed: " + seen);
        Assert.True(statuses.GetValueOrDefault(502) > 0, "nothing was refused with 502: " + seen);
    }

    // ---- the cases the fuzzing found, named --------------------------------------------------------------------

    private static async Task<(HttpMessage Fuzz, HttpMessage Control, TimeSpan Took)> FuzzThenControlAsync(HostileH2cUpstream upstream)
    {
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c",
            cluster: "request_timeout: 1s");
        var started = DateTime.UtcNow;
        await using var client = await proxy.ConnectAsync();
        await client.SendAsync("GET /fuzz/0 HTTP/1.1\r\nHost: a\r\n\r\n");
        HttpMessage fuzz = await client.ReadResponseAsync(timeout: TimeSpan.FromSeconds(10));
        TimeSpan took = DateTime.UtcNow - started;
        await using var control = await proxy.ConnectAsync();
        await control.SendAsync("GET /control/0 HTTP/1.1\r\nHost: a\r\n\r\n");
        return (fuzz, await control.ReadResponseAsync(timeout: TimeSpan.FromSeconds(10)), took);
    }

    /// <summary>The broken request with Connection: close, read until the proxy closes (10 s at most), then a control request on a new connection.</summary>
    private static async Task<(CloseResult Cut, HttpMessage Control)> FuzzToCloseThenControlAsync(HostileH2cUpstream upstream)
    {
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c",
            cluster: "request_timeout: 1s");
        CloseResult cut;
        await using (var client = await proxy.ConnectAsync())
        {
            await client.SendAsync("GET /fuzz/0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            cut = await client.ReadToCloseAsync(TimeSpan.FromSeconds(10));
        }
        await using var control = await proxy.ConnectAsync();
        await control.SendAsync("GET /control/0 HTTP/1.1\r\nHost: a\r\n\r\n");
        return (cut, await control.ReadResponseAsync(timeout: TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task HeadersOnlyDeclaringContent_502NotACutConnection()
    {
        // Seed 2556 (PROXY_FUZZ_SEED=2323, case 233): a head with END_STREAM that declares content-length 7. The whole
        // malformed response (RFC 9113 section 8.1.1) was here before anything went to the client, which got its
        // connection closed without a byte instead of an answer.
        using var upstream = new HostileH2cUpstream((_, stream) => ([
            new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, stream,
                HostileH2cUpstream.Block((":status", "200"), ("content-length", "7")))], false));
        var (fuzz, control, _) = await FuzzThenControlAsync(upstream);

        Assert.Equal(502, fuzz.Status);
        Assert.Contains("upstream_invalid_body", fuzz.BodyText, StringComparison.Ordinal);
        Assert.Equal("answer to /control/0", control.BodyText);
    }

    [Fact]
    public async Task InterimThenNothing_FinalHeadWaitStillTimesOut504()
    {
        // A 103 relayed to the client used to clear the connection's one deadline: the wait for the final head had none.
        using var upstream = new HostileH2cUpstream((_, stream) => ([
            new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, stream, HostileH2cUpstream.Block((":status", "103"), ("link", "</a>")))], false));
        var (fuzz, control, took) = await FuzzThenControlAsync(upstream);

        Assert.Equal(504, fuzz.Status);
        Assert.Equal("103", fuzz.Interim.Single().StartLine[9..12]);
        Assert.True(took < TimeSpan.FromSeconds(5), $"504 after {took}");
        Assert.Equal("answer to /control/0", control.BodyText);
    }

    [Fact]
    public async Task UpstreamClosesUnderTheNextRequest_GetGoesAgainOnAFreshConnection()
    {
        // The next request was sent on a connection that then closed without a byte for it: an idempotent one goes again.
        using var upstream = new HostileH2cUpstream((_, stream) => ([
            new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, stream, HostileH2cUpstream.Block((":status", "204")))], true),
            closeAtNextRequest: true);
        var (fuzz, control, _) = await FuzzThenControlAsync(upstream);

        Assert.Equal(204, fuzz.Status);
        Assert.Equal(200, control.Status);
        Assert.Equal("answer to /control/0", control.BodyText);
    }

    [Fact]
    public async Task FrameLongerThanSent_ConnectionDroppedAfterTheStall_NextRequestAnswered()
    {
        // A DATA frame declared longer than what follows: whatever comes next on the connection would be read as its
        // payload. Once a stream times out with the same frame still incomplete, the connection goes.
        using var upstream = new HostileH2cUpstream((_, stream) => ([
            new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, stream, HostileH2cUpstream.Block((":status", "200"))),
            new(Http2FrameType.DATA, Http2Flags.END_STREAM, stream, "hello"u8.ToArray(), DeclaredLength: 40)], false));
        var (cut, answer) = await FuzzToCloseThenControlAsync(upstream);

        Assert.True(cut.Closed, "the relay never gave up on the stalled body");
        Assert.StartsWith("HTTP/1.1 200", Encoding.Latin1.GetString(cut.Bytes), StringComparison.Ordinal);
        Assert.Equal("answer to /control/0", answer.BodyText);
    }

    [Theory]
    // Seed 995: a DATA frame before the head, declared longer than sent: it swallows the frames behind it and leaves
    // the connection mid-frame. Seed 1884: a head, then a DATA frame declared longer than sent, never completed.
    // Found by a 3,000-case campaign (PROXY_FUZZ_SEED=777): the next request was put on the same connection and
    // waited there until its own timeout (504). Now a malformed response retires the connection from new streams, and
    // a connection holding an incomplete frame for a second takes none.
    [InlineData(995)]
    [InlineData(1884)]
    public async Task ConnectionLeftMidFrame_NextRequestGoesElsewhere(int seed)
    {
        using var upstream = new HostileH2cUpstream((_, stream) => HostileH2cUpstream.ScriptFor(seed, stream));
        var (first, answer) = await FuzzToCloseThenControlAsync(upstream);

        Assert.True(first.Closed, "the first request's connection is still open 10 s later");
        Assert.Equal("answer to /control/0", answer.BodyText);
    }

    /// <summary>
    /// Seed 994 (found by a 1,500-case campaign, PROXY_FUZZ_SEED=909): a HEADERS frame declared longer than sent. The
    /// stream times out, the stalled connection fails, and the request, which never got a byte, counted as lost on a
    /// dead connection: it went up again on a fresh one, after its request timeout was spent. The client got its 504 at
    /// once, but the upstream got the request a second time (answering nobody), and that second broken answer left the
    /// new connection stalled under the next request, which waited there for its own 504. Now a try whose timeout is
    /// spent is the last one.
    /// </summary>
    [Fact]
    public async Task StalledMidFrameUntilTheTimeout_NoSecondTry_NextRequestAnswered()
    {
        int fuzzRequests = 0;
        using var upstream = new HostileH2cUpstream((_, stream) =>
        {
            Interlocked.Increment(ref fuzzRequests);
            return HostileH2cUpstream.ScriptFor(994, stream);
        });
        var (first, answer) = await FuzzToCloseThenControlAsync(upstream);

        Assert.True(first.Closed, "the first request's connection is still open 10 s later");
        Assert.StartsWith("HTTP/1.1 504", Encoding.Latin1.GetString(first.Bytes), StringComparison.Ordinal);
        Assert.Equal(1, Volatile.Read(ref fuzzRequests));
        Assert.Equal(200, answer.Status);
        Assert.Equal("answer to /control/0", answer.BodyText);
    }

    private static int FromEnvironment(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int value) ? value : fallback;

    /// <summary>
    /// An h2c upstream (prior knowledge) on blocking threads: acknowledges SETTINGS and PING, answers
    /// <c>/control/{i}</c> properly and <c>/fuzz/{i}</c> with case i's mutated frames, then keeps or drops the connection.
    /// </summary>
    internal sealed class HostileH2cUpstream : BlockingUpstream
    {
        private readonly Func<int, int, (List<ScriptFrame> Frames, bool Close)> _script;

        private readonly bool _closeAtNextRequest;

        /// <summary>
        /// Answers <c>/fuzz/{i}</c> with <paramref name="script"/>(i, stream id), or case i's seeded mutation. With
        /// <paramref name="closeAtNextRequest"/>, a script's close waits for the connection's next request, which it drops
        /// unanswered: the proxy has surely sent it on a connection it still took for alive.
        /// </summary>
        public HostileH2cUpstream(Func<int, int, (List<ScriptFrame> Frames, bool Close)>? script = null, bool closeAtNextRequest = false)
            : base(backlog: 64)
        {
            _script = script ?? Script;
            _closeAtNextRequest = closeAtNextRequest;
            Start();
        }

        /// <summary>What case <paramref name="index"/> sends, for failure messages (on stream 1).</summary>
        public static string Describe(int index)
        {
            var (frames, close) = Script(index, 1);
            return string.Join("; ", frames.Select(f => $"{f.Type} s{f.Stream} f{f.Flags:x} {f.Payload.Length}B{(f.DeclaredLength >= 0 ? $" (declared {f.DeclaredLength})" : "")} {Convert.ToHexString(f.Payload.AsSpan(0, Math.Min(12, f.Payload.Length)))}")) + (close ? "; close" : "");
        }

        protected override void Serve(Socket connection)
        {
            var decoder = new HPackDecoder(4096, 64 * 1024);
            bool closeAtNext = false;
            try
            {
                connection.Send(Frame(Http2FrameType.SETTINGS, 0, 0, []));
                ReadH2cFrames(connection, new byte[256 * 1024], (rawType, rawFlags, stream, payload) =>
                {
                    var type = (Http2FrameType)rawType;
                    var flags = (Http2Flags)rawFlags;
                    if (type == Http2FrameType.SETTINGS && (flags & Http2Flags.ACK) == 0)
                    {
                        connection.Send(Frame(Http2FrameType.SETTINGS, Http2Flags.ACK, 0, []));
                    }
                    else if (type == Http2FrameType.PING && (flags & Http2Flags.ACK) == 0)
                    {
                        connection.Send(Frame(Http2FrameType.PING, Http2Flags.ACK, 0, payload.ToArray()));
                    }
                    else if (type == Http2FrameType.HEADERS)
                    {
                        var sink = new PathSink();
                        if (decoder.Decode(payload, endHeaders: true, ref sink) != HPackError.None || sink.Path is null || closeAtNext)
                        {
                            return false; // undecodable, or dropped unanswered after the script's close
                        }
                        if (!Answer(connection, sink.Path, stream))
                        {
                            if (!_closeAtNextRequest)
                            {
                                return false; // the script drops the connection
                            }
                            closeAtNext = true;
                        }
                    }
                    return true;
                });
            }
            catch (Exception)
            {
            }
            finally
            {
                decoder.Dispose();
                connection.Dispose();
            }
        }

        /// <summary>Answers one request; false when the connection is to be dropped.</summary>
        private bool Answer(Socket connection, string path, int stream)
        {
            if (path.StartsWith("/fuzz/", StringComparison.Ordinal))
            {
                var (frames, close) = _script(int.Parse(path.AsSpan("/fuzz/".Length), CultureInfo.InvariantCulture), stream);
                foreach (var frame in frames)
                {
                    connection.Send(Frame(frame.Type, frame.Flags, frame.Stream, frame.Payload, frame.DeclaredLength));
                }
                return !close;
            }
            byte[] body = Encoding.ASCII.GetBytes("answer to " + path);
            connection.Send([
                .. Frame(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, stream, Block((":status", "200"), ("content-length", body.Length.ToString(CultureInfo.InvariantCulture)))),
                .. Frame(Http2FrameType.DATA, Http2Flags.END_STREAM, stream, body)]);
            return true;
        }

        internal sealed record ScriptFrame(Http2FrameType Type, Http2Flags Flags, int Stream, byte[] Payload, int DeclaredLength = -1);

        /// <summary>Case <paramref name="index"/>'s frames for a request on <paramref name="stream"/>, and whether the connection drops after.</summary>
        private static (List<ScriptFrame> Frames, bool Close) Script(int index, int stream) => ScriptFor(Seed + index, stream);

        /// <summary>The mutation a case's seed (as failure messages print it) makes, to replay one case by name.</summary>
        internal static (List<ScriptFrame> Frames, bool Close) ScriptFor(int seed, int stream)
        {
            var random = new Random(seed);
            byte[] body = "hello"u8.ToArray();
            var frames = random.Next(4) switch
            {
                0 => new List<ScriptFrame> { new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, stream, Block((":status", "204"))) },
                1 => [
                    new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, stream, Block((":status", "103"), ("link", "</a>"))),
                    new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, stream, Block((":status", "200"), ("content-length", "5"))),
                    new(Http2FrameType.DATA, Http2Flags.END_STREAM, stream, body)],
                2 => [
                    new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, stream, Block((":status", "200"), ("content-type", "application/grpc"))),
                    new(Http2FrameType.DATA, Http2Flags.None, stream, body),
                    new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, stream, Block(("grpc-status", "0")))],
                _ => [
                    new(Http2FrameType.HEADERS, Http2Flags.END_HEADERS, stream, Block((":status", "200"), ("content-length", "5"))),
                    new(Http2FrameType.DATA, Http2Flags.END_STREAM, stream, body)],
            };
            int mutations = random.Next(1, 3);
            for (int m = 0; m < mutations; m++)
            {
                int at = random.Next(frames.Count);
                ScriptFrame target = frames[at];
                switch (random.Next(9))
                {
                    case 0:
                        frames[at] = target with { Payload = RandomBytes(random, random.Next(1, 24)) }; // garbage (HPACK or body)
                        break;
                    case 1:
                        frames[at] = target with
                        {
                            Type = Http2FrameType.HEADERS,
                            Payload = Block(Pick<(string, string)[]>(random,
                                [(":status", "abc")], [(":status", "99")], [(":status", "1000")], [(":status", "")], [("x-no-status", "1")],
                                [(":status", "200"), (":status", "201")], [(":status", "200"), ("Connection", "close")],
                                [(":status", "200"), ("connection", "keep-alive")], [(":status", "200"), ("transfer-encoding", "chunked")],
                                [(":status", "200"), ("content-length", "7")], [(":status", "200"), ("content-length", "x")],
                                [(":status", "200"), ("x-a", "1\r\nx-injected: 1")], [(":path", "/"), (":status", "200")])),
                        };
                        break;
                    case 2:
                        frames[at] = target with { Stream = Pick(random, 0, stream + 2, stream + 1, Math.Max(1, stream - 2)) };
                        break;
                    case 3:
                        frames[at] = target with { Flags = (Http2Flags)random.Next(256) };
                        break;
                    case 4:
                        frames.Insert(at, Pick(random,
                            new ScriptFrame(Http2FrameType.RST_STREAM, Http2Flags.None, stream, [0, 0, 0, (byte)random.Next(14)]),
                            new ScriptFrame(Http2FrameType.GOAWAY, Http2Flags.None, 0, [0, 0, 0, 0, 0, 0, 0, (byte)random.Next(14)]),
                            new ScriptFrame(Http2FrameType.PUSH_PROMISE, Http2Flags.END_HEADERS, stream, [0, 0, 0, 2, .. Block((":method", "GET"))]),
                            new ScriptFrame(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, random.Next(2) == 0 ? 0 : stream, [0, 0, 0, 0]),
                            new ScriptFrame(Http2FrameType.SETTINGS, Http2Flags.None, 0, RandomBytes(random, random.Next(0, 13))),
                            new ScriptFrame(Http2FrameType.PING, Http2Flags.None, 0, RandomBytes(random, random.Next(0, 12))),
                            new ScriptFrame((Http2FrameType)random.Next(10, 256), (Http2Flags)random.Next(256), stream, RandomBytes(random, 6)),
                            new ScriptFrame(Http2FrameType.CONTINUATION, Http2Flags.END_HEADERS, stream, Block(("x-late", "1")))));
                        break;
                    case 5:
                        frames.RemoveAt(at); // a missing head, body or end
                        break;
                    case 6:
                        frames[at] = target with { DeclaredLength = target.Payload.Length + random.Next(1, 40) }; // longer than sent
                        break;
                    case 7:
                        frames[at] = target with { Flags = target.Flags & ~Http2Flags.END_HEADERS }; // CONTINUATION never comes
                        break;
                    default:
                        frames.Insert(at, new ScriptFrame(Http2FrameType.DATA, Http2Flags.PADDED, stream, [(byte)random.Next(1, 60), .. body]));
                        break;
                }
                if (frames.Count == 0)
                {
                    break;
                }
            }
            // Most scripts then drop the connection (the proxy sees the end at once); the others leave it to the proxy's
            // timeouts (1 s here, checked on a one-second heartbeat), which makes them the slow cases.
            return (frames, random.Next(4) > 0);
        }

        private static T Pick<T>(Random random, params T[] items) => items[random.Next(items.Length)];

        private static byte[] RandomBytes(Random random, int length)
        {
            var bytes = new byte[length];
            random.NextBytes(bytes);
            return bytes;
        }

        internal static byte[] Block(params (string Name, string Value)[] fields)
        {
            var encoder = new HPackEncoder();
            var block = new byte[4096];
            encoder.TryBeginHeaderBlock(block, out int length);
            foreach (var (name, value) in fields)
            {
                encoder.TryEncode(Encoding.ASCII.GetBytes(name), Encoding.ASCII.GetBytes(value), HPackIndexing.WithoutIndexing, block.AsSpan(length), out int written);
                length += written;
            }
            return block[..length];
        }

        private static byte[] Frame(Http2FrameType type, Http2Flags flags, int stream, byte[] payload, int declaredLength = -1)
        {
            var frame = new byte[9 + payload.Length];
            int length = declaredLength >= 0 ? declaredLength : payload.Length;
            frame[0] = (byte)(length >> 16);
            frame[1] = (byte)(length >> 8);
            frame[2] = (byte)length;
            frame[3] = (byte)type;
            frame[4] = (byte)flags;
            BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(5), (uint)stream);
            payload.CopyTo(frame, 9);
            return frame;
        }

        /// <summary>Keeps the request's :path (the proxy's encoder may index it: the decoder holds the table).</summary>
        private struct PathSink : IHeaderSink
        {
            public string? Path;

            public void OnStaticIndexedHeader(int index) => Add(HPackStaticTable.Name(index), HPackStaticTable.Value(index));

            public void OnStaticIndexedHeader(int index, ReadOnlySpan<byte> value, bool neverIndexed) => Add(HPackStaticTable.Name(index), value);

            public void OnHeader(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, bool neverIndexed) => Add(name, value);

            private void Add(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
            {
                if (name.SequenceEqual(":path"u8))
                {
                    Path = Encoding.ASCII.GetString(value);
                }
            }
        }
    }
}
