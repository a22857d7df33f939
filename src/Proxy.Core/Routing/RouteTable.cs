using System.Diagnostics.CodeAnalysis;
using System.Text;
using Proxy.Http;
using Proxy.Model;

namespace Proxy.Routing;

/// <summary>
/// Compiled route table: a trie over path segments built once per snapshot, immutable and shared by
/// every request. A match walks the trie depth-first in precedence order (literal child, then
/// parameter child, then the node's catch-alls; a node's exact terminals before its catch-alls when
/// the path ends there), so the first candidate whose other predicates hold is the answer. Semantics:
/// docs/routing.md.
/// </summary>
internal sealed class RouteTable
{
    // Flat arrays instead of node objects: the walk touches a few structs and one hash table.
    private readonly Node[] _nodes;
    private readonly RouteEntry[] _candidates;
    private readonly LiteralChildren _literals;
    private readonly RouteEntry[] _entriesInMatchOrder;
    private readonly RouteModel[] _inMatchOrder;

    private RouteTable(Node[] nodes, RouteEntry[] candidates, LiteralChildren literals, RouteEntry[] entriesInMatchOrder)
    {
        _nodes = nodes;
        _candidates = candidates;
        _literals = literals;
        _entriesInMatchOrder = entriesInMatchOrder;
        _inMatchOrder = new RouteModel[entriesInMatchOrder.Length];
        for (int i = 0; i < entriesInMatchOrder.Length; i++)
        {
            _inMatchOrder[i] = entriesInMatchOrder[i].Route;
        }
    }

    /// <summary>Routes in the order they are tried.</summary>
    public IReadOnlyList<RouteModel> InMatchOrder => _inMatchOrder;

    /// <summary>The compiled routes in match order (for the linear baseline and diagnostics).</summary>
    internal ReadOnlySpan<RouteEntry> Entries => _entriesInMatchOrder;

    /// <summary>
    /// Compiles <paramref name="routes"/> (file order; <see cref="RouteModel.Order"/> is the file index).
    /// Throws <see cref="FormatException"/> for a path template or host the validator should have refused.
    /// </summary>
    public static RouteTable Build(IReadOnlyList<RouteModel> routes)
    {
        RouteEntry[] entries = RouteEntry.CreateAll(routes);
        var ordered = (RouteEntry[])entries.Clone();
        Array.Sort(ordered, RouteEntry.Compare);

        // Insert in match order so every terminal and catch-all list comes out already sorted.
        var root = new BuilderNode();
        int nodeCount = 1;
        foreach (RouteEntry entry in ordered)
        {
            BuilderNode node = root;
            foreach (TemplateSegment segment in entry.Template.Segments)
            {
                switch (segment.Kind)
                {
                    case SegmentKind.Literal:
                        string key = Encoding.Latin1.GetString(segment.Literal);
                        if (!node.Literals.TryGetValue(key, out BuilderNode? child))
                        {
                            child = new BuilderNode();
                            node.Literals.Add(key, child);
                            nodeCount++;
                        }
                        node = child;
                        break;
                    case SegmentKind.Parameter:
                        if (node.Parameter is null)
                        {
                            node.Parameter = new BuilderNode();
                            nodeCount++;
                        }
                        node = node.Parameter;
                        break;
                    case SegmentKind.CatchAll:
                        node.CatchAlls.Add(entry);
                        goto Inserted;
                }
            }
            node.Terminals.Add(entry);
        Inserted:;
        }

        // Flatten breadth-first; node 0 is the root, so a child index of 0 can mean "none".
        var nodes = new Node[nodeCount];
        var candidates = new List<RouteEntry>(entries.Length);
        var literalEdges = new List<(int Parent, byte[] Key, int Child)>();
        var queue = new Queue<(BuilderNode Node, int Index)>();
        int next = 1;
        queue.Enqueue((root, 0));
        while (queue.Count > 0)
        {
            (BuilderNode b, int index) = queue.Dequeue();
            ref Node n = ref nodes[index];
            n.TerminalStart = candidates.Count;
            n.TerminalCount = b.Terminals.Count;
            candidates.AddRange(b.Terminals);
            n.CatchAllStart = candidates.Count;
            n.CatchAllCount = b.CatchAlls.Count;
            candidates.AddRange(b.CatchAlls);
            n.HasLiterals = b.Literals.Count > 0;
            foreach (KeyValuePair<string, BuilderNode> literal in b.Literals)
            {
                literalEdges.Add((index, Encoding.Latin1.GetBytes(literal.Key), next));
                queue.Enqueue((literal.Value, next++));
            }
            if (b.Parameter is not null)
            {
                n.ParameterChild = next;
                queue.Enqueue((b.Parameter, next++));
            }
        }

        return new RouteTable(nodes, [.. candidates], new LiteralChildren(literalEdges), ordered);
    }

    /// <summary>The first route, in precedence order, whose predicates all hold. Allocates nothing.</summary>
    public RouteModel? Match(RequestHead request, int listenerIndex)
        => TryMatch(request, listenerIndex, out RouteModel? route) ? route : null;

    /// <summary>The first route, in precedence order, whose predicates all hold. Allocates nothing.</summary>
    public bool TryMatch(RequestHead request, int listenerIndex, [MaybeNullWhen(false)] out RouteModel route)
    {
        var context = new MatchContext(request, listenerIndex);
        ReadOnlySpan<byte> path = request.Path;
        RouteEntry? entry = !path.IsEmpty && path[0] == (byte)'/'
            ? Visit(0, path[1..], hasMore: true, in context)
            : FirstAccepting(_nodes[0].CatchAllStart, _nodes[0].CatchAllCount, in context);
        route = entry?.Route;
        return entry is not null;
    }

    /// <summary>
    /// Depth-first search from <paramref name="nodeIndex"/> with <paramref name="rest"/> the unmatched
    /// path after a '/'. Recursion depth is bounded by the deepest template, not by the request.
    /// </summary>
    private RouteEntry? Visit(int nodeIndex, ReadOnlySpan<byte> rest, bool hasMore, in MatchContext context)
    {
        ref readonly Node node = ref _nodes[nodeIndex];
        if (!hasMore)
        {
            return FirstAccepting(node.TerminalStart, node.TerminalCount, in context)
                ?? FirstAccepting(node.CatchAllStart, node.CatchAllCount, in context);
        }

        ReadOnlySpan<byte> segment = RouteTemplate.NextSegment(ref rest, ref hasMore);
        if (node.HasLiterals)
        {
            int child = _literals.Find(nodeIndex, segment);
            if (child != 0)
            {
                RouteEntry? found = Visit(child, rest, hasMore, in context);
                if (found is not null)
                {
                    return found;
                }
            }
        }
        if (node.ParameterChild != 0 && !segment.IsEmpty)
        {
            RouteEntry? found = Visit(node.ParameterChild, rest, hasMore, in context);
            if (found is not null)
            {
                return found;
            }
        }
        return FirstAccepting(node.CatchAllStart, node.CatchAllCount, in context);
    }

    private RouteEntry? FirstAccepting(int start, int count, in MatchContext context)
    {
        foreach (RouteEntry candidate in _candidates.AsSpan(start, count))
        {
            if (candidate.Accepts(in context))
            {
                return candidate;
            }
        }
        return null;
    }

    private struct Node
    {
        public int TerminalStart, TerminalCount;
        public int CatchAllStart, CatchAllCount;
        /// <summary>Index of the parameter child, 0 when none (the root is never a child).</summary>
        public int ParameterChild;
        /// <summary>Skips hashing the segment at nodes with only a parameter or catch-alls below.</summary>
        public bool HasLiterals;
    }

    private sealed class BuilderNode
    {
        public readonly Dictionary<string, BuilderNode> Literals = new(StringComparer.Ordinal);
        public BuilderNode? Parameter;
        public readonly List<RouteEntry> Terminals = [];
        public readonly List<RouteEntry> CatchAlls = [];
    }

    /// <summary>
    /// Every literal edge of the trie in one open-addressing table keyed by (parent node, segment
    /// bytes), so a lookup hashes the request's segment in place: no string, no per-node dictionary.
    /// Linear probing at a load factor of at most one half; keys live in one byte array.
    /// </summary>
    private sealed class LiteralChildren
    {
        private readonly Slot[] _slots;
        private readonly byte[] _keys;
        private readonly int _mask;

        public LiteralChildren(List<(int Parent, byte[] Key, int Child)> edges)
        {
            int capacity = 8;
            while (capacity < edges.Count * 2)
            {
                capacity *= 2;
            }
            _slots = new Slot[capacity];
            _mask = capacity - 1;
            int keyBytes = 0;
            foreach (var edge in edges)
            {
                keyBytes += edge.Key.Length;
            }
            _keys = new byte[keyBytes];

            int offset = 0;
            foreach ((int parent, byte[] key, int child) in edges)
            {
                key.CopyTo(_keys, offset);
                uint hash = Hash(parent, key);
                int i = (int)(hash & (uint)_mask);
                while (_slots[i].Child != 0)
                {
                    i = (i + 1) & _mask;
                }
                _slots[i] = new Slot { Parent = parent, Hash = hash, KeyStart = offset, KeyLength = key.Length, Child = child };
                offset += key.Length;
            }
        }

        /// <summary>The child of <paramref name="parent"/> for <paramref name="segment"/>, or 0.</summary>
        public int Find(int parent, ReadOnlySpan<byte> segment)
        {
            uint hash = Hash(parent, segment);
            int i = (int)(hash & (uint)_mask);
            while (true)
            {
                ref readonly Slot slot = ref _slots[i];
                if (slot.Child == 0)
                {
                    return 0;
                }
                if (slot.Hash == hash && slot.Parent == parent
                    && _keys.AsSpan(slot.KeyStart, slot.KeyLength).SequenceEqual(segment))
                {
                    return slot.Child;
                }
                i = (i + 1) & _mask;
            }
        }

        // FNV-1a seeded with the parent, then a final avalanche so the low bits used for the slot
        // depend on every byte. Keys come from config, so an attacker cannot build collision chains.
        private static uint Hash(int parent, ReadOnlySpan<byte> key)
        {
            uint h = (2166136261u ^ (uint)parent) * 16777619u;
            foreach (byte b in key)
            {
                h = (h ^ b) * 16777619u;
            }
            h ^= h >> 15;
            h *= 0x2c1b3c6du;
            h ^= h >> 12;
            return h;
        }

        private struct Slot
        {
            public int Parent;
            public uint Hash;
            public int KeyStart;
            public int KeyLength;
            /// <summary>0 marks an empty slot: the root is never a child.</summary>
            public int Child;
        }
    }
}
