namespace Proxy.Pipeline.Filters;

/// <summary>
/// The compiled edits of a <c>request_headers</c> or <c>response_headers</c> policy: names to drop (the <c>remove</c>
/// list and the names of <c>set</c>), then fields to add (<c>add</c>, then <c>set</c>). Every name and value is
/// encoded once here, so a request copies bytes and nothing else.
/// </summary>
internal sealed class HeaderRewrite(byte[][] remove, byte[][] addNames, byte[][] addValues)
{
    public byte[][] Remove { get; } = remove;
    public byte[][] AddNames { get; } = addNames;
    public byte[][] AddValues { get; } = addValues;
}

/// <summary>
/// The built-in <c>request_headers</c> policy: edits the request head sent upstream, in the upstream-request phase (so
/// each try gets the edits once). Written against the public filter API only.
/// </summary>
internal sealed class UpstreamHeaderRewriteFilter(HeaderRewrite edits) : IUpstreamRequestFilter
{
    public HeaderRewrite Edits { get; } = edits;

    public void OnUpstreamRequest(RequestContext context)
    {
        HeaderRewrite edits = Edits;
        foreach (byte[] name in edits.Remove)
        {
            context.RemoveUpstreamHeader(name);
        }
        byte[][] names = edits.AddNames, values = edits.AddValues;
        for (int i = 0; i < names.Length; i++)
        {
            context.AddUpstreamHeader(names[i], values[i]);
        }
    }
}

/// <summary>
/// The built-in <c>response_headers</c> policy: edits the response head sent to the client, in the response-headers
/// phase (upstream answers and local answers alike). Written against the public filter API only.
/// </summary>
internal sealed class ResponseHeaderRewriteFilter(HeaderRewrite edits) : IResponseHeadersFilter
{
    public HeaderRewrite Edits { get; } = edits;

    public void OnResponseHeaders(RequestContext context)
    {
        HeaderRewrite edits = Edits;
        foreach (byte[] name in edits.Remove)
        {
            context.RemoveResponseHeader(name);
        }
        byte[][] names = edits.AddNames, values = edits.AddValues;
        for (int i = 0; i < names.Length; i++)
        {
            context.AddResponseHeader(names[i], values[i]);
        }
    }
}
