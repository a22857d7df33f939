using Proxy.Http2;
using Proxy.Http2.FlowControl;

namespace Proxy.Core.Tests.Http2;

public class FlowControlWindowTests
{
    [Fact]
    public void TryConsume_WithinWindow_Reduces()
    {
        FlowControlWindow window = new(65_535);
        Assert.Equal(Http2ErrorCode.NO_ERROR, window.TryConsume(65_535));
        Assert.Equal(0, window.Available);
    }

    [Fact]
    public void TryConsume_BeyondWindow_FlowControlErrorAndUnchanged()
    {
        FlowControlWindow window = new(100);
        Assert.Equal(Http2ErrorCode.FLOW_CONTROL_ERROR, window.TryConsume(101));
        Assert.Equal(100, window.Available);
    }

    [Fact]
    public void TryAdd_UpToMaximum_Accepted()
    {
        FlowControlWindow window = new(65_535);
        Assert.Equal(Http2ErrorCode.NO_ERROR, window.TryAdd(int.MaxValue - 65_535));
        Assert.Equal(int.MaxValue, window.Available);
    }

    [Fact]
    public void TryAdd_AboveMaximum_FlowControlErrorAndUnchanged()
    {
        FlowControlWindow window = new(65_535);
        Assert.Equal(Http2ErrorCode.FLOW_CONTROL_ERROR, window.TryAdd(int.MaxValue - 65_534));
        Assert.Equal(65_535, window.Available);
    }

    [Fact]
    public void TryApplyInitialSizeChange_Shrink_GoesNegativeThenRecovers()
    {
        FlowControlWindow window = new(65_535);
        Assert.Equal(Http2ErrorCode.NO_ERROR, window.TryConsume(60_000));
        Assert.Equal(Http2ErrorCode.NO_ERROR, window.TryApplyInitialSizeChange(65_535, 0));
        Assert.Equal(-60_000, window.Available);
        Assert.Equal(0, window.Take(10));
        Assert.Equal(Http2ErrorCode.NO_ERROR, window.TryAdd(60_010));
        Assert.Equal(10, window.Take(100));
    }

    [Fact]
    public void TryApplyInitialSizeChange_GrowPastMaximum_FlowControlError()
    {
        FlowControlWindow window = new(65_535);
        Assert.Equal(Http2ErrorCode.NO_ERROR, window.TryAdd(1_000));
        Assert.Equal(Http2ErrorCode.FLOW_CONTROL_ERROR, window.TryApplyInitialSizeChange(65_535, int.MaxValue));
        Assert.Equal(66_535, window.Available);
    }

    [Fact]
    public void Take_MoreThanAvailable_TakesWhatIsThere()
    {
        FlowControlWindow window = new(10);
        Assert.Equal(4, window.Take(4));
        Assert.Equal(6, window.Take(100));
        Assert.Equal(0, window.Available);
    }
}
