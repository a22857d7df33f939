namespace Proxy.Http;

/// <summary>Request methods the engine recognises without looking at bytes again.</summary>
internal enum HttpMethod : byte
{
    /// <summary>A syntactically valid method that is not one of the well-known ones (the bytes stay in the head).</summary>
    Custom = 0,
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Connect,
}

/// <summary>Protocol version of a message.</summary>
internal enum HttpVersion : byte
{
    Unknown = 0,
    Http10,
    Http11,
    Http2,
}
