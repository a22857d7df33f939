using System.Globalization;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>Assertions shared by the functional tests.</summary>
internal static class ProxyAssert
{
    /// <summary>
    /// A local error answer: the status, <c>content-type: text/plain</c>, an exact <c>content-length</c> and a body
    /// "{status} {reason}: {details_code}\n". The details code itself is not pinned (it may still change).
    /// </summary>
    public static void ErrorAnswer(HttpMessage response, int status)
    {
        var context = $"\n{response}\n{response.BodyText}";
        Assert.True(status == response.Status, $"Expected {status}, got:{context}");
        Assert.True((response.Header("content-type") ?? "").StartsWith("text/plain", StringComparison.OrdinalIgnoreCase), "Error answers are text/plain:" + context);
        var length = response.Header("content-length");
        Assert.True(length is not null && long.Parse(length, CultureInfo.InvariantCulture) == response.Body.Length, "Error answers carry an exact Content-Length:" + context);
        // "{status} {reason}: {details_code}\n"; the details code itself is not pinned.
        Assert.True(
            response.BodyText.StartsWith($"{status} ", StringComparison.Ordinal)
            && response.BodyText.Contains(": ", StringComparison.Ordinal)
            && response.BodyText.EndsWith('\n'),
            "Error body is not \"{status} {reason}: {details_code}\\n\":" + context);
    }

    /// <summary>A client-side rejection: an error answer with <c>connection: close</c>, then the connection closes.</summary>
    public static async Task RejectedAndClosedAsync(HttpMessage response, RawClient client, int status)
    {
        ErrorAnswer(response, status);
        Assert.True(response.ConnectionHas("close"), "Rejection without connection: close: " + response);
        await client.AssertClosedAsync();
    }

    /// <summary>The upstream accepted no connection at all.</summary>
    public static void UpstreamSawNothing(RecordingUpstream upstream)
    {
        Assert.True(upstream.ConnectionCount == 0, $"The upstream saw {upstream.ConnectionCount} connection(s):\n{upstream.ReceivedText}");
    }

    /// <summary>The upstream's behaviours raised no error (for example the tests' parser refusing forwarded bytes).</summary>
    public static void UpstreamHadNoErrors(RecordingUpstream upstream)
    {
        var errors = upstream.Errors;
        Assert.True(errors.Length == 0, "Upstream error: " + string.Join("\n", errors.Select(e => e.ToString())));
    }
}
