using System.Runtime.CompilerServices;
using System.Text;

namespace Proxy.Http2.HPack;

/// <summary>
/// The static table (RFC 7541 appendix A), indices 1 to 61. Built once at start-up; lookups by name for
/// the encoder go through a small open-addressing hash over the name bytes, so no strings are involved.
/// </summary>
internal static class HPackStaticTable
{
    public const int Count = 61;

    private const int SlotCount = 128; // > 2x the 52 distinct names: short probe chains
    private static readonly byte[][] s_names = new byte[Count + 1][];
    private static readonly byte[][] s_values = new byte[Count + 1][];
    /// <summary>Slot -> lowest static index with that name, 0 when empty.</summary>
    private static readonly byte[] s_nameSlots = new byte[SlotCount];

    static HPackStaticTable()
    {
        (string Name, string Value)[] entries =
        [
            (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
            (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
            (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
            ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
            ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
            ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
            ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
            ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
            ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
            ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
            ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
            ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
            ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
        ];
        s_names[0] = [];
        s_values[0] = [];
        for (int i = 0; i < entries.Length; i++)
        {
            int index = i + 1;
            s_names[index] = Encoding.ASCII.GetBytes(entries[i].Name);
            s_values[index] = Encoding.ASCII.GetBytes(entries[i].Value);
            if (i > 0 && entries[i - 1].Name == entries[i].Name)
            {
                continue; // same name as the previous entry: the slot already points at the first one
            }
            int slot = (int)(Hash(s_names[index]) & (SlotCount - 1));
            while (s_nameSlots[slot] != 0)
            {
                slot = (slot + 1) & (SlotCount - 1);
            }
            s_nameSlots[slot] = (byte)index;
        }
    }

    public static ReadOnlySpan<byte> Name(int index) => s_names[index];

    public static ReadOnlySpan<byte> Value(int index) => s_values[index];

    /// <summary>RFC 7541 section 4.1 size of the entry: name + value + 32.</summary>
    public static int EntrySize(int index) => s_names[index].Length + s_values[index].Length + HPackDynamicTable.EntryOverhead;

    /// <summary>Lowest index whose name is <paramref name="name"/>, or 0.</summary>
    public static int FindName(ReadOnlySpan<byte> name)
    {
        int slot = (int)(Hash(name) & (SlotCount - 1));
        while (true)
        {
            int index = s_nameSlots[slot];
            if (index == 0 || name.SequenceEqual(s_names[index]))
            {
                return index;
            }
            slot = (slot + 1) & (SlotCount - 1);
        }
    }

    /// <summary>
    /// Index of the entry matching name and value (<paramref name="exact"/> true), else of the first entry with
    /// the name, else 0.
    /// </summary>
    public static int Find(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, out bool exact)
    {
        int first = FindName(name);
        exact = false;
        if (first == 0)
        {
            return 0;
        }
        for (int i = first; i <= Count && s_names[i].AsSpan().SequenceEqual(s_names[first]); i++)
        {
            if (value.SequenceEqual(s_values[i]))
            {
                exact = true;
                return i;
            }
        }
        return first;
    }

    /// <summary>FNV-1a: names are short, and this only has to spread 52 known names over 128 slots.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Hash(ReadOnlySpan<byte> name)
    {
        uint hash = 2166136261;
        foreach (byte b in name)
        {
            hash = (hash ^ b) * 16777619;
        }
        return hash ^ (hash >> 15);
    }
}
