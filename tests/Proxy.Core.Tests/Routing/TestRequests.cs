using System.Text;
using Proxy.Http;
using HttpMethod = Proxy.Http.HttpMethod;

namespace Proxy.Core.Tests.Routing;

/// <summary>
/// Lays out "METHOD target HTTP/1.1\r\nName: value\r\n...\r\n\r\n" in a <see cref="RequestHead"/> and sets
/// the offsets by hand, the way the HTTP/1.1 parser will, so routing tests do not depend on the parser.
/// </summary>
internal static class TestRequests
{
    public static RequestHead Create(string method, string target, string? host = null, params (string Name, string Value)[] headers)
    {
        var head = new RequestHead();
        Fill(head, method, target, host, headers);
        return head;
    }

    public static void Fill(RequestHead head, string method, string target, string? host, params (string Name, string Value)[] headers)
    {
        head.Reset();
        var text = new StringBuilder();
        text.Append(method).Append(' ').Append(target).Append(" HTTP/1.1\r\n");
        var fields = new List<(string Name, string Value)>();
        if (host is not null)
        {
            fields.Add(("Host", host));
        }
        fields.AddRange(headers);
        foreach (var (name, value) in fields)
        {
            text.Append(name).Append(": ").Append(value).Append("\r\n");
        }
        text.Append("\r\n");

        // Latin-1 keeps one byte per char, so tests can place arbitrary bytes with \u00XX.
        byte[] bytes = Encoding.Latin1.GetBytes(text.ToString());
        bytes.CopyTo(head.PrepareBuffer(bytes.Length));

        head.MethodStart = 0;
        head.MethodLength = method.Length;
        head.Method = method switch
        {
            "GET" => HttpMethod.Get,
            "HEAD" => HttpMethod.Head,
            "POST" => HttpMethod.Post,
            "PUT" => HttpMethod.Put,
            "DELETE" => HttpMethod.Delete,
            "OPTIONS" => HttpMethod.Options,
            "PATCH" => HttpMethod.Patch,
            _ => HttpMethod.Custom,
        };
        head.TargetStart = method.Length + 1;
        head.TargetLength = target.Length;
        int q = target.IndexOf('?');
        head.PathLength = q < 0 ? target.Length : q;
        head.Version = HttpVersion.Http11;

        int offset = head.TargetStart + target.Length + " HTTP/1.1\r\n".Length;
        for (int i = 0; i < fields.Count; i++)
        {
            var (name, value) = fields[i];
            ref HeaderField f = ref head.AddField();
            f.NameStart = offset;
            f.NameLength = name.Length;
            f.ValueStart = offset + name.Length + 2;
            f.ValueLength = value.Length;
            if (name.Equals("host", StringComparison.OrdinalIgnoreCase))
            {
                f.Known = KnownHeader.Host;
                head.HostIndex = i;
            }
            offset += name.Length + 2 + value.Length + 2;
        }
    }
}
