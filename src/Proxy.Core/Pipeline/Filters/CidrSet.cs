using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Proxy.Pipeline.Filters;

/// <summary>
/// Pre-parsed IPv4 and IPv6 networks, matched with a mask and a compare each on the address's bytes: no
/// <see cref="IPNetwork"/> calls, no allocation. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match IPv4 networks.
/// </summary>
internal sealed class CidrSet
{
    private readonly (uint Prefix, uint Mask)[] _v4;
    private readonly (UInt128 Prefix, UInt128 Mask)[] _v6;

    public CidrSet(IReadOnlyList<IPNetwork> networks)
    {
        var v4 = new List<(uint, uint)>();
        var v6 = new List<(UInt128, UInt128)>();
        Span<byte> bytes = stackalloc byte[16];
        foreach (IPNetwork network in networks)
        {
            network.BaseAddress.TryWriteBytes(bytes, out int written);
            if (network.BaseAddress.AddressFamily == AddressFamily.InterNetwork)
            {
                uint mask = network.PrefixLength == 0 ? 0 : uint.MaxValue << (32 - network.PrefixLength);
                v4.Add((BinaryPrimitives.ReadUInt32BigEndian(bytes) & mask, mask));
            }
            else
            {
                UInt128 mask = network.PrefixLength == 0 ? UInt128.Zero : UInt128.MaxValue << (128 - network.PrefixLength);
                v6.Add((BinaryPrimitives.ReadUInt128BigEndian(bytes[..written]) & mask, mask));
            }
        }
        _v4 = [.. v4];
        _v6 = [.. v6];
    }

    public bool IsEmpty => _v4.Length == 0 && _v6.Length == 0;

    public bool Contains(IPAddress address)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (!address.TryWriteBytes(bytes, out int written))
        {
            return false;
        }
        if (written == 4)
        {
            return ContainsV4(BinaryPrimitives.ReadUInt32BigEndian(bytes));
        }
        UInt128 value = BinaryPrimitives.ReadUInt128BigEndian(bytes);
        // RFC 4291 section 2.5.5.2: ::ffff:0:0/96 carries an IPv4 address in its low 32 bits.
        if (value >> 32 == 0xffffu)
        {
            return ContainsV4((uint)value) || ContainsV6(value);
        }
        return ContainsV6(value);
    }

    /// <summary>As <see cref="Contains(IPAddress)"/> for an address parsed by <see cref="IpText"/> (no object needed).</summary>
    public bool Contains(UInt128 value, bool isV4)
    {
        if (isV4)
        {
            return ContainsV4((uint)value);
        }
        return value >> 32 == 0xffffu ? ContainsV4((uint)value) || ContainsV6(value) : ContainsV6(value);
    }

    private bool ContainsV4(uint value)
    {
        foreach (var (prefix, mask) in _v4)
        {
            if ((value & mask) == prefix)
            {
                return true;
            }
        }
        return false;
    }

    private bool ContainsV6(UInt128 value)
    {
        foreach (var (prefix, mask) in _v6)
        {
            if ((value & mask) == prefix)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// True when every address of every network in <paramref name="networks"/> is also in one of
    /// <paramref name="cover"/> (control plane: "an allow list that can never pass").
    /// </summary>
    public static bool Covers(IReadOnlyList<IPNetwork> cover, IReadOnlyList<IPNetwork> networks)
    {
        foreach (IPNetwork network in networks)
        {
            var (start, end) = Range(network);
            // Merge the covering ranges of the same family that overlap this one, in order, and walk from start.
            var ranges = new List<(UInt128 Start, UInt128 End)>();
            foreach (IPNetwork c in cover)
            {
                if (c.BaseAddress.AddressFamily == network.BaseAddress.AddressFamily)
                {
                    ranges.Add(Range(c));
                }
            }
            ranges.Sort();
            UInt128 next = start;
            bool covered = false;
            foreach (var (s, e) in ranges)
            {
                if (s > next)
                {
                    break;
                }
                if (e >= next)
                {
                    if (e >= end)
                    {
                        covered = true;
                        break;
                    }
                    next = e + UInt128.One;
                }
            }
            if (!covered)
            {
                return false;
            }
        }
        return true;
    }

    private static (UInt128 Start, UInt128 End) Range(IPNetwork network)
    {
        Span<byte> bytes = stackalloc byte[16];
        network.BaseAddress.TryWriteBytes(bytes, out int written);
        int bits = written * 8;
        UInt128 value = written == 4 ? BinaryPrimitives.ReadUInt32BigEndian(bytes) : BinaryPrimitives.ReadUInt128BigEndian(bytes);
        int hostBits = bits - network.PrefixLength;
        UInt128 hostMask = hostBits == 0 ? UInt128.Zero : hostBits == 128 ? UInt128.MaxValue : (UInt128.One << hostBits) - 1;
        UInt128 start = value & ~hostMask;
        return (start, start | hostMask);
    }
}
