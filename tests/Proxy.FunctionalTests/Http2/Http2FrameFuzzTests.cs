using System.Buffers.Binary;
using System.Text;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;

namespace Proxy.FunctionalTests.Http2;

/// <summary>
/// Random frame sequences against a live proxy (seeded, so a failure names the case that reproduces it): valid
/// requests mixed with malformed frames, stream ids out of order, broken padding, bad HPACK, forbidden and injected
/// header fields. Whatever arrives, the connection keeps answering PING or ends with GOAWAY or a close (never a hang),
/// the upstream behind the proxy receives only well-formed HTTP/1.1 with no field smuggled in through a CR or LF in an
/// HPACK literal, every connection is released once its client goes, and the process keeps serving.
/// </summary>
public sealed class Http2FrameFuzzTests
{
    // A longer campaign with other seeds: PROXY_FUZZ_CASES=20000 PROXY_FUZZ_SEED=7 (the suite runs the fixed 400).
    private static readonly int Cases = FromEnvironment("PROXY_FUZZ_CASES", 400);
    private static readonly int Seed = FromEnvironment("PROXY_FUZZ_SEED", 20261128);

    private static int FromEnvironment(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int value) ? value : fallback;

    /// <summary>Values that must never reach an upstream as they are: a CR or LF would start a field of its own.</summary>
    private static readonly string[] EvilValues =
    [
        "a\r\nx-injected: 1", "a\nx-injected: 1", "a\rx-injected: 1", "a\0b", " padded ", "",
        "chunked", "gzip", "trailers", "close", "100-continue", "0", "-1", "99999999999999999999", "1, 2",
    ];

    private static readonly string[] Names =
    [
        "x-test", "X-Upper", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
        "proxy-connection", "host", "cookie", "expect", ":path", ":method", ":authority", ":scheme", ":status",
        ":protocol", ":unknown", "bad name", "bad:name", "",
    ];

    private static readonly string[] Paths = ["/hello", "/fuzz", "/fuzz?a=b", "*", "", "relative", "/a b", "//x/../y", "http://other/"];

    private static readonly string[] Methods = ["GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "get", "G T", ""];

    [Fact]
    public async Task RandomFrameSequences_ProxyAnswersOrClosesAndStaysHealthy()
    {
        await using var scenario = await ProxyScenario.StartAsync(UpstreamBehaviors.Ok());
        var proxy = scenario.Proxy;
        var outcomes = new Dictionary<string, int>();
        for (int i = 0; i < Cases; i++)
        {
            var random = new Random(Seed + i);
            string outcome = await RunCaseAsync(proxy, random, i);
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            if (i % 50 == 49)
            {
                await Http2AttackTests.AssertHealthyAsync(proxy);
            }
        }

        // Every client is gone: the proxy holds no connection of theirs (a stream or bridge left waiting would keep one).
        await FuzzAssert.AllConnectionsReleasedAsync(proxy);
        await Http2AttackTests.AssertHealthyAsync(proxy);

        // What the upstream received parsed as HTTP/1.1 with the tests' strict reader, and no field came from a value.
        Exception[] malformed = scenario.Upstream.Errors.Where(e => e is InvalidDataException or FormatException).ToArray();
        Assert.True(malformed.Length == 0, "upstream could not parse what the proxy sent: " + string.Join("; ", malformed.Select(e => e.Message)));
        Assert.DoesNotContain("x-injected", scenario.Upstream.ReceivedText, StringComparison.OrdinalIgnoreCase);
        // The run exercised both sides: requests went through, and malformed input was refused.
        Assert.True(scenario.Upstream.Requests.Length > 0, "no request reached the upstream: " + Describe(outcomes));
        Assert.True(outcomes.GetValueOrDefault("ping-ack") > 0, "no connection outlived its case's frames: " + Describe(outcomes));
        Assert.True(outcomes.Keys.Any(k => k.StartsWith("goaway", StringComparison.Ordinal)), "no case ended in GOAWAY: " + Describe(outcomes));
    }

    private static string Describe(Dictionary<string, int> outcomes) =>
        string.Join(", ", outcomes.OrderBy(o => o.Key).Select(o => $"{o.Key} {o.Value}"));

    /// <summary>Sends one random sequence, then a PING; returns how the connection answered it.</summary>
    private static async Task<string> RunCaseAsync(TestProxy proxy, Random random, int index)
    {
        await using var client = await Http2TestClient.ConnectAsync(proxy.Public);
        var sent = new StringBuilder();
        var streams = new StreamIds();
        try
        {
            int actions = random.Next(1, 7);
            for (int a = 0; a < actions; a++)
            {
                sent.Append(await SendRandomFrameAsync(client, random, streams)).Append("; ");
            }
            byte[] ping = BitConverter.GetBytes(0x5eed_0000_0000_0000L + index);
            await client.SendFrameAsync(Http2FrameType.PING, Http2Flags.None, 0, ping);
            return await AwaitPingAckOrEndAsync(client, ping, index, sent);
        }
        catch (IOException)
        {
            // The proxy closed the connection while we were still writing (after a GOAWAY we had not read yet).
            return "closed";
        }
    }

    private static async Task<string> AwaitPingAckOrEndAsync(Http2TestClient client, byte[] ping, int index, StringBuilder sent)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            TimeSpan left = deadline - DateTime.UtcNow;
            Http2Frame? frame;
            try
            {
                frame = left > TimeSpan.Zero ? await client.ReadFrameAsync(left) : throw new OperationCanceledException();
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"case {index} (seed {Seed + index}): neither PING ACK, GOAWAY nor close within 10 s after: {sent}");
                throw;
            }
            if (frame is null)
            {
                return "closed";
            }
            if (frame.Type == Http2FrameType.GOAWAY)
            {
                return "goaway " + frame.ErrorCode;
            }
            if (frame.Type == Http2FrameType.PING && frame.Has(Http2Flags.ACK) && frame.Payload.AsSpan().SequenceEqual(ping))
            {
                return "ping-ack";
            }
        }
    }

    private static async Task<string> SendRandomFrameAsync(Http2TestClient client, Random random, StreamIds streams)
    {
        // Weighted: requests most often, so that many cases get past the first frame and reach deeper stream states.
        int kind = Math.Max(0, random.Next(16) - 4);
        int stream = streams.Pick(random, opening: kind is <= 2 or 4 or 5);
        switch (kind)
        {
            case 0:
            case 1:
            case 2:
            {
                // A request, often valid, sometimes with a forbidden, injected or misplaced field.
                var fields = RandomRequestFields(random);
                bool endStream = random.Next(2) == 0;
                var flags = Http2Flags.END_HEADERS | (endStream ? Http2Flags.END_STREAM : Http2Flags.None);
                await client.SendFrameAsync(Http2FrameType.HEADERS, flags, stream, client.Encode(fields));
                return $"HEADERS {stream} end={endStream} [{string.Join(", ", fields.Select(f => f.Name + "=" + Escape(f.Value)))}]";
            }
            case 3:
            {
                byte[] data = RandomBytes(random, random.Next(0, 64));
                bool endStream = random.Next(2) == 0;
                if (random.Next(4) == 0)
                {
                    // PADDED with a pad length that may exceed the payload (RFC 9113 section 6.1: PROTOCOL_ERROR).
                    byte[] padded = [(byte)random.Next(0, 80), .. data];
                    await client.SendFrameAsync(Http2FrameType.DATA, Http2Flags.PADDED | (endStream ? Http2Flags.END_STREAM : 0), stream, padded);
                    return $"DATA {stream} padded({padded[0]}) {data.Length}";
                }
                await client.SendFrameAsync(Http2FrameType.DATA, endStream ? Http2Flags.END_STREAM : Http2Flags.None, stream, data);
                return $"DATA {stream} {data.Length} end={endStream}";
            }
            case 4:
            {
                // A header block split over CONTINUATION, or a CONTINUATION nobody announced.
                byte[] block = client.Encode(RandomRequestFields(random));
                int cut = random.Next(0, block.Length + 1);
                if (random.Next(3) > 0)
                {
                    await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_STREAM, stream, block.AsSpan(0, cut));
                }
                await client.SendFrameAsync(Http2FrameType.CONTINUATION, Http2Flags.END_HEADERS, random.Next(4) == 0 ? (stream + 2) & int.MaxValue : stream, block.AsSpan(cut));
                return $"HEADERS+CONTINUATION {stream} cut {cut}/{block.Length}";
            }
            case 5:
            {
                byte[] garbage = RandomBytes(random, random.Next(1, 40));
                await client.SendFrameAsync(Http2FrameType.HEADERS, Http2Flags.END_HEADERS | Http2Flags.END_STREAM, stream, garbage);
                return $"HEADERS {stream} garbage {garbage.Length}";
            }
            case 6:
            {
                byte[] payload = RandomBytes(random, random.Next(4) == 0 ? random.Next(0, 9) : 4);
                await client.SendFrameAsync(Http2FrameType.RST_STREAM, Http2Flags.None, random.Next(5) == 0 ? 0 : stream, payload);
                return $"RST_STREAM {stream} {payload.Length}";
            }
            case 7:
            {
                int length = random.Next(3) == 0 ? random.Next(0, 14) : 6 * random.Next(0, 3);
                byte[] payload = RandomBytes(random, length);
                if (length >= 6 && random.Next(2) == 0)
                {
                    // A known setting with a value that may be out of range (ENABLE_PUSH 2, INITIAL_WINDOW_SIZE 2^31...).
                    BinaryPrimitives.WriteUInt16BigEndian(payload, (ushort)random.Next(1, 7));
                }
                var flags = random.Next(4) == 0 ? Http2Flags.ACK : Http2Flags.None;
                await client.SendFrameAsync(Http2FrameType.SETTINGS, flags, random.Next(6) == 0 ? 1 : 0, payload);
                return $"SETTINGS {flags} {length}";
            }
            case 8:
            {
                byte[] payload = RandomBytes(random, 4);
                int increment = random.Next(3) switch { 0 => 0, 1 => int.MaxValue, _ => random.Next(1, 70_000) };
                BinaryPrimitives.WriteInt32BigEndian(payload, increment);
                int target = random.Next(2) == 0 ? 0 : stream;
                await client.SendFrameAsync(Http2FrameType.WINDOW_UPDATE, Http2Flags.None, target, payload.AsSpan(0, random.Next(6) == 0 ? 3 : 4));
                return $"WINDOW_UPDATE {target} +{increment}";
            }
            case 9:
            {
                byte[] payload = RandomBytes(random, random.Next(4) == 0 ? random.Next(0, 8) : 5);
                if (payload.Length >= 4 && random.Next(2) == 0)
                {
                    BinaryPrimitives.WriteInt32BigEndian(payload, stream); // depends on itself (RFC 9113 section 5.3.1)
                }
                await client.SendFrameAsync(Http2FrameType.PRIORITY, Http2Flags.None, stream, payload);
                return $"PRIORITY {stream} {payload.Length}";
            }
            case 10:
            {
                var type = (Http2FrameType)random.Next(0x0a, 0x100); // unknown types must be ignored (section 5.5)
                if (random.Next(4) == 0)
                {
                    type = random.Next(2) == 0 ? Http2FrameType.PUSH_PROMISE : Http2FrameType.PING;
                }
                byte[] payload = RandomBytes(random, random.Next(0, 20));
                await client.SendFrameAsync(type, (Http2Flags)random.Next(0, 256), random.Next(3) == 0 ? 0 : stream, payload);
                return $"{type} {stream} {payload.Length}";
            }
            default:
            {
                byte[] payload = RandomBytes(random, random.Next(0, 12));
                await client.SendFrameAsync(Http2FrameType.GOAWAY, Http2Flags.None, random.Next(4) == 0 ? stream : 0, payload);
                return $"GOAWAY {payload.Length}";
            }
        }
    }

    /// <summary>
    /// Stream ids: a request mostly opens the next one, other frames mostly go to a stream already opened (a frame on
    /// an idle stream is a connection error, which would end most cases at their first frame); sometimes an id the
    /// RFC forbids (zero, even, reused, the largest).
    /// </summary>
    private sealed class StreamIds
    {
        private int _next = 1;

        public int Pick(Random random, bool opening)
        {
            switch (random.Next(40))
            {
                case 0:
                case 1:
                    return 0;
                case 2:
                case 3:
                    return _next + 1; // even: server-initiated
                case 4:
                    return int.MaxValue;
                default:
                    if (opening || _next == 1)
                    {
                        int id = _next;
                        _next += 2;
                        return id;
                    }
                    return 1 + 2 * random.Next(0, (_next - 1) / 2); // one already opened (maybe closed since)
            }
        }
    }

    private static (string Name, string Value)[] RandomRequestFields(Random random)
    {
        var fields = new List<(string, string)>
        {
            (":method", random.Next(5) == 0 ? Pick(random, Methods) : (random.Next(2) == 0 ? "GET" : "POST")),
            (":scheme", random.Next(10) == 0 ? "ftp" : "http"),
            (":authority", random.Next(10) == 0 ? Pick(random, EvilValues) : "example.test"),
            (":path", random.Next(4) == 0 ? Pick(random, Paths) : "/fuzz"),
        };
        int mutations = random.Next(0, 4);
        for (int m = 0; m < mutations; m++)
        {
            switch (random.Next(4))
            {
                case 0:
                    fields.RemoveAt(random.Next(fields.Count));
                    break;
                case 1:
                    fields.Insert(random.Next(fields.Count + 1), (Pick(random, Names), Pick(random, EvilValues)));
                    break;
                default:
                    fields.Add((Pick(random, Names), Pick(random, EvilValues)));
                    break;
            }
        }
        return [.. fields];
    }

    private static T Pick<T>(Random random, T[] items) => items[random.Next(items.Length)];

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    private static string Escape(string value) => value.Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal).Replace("\0", "\\0", StringComparison.Ordinal);
}
