using System.Text;

namespace Proxy.FunctionalTests.Infrastructure;

/// <summary>A request or response as the tests' own parser saw it on the wire.</summary>
internal sealed class HttpMessage
{
    public required string StartLine { get; init; }
    public List<KeyValuePair<string, string>> Headers { get; } = [];

    // Request line parts (RFC 9112 section 3).
    public string Method { get; init; } = "";
    public string Target { get; init; } = "";

    // Status line parts (RFC 9112 section 4).
    public int Status { get; init; }
    public string Reason { get; init; } = "";

    public string Version { get; init; } = "";

    /// <summary>The body when it was collected; empty when it went to another sink.</summary>
    public byte[] Body { get; set; } = [];
    public long BodyLength { get; set; }
    public bool Chunked { get; set; }
    /// <summary>Sizes of the chunks as received (chunked bodies only).</summary>
    public List<long> ChunkSizes { get; } = [];
    public List<KeyValuePair<string, string>> Trailers { get; } = [];
    /// <summary>1xx responses received before this final response.</summary>
    public List<HttpMessage> Interim { get; } = [];
    /// <summary>True when the body was delimited by the end of the connection.</summary>
    public bool CloseDelimited { get; set; }

    public string BodyText => Encoding.UTF8.GetString(Body);

    public string? Header(string name)
    {
        foreach (var (key, value) in Headers)
        {
            if (string.Equals(key, name, StringComparison.OrdinalIgnoreCase))
            {
                return value;
            }
        }
        return null;
    }

    public string[] HeaderValues(string name)
    {
        var values = new List<string>();
        foreach (var (key, value) in Headers)
        {
            if (string.Equals(key, name, StringComparison.OrdinalIgnoreCase))
            {
                values.Add(value);
            }
        }
        return [.. values];
    }

    public bool HasHeader(string name) => Header(name) is not null;

    /// <summary>True when a Connection field lists <paramref name="token"/>.</summary>
    public bool ConnectionHas(string token)
    {
        foreach (var value in HeaderValues("connection"))
        {
            foreach (var part in value.Split(','))
            {
                if (string.Equals(part.Trim(), token, StringComparison.OrdinalIgnoreCase))
                {
                    return true;
                }
            }
        }
        return false;
    }

    public override string ToString()
    {
        var sb = new StringBuilder(StartLine).Append('\n');
        foreach (var (key, value) in Headers)
        {
            sb.Append(key).Append(": ").Append(value).Append('\n');
        }
        sb.Append($"[body {BodyLength} bytes{(Chunked ? ", chunked" : "")}{(CloseDelimited ? ", close-delimited" : "")}]");
        return sb.ToString();
    }
}
