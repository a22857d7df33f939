using System.Buffers;
using BenchmarkDotNet.Attributes;
using Proxy.Benchmarks.Http1;
using Proxy.Http2;

namespace Proxy.Benchmarks.Http2;

/// <summary>Frame header parsing (contiguous and split across segments), a SETTINGS frame, and writing frames.</summary>
[MemoryDiagnoser]
public class Http2FrameBenchmarks
{
    private ReadOnlySequence<byte> _dataFrame;
    private ReadOnlySequence<byte> _dataFrameSplit;
    private ReadOnlySequence<byte> _settingsFrame;
    private readonly byte[] _payload = new byte[1024];
    private readonly byte[] _output = new byte[32 * 1024];
    private readonly byte[] _headerBlock = new byte[300];

    [GlobalSetup]
    public void Setup()
    {
        byte[] data = new byte[Http2FrameHeader.Size + 1024];
        Http2FrameWriter.WriteData(data, 1, _payload, endStream: false);
        _dataFrame = new ReadOnlySequence<byte>(data);
        _dataFrameSplit = BenchSegments.Split(data, 4);

        byte[] settings = new byte[Http2FrameHeader.Size + 6 * 6];
        Http2FrameWriter.WriteSettings(settings,
        [
            new(Http2SettingsParameter.SETTINGS_HEADER_TABLE_SIZE, 4096),
            new(Http2SettingsParameter.SETTINGS_ENABLE_PUSH, 0),
            new(Http2SettingsParameter.SETTINGS_MAX_CONCURRENT_STREAMS, 100),
            new(Http2SettingsParameter.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20),
            new(Http2SettingsParameter.SETTINGS_MAX_FRAME_SIZE, 16_384),
            new(Http2SettingsParameter.SETTINGS_MAX_HEADER_LIST_SIZE, 32_768),
        ]);
        _settingsFrame = new ReadOnlySequence<byte>(settings);
    }

    [Benchmark(Baseline = true)]
    public int ReadFrameHeader()
    {
        Http2FrameReader.TryReadFrameHeader(_dataFrame, 16_384, out Http2FrameHeader header, out _);
        return header.Length;
    }

    [Benchmark]
    public int ReadFrameHeaderSplit()
    {
        Http2FrameReader.TryReadFrameHeader(_dataFrameSplit, 16_384, out Http2FrameHeader header, out _);
        return header.Length;
    }

    [Benchmark]
    public long ReadDataFrame()
    {
        Http2FrameReader.TryReadFrame(_dataFrame, 16_384, out Http2FrameHeader header, out ReadOnlySequence<byte> payload, out _, out _);
        Http2FrameReader.ReadData(header, payload, out ReadOnlySequence<byte> data);
        return data.Length;
    }

    [Benchmark]
    public uint ReadSettingsFrame()
    {
        Http2FrameReader.TryReadFrame(_settingsFrame, 16_384, out Http2FrameHeader header, out ReadOnlySequence<byte> payload, out _, out _);
        Http2Settings settings = Http2Settings.Default;
        Http2FrameReader.ReadSettings(header, payload, ref settings);
        return settings.InitialWindowSize;
    }

    [Benchmark]
    public int WriteDataAndWindowUpdate()
    {
        int written = Http2FrameWriter.WriteData(_output, 1, _payload, endStream: false);
        written += Http2FrameWriter.WriteWindowUpdate(_output.AsSpan(written), 1, 1024);
        return written;
    }
}
