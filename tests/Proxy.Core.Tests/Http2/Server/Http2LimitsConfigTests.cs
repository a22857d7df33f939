using Proxy.Configuration;
using Proxy.Http;

namespace Proxy.Core.Tests.Http2.Server;

public sealed class Http2LimitsConfigTests
{
    private static ConfigLoadResult Load(string yaml) => ConfigLoader.LoadText(yaml, "h2.yaml");

    [Fact]
    public void Compile_NoHttp2Block_Defaults()
    {
        var result = Load("""
            listeners:
              - { name: a, address: "127.0.0.1:0" }
            """);

        Assert.True(result.Success, string.Join("\n", result.Errors));
        Assert.Equal(Http2Limits.Default, result.Snapshot!.Listeners[0].Limits.Http2);
    }

    [Fact]
    public void Compile_ServerWideAndListenerHttp2Limits_MergedKeyByKey()
    {
        var result = Load("""
            limits:
              http2:
                max_concurrent_streams: 50
                max_header_list_size: 16KiB
                initial_window_size: 1MiB
                connection_window_size: 4MiB
                max_frame_size: 32KiB
                rapid_reset: { max: 20, window: 5s }
                max_control_frames_per_second: 300
                send_stall_timeout: 2s
            listeners:
              - { name: a, address: "127.0.0.1:0" }
              - { name: b, address: "127.0.0.1:0", limits: { http2: { max_concurrent_streams: 7, rapid_reset: { max: 3 } } } }
            """);

        Assert.True(result.Success, string.Join("\n", result.Errors));
        var a = result.Snapshot!.Listeners[0].Limits.Http2;
        var b = result.Snapshot.Listeners[1].Limits.Http2;
        Assert.Equal(50, a.MaxConcurrentStreams);
        Assert.Equal(16 * 1024, a.MaxHeaderListSize);
        Assert.Equal(1024 * 1024, a.InitialWindowSize);
        Assert.Equal(4 * 1024 * 1024, a.ConnectionWindowSize);
        Assert.Equal(32 * 1024, a.MaxFrameSize);
        Assert.Equal(20, a.RapidResetMax);
        Assert.Equal(TimeSpan.FromSeconds(5), a.RapidResetWindow);
        Assert.Equal(300, a.MaxControlFramesPerSecond);
        Assert.Equal(TimeSpan.FromSeconds(2), a.SendStallTimeout);
        Assert.Equal(7, b.MaxConcurrentStreams);
        Assert.Equal(3, b.RapidResetMax);
        Assert.Equal(TimeSpan.FromSeconds(5), b.RapidResetWindow);
        Assert.Equal(16 * 1024, b.MaxHeaderListSize);
    }

    [Theory]
    [InlineData("max_frame_size: 1000", "max_frame_size")]
    [InlineData("max_frame_size: 16MiB", "max_frame_size")]
    [InlineData("initial_window_size: 1000", "initial_window_size")]
    [InlineData("max_concurrent_streams: 0", "max_concurrent_streams")]
    [InlineData("max_streams: 10", "max_streams")]
    [InlineData("rapid_reset: { max: 1, windw: 1s }", "windw")]
    public void Load_InvalidHttp2Limit_ReportsTheKey(string entry, string key)
    {
        var result = Load($$"""
            limits: { http2: { {{entry}} } }
            listeners:
              - { name: a, address: "127.0.0.1:0" }
            """);

        Assert.False(result.Success);
        Assert.Contains(result.Errors, e => e.ToString().Contains(key, StringComparison.Ordinal));
    }
}
