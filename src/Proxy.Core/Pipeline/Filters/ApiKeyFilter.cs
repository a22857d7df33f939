using System.Numerics;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;

namespace Proxy.Pipeline.Filters;

/// <summary>One configured API key: the SHA-256 of the key, and who presenting it is.</summary>
internal sealed record ApiKeyEntry(byte[] Sha256, string Consumer, string Plan);

/// <summary>The compiled settings of one <c>api_key</c> policy.</summary>
internal sealed record ApiKeyOptions
{
    public required string PolicyName { get; init; }
    /// <summary>The header carrying the key (lower-case); empty when the key comes from the query.</summary>
    public string Header { get; init; } = "";
    /// <summary>The query parameter carrying the key; empty when the key comes from a header.</summary>
    public string QueryParameter { get; init; } = "";
    public required IReadOnlyList<ApiKeyEntry> Keys { get; init; }
    /// <summary>Headers that carry the identity upstream; null when the policy forwards nothing.</summary>
    public IdentityForwardingOptions? ForwardIdentity { get; init; }
}

/// <summary>Counters a built-in filter exports as <c>proxy_policy_decisions_total{policy, decision}</c>.</summary>
internal interface IPolicyDecisionCounters
{
    IEnumerable<(string Decision, long Count)> Decisions { get; }
}

/// <summary>
/// The built-in <c>api_key</c> policy: the request must carry a key (in a header or a query parameter) whose SHA-256 is
/// one of the configured hashes; the key's consumer and plan become the request's <see cref="RequestIdentity"/>.
/// Keys are never stored in clear: the presented key is hashed into a stack buffer and looked up in an
/// open-addressing table keyed by the hash, then compared in full in constant time. No allocation per request.
/// </summary>
internal sealed class ApiKeyFilter : IRequestHeadersFilter, IPolicyDecisionCounters
{
    public const string MissingCode = "api_key_missing";
    public const string InvalidCode = "api_key_invalid";

    /// <summary>Longest key read from the query (percent-decoded into the stack); header keys are hashed in place.</summary>
    public const int MaxQueryKeyBytes = 512;

    private static readonly byte[] s_problemJson = "application/problem+json"u8.ToArray();

    private sealed class Slot(byte[] sha256, byte[] consumer, byte[] plan)
    {
        public readonly byte[] Sha256 = sha256;
        public readonly byte[] Consumer = consumer;
        public readonly byte[] Plan = plan;
    }

    // Open addressing, linear probing, at most half full. The tag (first 8 bytes of the hash; SHA-256 output is
    // uniform, so no further mixing) picks the start and filters probes; a tag of 0 marks an empty slot.
    private readonly ulong[] _tags;
    private readonly Slot?[] _slots;
    private readonly int _mask;
    private readonly byte[] _header;
    private readonly byte[] _query;
    private readonly byte[] _challenge;
    private readonly byte[] _missingBody;
    private readonly byte[] _invalidBody;
    private readonly IdentityForwarding? _forwarding;
    private readonly PolicyDecisionCounts _counts;

    /// <param name="options">The compiled policy.</param>
    /// <param name="running">On a reload, the running <c>api_key</c> filter of the same policy name, if any: its
    /// decision counts go on (<see cref="PolicyDecisionCounts"/>).</param>
    public ApiKeyFilter(ApiKeyOptions options, ApiKeyFilter? running = null)
    {
        if (options.Header.Length == 0 == (options.QueryParameter.Length == 0))
        {
            throw new ArgumentException("Exactly one of Header and QueryParameter is required.", nameof(options));
        }
        Options = options;
        _counts = PolicyDecisionCounts.ContinueFrom(running?._counts);
        _header = Encoding.ASCII.GetBytes(options.Header);
        _query = Encoding.UTF8.GetBytes(options.QueryParameter);
        int size = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(4, options.Keys.Count * 2));
        _tags = new ulong[size];
        _slots = new Slot?[size];
        _mask = size - 1;
        foreach (ApiKeyEntry key in options.Keys)
        {
            if (key.Sha256.Length != 32)
            {
                throw new ArgumentException("A key hash is 32 bytes (SHA-256).", nameof(options));
            }
            ulong tag = Tag(key.Sha256);
            int i = (int)tag & _mask;
            while (_slots[i] is { } taken)
            {
                if (taken.Sha256.AsSpan().SequenceEqual(key.Sha256))
                {
                    throw new ArgumentException("The same key hash is listed twice.", nameof(options));
                }
                i = (i + 1) & _mask;
            }
            _tags[i] = tag;
            _slots[i] = new Slot(key.Sha256, Encoding.UTF8.GetBytes(key.Consumer), Encoding.UTF8.GetBytes(key.Plan));
        }

        _forwarding = options.ForwardIdentity is { IsEmpty: false } forward ? new IdentityForwarding(forward) : null;
        string name = options.PolicyName;
        string where = options.Header.Length > 0 ? $"the '{options.Header}' header" : $"the '{options.QueryParameter}' query parameter";
        // RFC 9110 section 11.6.1: a 401 carries a challenge. There is no registered scheme for API keys; "ApiKey"
        // names ours, with the policy as realm (as Kong's key-auth does with "Key").
        _challenge = Encoding.ASCII.GetBytes($"ApiKey realm=\"{name}\"");
        _missingBody = RateLimitFilter.BuildProblem(401, "Unauthorized", $"An API key in {where} is required by policy '{name}'.");
        _invalidBody = RateLimitFilter.BuildProblem(401, "Unauthorized", $"The API key is not accepted by policy '{name}'.");
    }

    public ApiKeyOptions Options { get; }

    public long AllowedCount => Volatile.Read(ref _counts.Allowed);

    public long RejectedCount => Volatile.Read(ref _counts.Rejected);

    IEnumerable<(string Decision, long Count)> IPolicyDecisionCounters.Decisions => [("allowed", AllowedCount), ("rejected", RejectedCount)];

    public FilterStatus OnRequestHeaders(RequestContext context)
    {
        Span<byte> hash = stackalloc byte[32];
        bool found;
        if (_header.Length > 0)
        {
            found = context.TryGetHeader(_header, out ReadOnlySpan<byte> key, out bool repeated) && !key.IsEmpty;
            if (repeated)
            {
                // Two key fields: we would check one and forward both, and the upstream might read the other.
                return Reject(context, invalid: true);
            }
            if (found)
            {
                SHA256.HashData(key, hash);
            }
        }
        else
        {
            Span<byte> decoded = stackalloc byte[MaxQueryKeyBytes];
            int length = QueryParameter(context.Query, _query, decoded);
            if (length == -2)
            {
                // Present but longer than any key we issue, or badly escaped: no configured key can match.
                return Reject(context, invalid: true);
            }
            found = length > 0;
            if (found)
            {
                SHA256.HashData(decoded[..length], hash);
            }
        }
        if (!found)
        {
            return Reject(context, invalid: false);
        }
        if (Find(hash) is not { } slot)
        {
            return Reject(context, invalid: true);
        }
        context.Identity.SetConsumer(slot.Consumer, slot.Plan);
        _forwarding?.Apply(context);
        Interlocked.Increment(ref _counts.Allowed);
        return FilterStatus.Continue;
    }

    /// <summary>The consumer and plan of <paramref name="key"/> (in clear), or null: tests and benchmarks call this directly.</summary>
    internal (byte[] Consumer, byte[] Plan)? Lookup(ReadOnlySpan<byte> key)
    {
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(key, hash);
        return Find(hash) is { } slot ? (slot.Consumer, slot.Plan) : null;
    }

    private Slot? Find(ReadOnlySpan<byte> hash)
    {
        ulong tag = Tag(hash);
        int i = (int)tag & _mask;
        while (true)
        {
            Slot? slot = _slots[i];
            if (slot is null)
            {
                return null;
            }
            // Constant time over the full hash: the tag compare before it only reveals (to a timing observer)
            // whether 64 bits of SHA-256(guess) match a stored hash, which does not help find a key.
            if (_tags[i] == tag && CryptographicOperations.FixedTimeEquals(slot.Sha256, hash))
            {
                return slot;
            }
            i = (i + 1) & _mask;
        }
    }

    private static ulong Tag(ReadOnlySpan<byte> hash)
    {
        ulong tag = BitConverter.ToUInt64(hash);
        return tag == 0 ? 1 : tag;
    }

    /// <summary>
    /// Finds <paramref name="name"/> in an application/x-www-form-urlencoded query and percent-decodes its value
    /// (RFC 3986 section 2.1) into <paramref name="destination"/>: its length, 0 when absent or empty, -2 when the
    /// value is too long or badly escaped, or when the parameter is there twice. '+' is kept as is (keys are not form
    /// text). Names are compared percent-decoded, as the upstream's query parser will read them.
    /// </summary>
    internal static int QueryParameter(ReadOnlySpan<byte> query, ReadOnlySpan<byte> name, Span<byte> destination)
    {
        int length = 0;
        bool found = false;
        while (NextPair(ref query, out ReadOnlySpan<byte> pair))
        {
            int equals = pair.IndexOf((byte)'=');
            if (!NameEquals(equals < 0 ? pair : pair[..equals], name))
            {
                continue;
            }
            if (found)
            {
                // A second key parameter, however spelled (api%5Fkey, or a bare name with no value): which one an
                // upstream reads is its choice, not ours to guess.
                return -2;
            }
            found = true;
            length = equals < 0 ? 0 : PercentDecode(pair[(equals + 1)..], destination);
        }
        return length;
    }

    /// <summary>True when the pair's <paramref name="encoded"/> name, percent-decoded, is <paramref name="name"/>.</summary>
    private static bool NameEquals(ReadOnlySpan<byte> encoded, ReadOnlySpan<byte> name)
    {
        if (encoded.Length < name.Length)
        {
            return false; // escapes only lengthen a name
        }
        int matched = 0;
        for (int i = 0; i < encoded.Length; i++)
        {
            byte b = encoded[i];
            if (b == (byte)'%')
            {
                // A malformed escape is not the name (nor is it any parser's reading of the name).
                int hi = i + 2 < encoded.Length ? HexValue(encoded[i + 1]) : -1;
                int lo = hi < 0 ? -1 : HexValue(encoded[i + 2]);
                if (lo < 0)
                {
                    return false;
                }
                b = (byte)((hi << 4) | lo);
                i += 2;
            }
            if (matched == name.Length || b != name[matched])
            {
                return false;
            }
            matched++;
        }
        return matched == name.Length;
    }

    /// <summary>The next '&amp;'-separated piece of <paramref name="query"/>, consumed from it.</summary>
    private static bool NextPair(ref ReadOnlySpan<byte> query, out ReadOnlySpan<byte> pair)
    {
        if (query.IsEmpty)
        {
            pair = default;
            return false;
        }
        int amp = query.IndexOf((byte)'&');
        pair = amp < 0 ? query : query[..amp];
        query = amp < 0 ? default : query[(amp + 1)..];
        return true;
    }

    /// <summary>Decodes %XX escapes; -2 when the result does not fit or an escape is malformed.</summary>
    internal static int PercentDecode(ReadOnlySpan<byte> text, Span<byte> destination)
    {
        int written = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (written == destination.Length)
            {
                return -2;
            }
            byte b = text[i];
            if (b == (byte)'%')
            {
                if (i + 2 >= text.Length)
                {
                    return -2;
                }
                int hi = HexValue(text[i + 1]);
                int lo = HexValue(text[i + 2]);
                if (hi < 0 || lo < 0)
                {
                    return -2;
                }
                b = (byte)((hi << 4) | lo);
                i += 2;
            }
            destination[written++] = b;
        }
        return written;
    }

    private static int HexValue(byte b) => b switch
    {
        >= (byte)'0' and <= (byte)'9' => b - '0',
        >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
        >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
        _ => -1,
    };

    [MethodImpl(MethodImplOptions.NoInlining)]
    private FilterStatus Reject(RequestContext context, bool invalid)
    {
        Interlocked.Increment(ref _counts.Rejected);
        context.AddResponseHeader("www-authenticate"u8, _challenge);
        return context.Respond(401, invalid ? InvalidCode : MissingCode, s_problemJson, invalid ? _invalidBody : _missingBody);
    }
}
