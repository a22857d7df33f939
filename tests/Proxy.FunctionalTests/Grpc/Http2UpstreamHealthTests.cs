using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Proxy.FunctionalTests.Http2;
using Proxy.FunctionalTests.Infrastructure;
using Proxy.Http2;
using Proxy.Model;

namespace Proxy.FunctionalTests.Grpc;

/// <summary>
/// Passive health on an HTTP/2 upstream (docs/resilience.md, "Outlier detection"): each failed try counts once against
/// its destination, and a client that breaks its own upload never counts against it, whichever side sees the end first.
/// </summary>
public sealed class Http2UpstreamHealthTests
{
    private static ClusterModel Backend(TestProxy proxy) => proxy.Server.Snapshot.Clusters["backend"];

    /// <summary>
    /// The request's HEADERS cannot be written: the upstream stops reading at their first bytes (a header section far
    /// larger than the socket buffers, so the proxy's write waits), then resets the connection. A POST is not replayed:
    /// 502 upstream_request_write_failed, one failure against the destination, so a two-failure outlier rule does not
    /// eject it. The HTTP/2 path reported it, and the forward loop again: one failed write ejected the destination.
    /// </summary>
    [Fact]
    public async Task HeadersWriteFails_OneTry_CountsOneFailure()
    {
        // Takes the preface and SETTINGS, stops reading at the first HEADERS frame, resets the connection a second later.
        await using var upstream = new RawH2Upstream(_ => RawH2Behavior.Ok, stallAtHeaders: true, receiveBufferSize: 16 * 1024);
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c",
            "connect_timeout: 5s\noutlier_detection: { consecutive_failures: 2, base_ejection: 30s, max_ejection_percent: 100 }",
            "limits: { max_header_bytes: 64MiB }");
        await using var client = await proxy.ConnectAsync();

        // 32 fields of 512 KiB: 16 MiB of field lines, more than the socket buffers between the two hold.
        var request = new StringBuilder("POST /write HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n");
        string value = new('v', 512 * 1024);
        for (int i = 0; i < 32; i++)
        {
            request.Append("x-big-").Append(i.ToString(CultureInfo.InvariantCulture)).Append(": ").Append(value).Append("\r\n");
        }
        request.Append("\r\n");
        await client.SendAsync(request.ToString());
        var response = await client.ReadResponseAsync("POST", timeout: TimeSpan.FromSeconds(30));

        ProxyAssert.ErrorAnswer(response, 502);
        Assert.Contains("upstream_request_write_failed", response.BodyText, StringComparison.Ordinal);
        Assert.Equal(1, upstream.Requests);
        var destination = Backend(proxy).Destinations[0];
        Assert.True(destination.EjectedUntil == 0, "one failed try must not eject the destination under consecutive_failures: 2");
        Assert.Equal(1, destination.ConsecutiveFailures);
    }

    public static TheoryData<string> ClientBreaks => new() { "reset", "eof", "bad-chunk", "h2-rst" };

    /// <summary>
    /// The client breaks its upload mid-body (its connection reset, its half-close, a malformed chunk, or its HTTP/2
    /// stream reset): the proxy resets the upstream stream, and the head wait may see that reset before the pump has
    /// returned. Never the upstream's failure: with a one-failure outlier rule, twenty such uploads leave the destination
    /// with no failure and not ejected. The failure path used to ask whether the pump had ended: often it had not, and
    /// the client's break was counted against the upstream.
    /// </summary>
    [Theory]
    [MemberData(nameof(ClientBreaks))]
    public async Task ClientBreaksUpload_Repeatedly_NoHealthFailure(string how)
    {
        await using var upstream = await H2Upstream.StartAsync();
        await using var proxy = await ClusterYaml.StartAsync(ClusterYaml.Address($"http://127.0.0.1:{upstream.Port}"), "h2c",
            "connect_timeout: 5s\noutlier_detection: { consecutive_failures: 1, base_ejection: 30s, max_ejection_percent: 100 }");
        var destination = Backend(proxy).Destinations[0];

        for (int i = 0; i < 20; i++)
        {
            if (how == "h2-rst")
            {
                await using var h2 = await Http2TestClient.ConnectAsync(proxy.Public);
                await h2.SendHeadersAsync(1, endStream: false, [.. Http2TestClient.Get("/upload", method: "POST"), ("content-length", "100000")]);
                await h2.SendDataAsync(1, new byte[1000], endStream: false);
                await Task.Delay(50);
                await h2.SendRstAsync(1);
                await Task.Delay(100);
            }
            else
            {
                await using var client = await proxy.ConnectAsync();
                bool chunked = how == "bad-chunk";
                await client.SendAsync(chunked
                    ? "POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + new string('u', 1000) + "\r\n"
                    : "POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 100000\r\n\r\n" + new string('u', 1000));
                // Let the body's first piece reach the upstream: the pump now waits for the client's next bytes.
                await Task.Delay(50);
                switch (how)
                {
                    case "reset":
                        client.Socket.LingerState = new LingerOption(true, 0);
                        client.Socket.Close();
                        break;
                    case "eof":
                        client.ShutdownSend();
                        break;
                    default:
                        await client.SendAsync("zz\r\n"); // not a chunk size (RFC 9112 section 7.1)
                        break;
                }
                if (how != "reset")
                {
                    var response = await client.ReadToCloseAsync(TimeSpan.FromSeconds(15));
                    Assert.True(response.Closed, "The client connection must close after a broken upload.");
                    Assert.False(response.Text.StartsWith("HTTP/1.1 502", StringComparison.Ordinal), response.Text); // not in a random x-request-id
                }
                else
                {
                    await Task.Delay(100);
                }
            }
            Assert.True(destination.ConsecutiveFailures == 0 && destination.EjectedUntil == 0,
                $"upload {i} ({how}): {destination.ConsecutiveFailures} failure(s) counted, ejected until {destination.EjectedUntil}");
        }

        // The destination still serves.
        await using var control = await proxy.ConnectAsync();
        await control.SendAsync("POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello");
        var ok = await control.ReadResponseAsync("POST", timeout: TimeSpan.FromSeconds(15));
        Assert.Equal(200, ok.Status);
        Assert.Equal("5", ok.BodyText);
    }
}
