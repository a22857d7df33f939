using CsCheck;
using Proxy.Http2.HPack;
using static Proxy.Core.Tests.Http2.HPackTest;

namespace Proxy.Core.Tests.Http2;

public class HPackDynamicTableTests
{
    [Fact]
    public void Insert_BeyondMaxSize_EvictsOldestFirst()
    {
        HPackDynamicTable table = new(100);
        table.Insert(Bytes("a"), Bytes("1"));    // 34
        table.Insert(Bytes("b"), Bytes("22"));   // 35
        table.Insert(Bytes("c"), Bytes("333"));  // 36: 105 > 100, "a" goes
        Assert.Equal([("c", "333"), ("b", "22")], Table(table));
        Assert.Equal(71, table.Size);
    }

    [Fact]
    public void Insert_EntryLargerThanMaxSize_EmptiesTable()
    {
        HPackDynamicTable table = new(64);
        table.Insert(Bytes("a"), Bytes("1"));
        table.Insert(Bytes("big"), Bytes(new string('v', 40)));
        Assert.Equal(0, table.Count);
        Assert.Equal(0, table.Size);
    }

    [Fact]
    public void Insert_NameFromEvictedEntry_CopiesNameIntact()
    {
        // RFC 7541 section 4.4: the name may reference an entry the insertion evicts.
        HPackDynamicTable table = new(64);
        table.Insert(Bytes("name-to-keep"), Bytes("0123456789"));
        table.Insert(table.Name(0), Bytes("another-value-x"));
        Assert.Equal([("name-to-keep", "another-value-x")], Table(table));
    }

    [Fact]
    public void SetMaxSize_Smaller_Evicts()
    {
        HPackDynamicTable table = new(4096);
        table.Insert(Bytes("a"), Bytes("1"));
        table.Insert(Bytes("b"), Bytes("2"));
        table.SetMaxSize(40);
        Assert.Equal([("b", "2")], Table(table));
        table.SetMaxSize(0);
        Assert.Equal(0, table.Count);
    }

    [Fact]
    public void EnsureCapacity_Larger_KeepsEntriesInOrder()
    {
        HPackDynamicTable table = new(128);
        table.Insert(Bytes("a"), Bytes("1"));
        table.Insert(Bytes("b"), Bytes("2"));
        table.EnsureCapacity(1024);
        Assert.Equal([("b", "2"), ("a", "1")], Table(table));
        table.SetMaxSize(1024);
        Assert.Equal(1024, table.MaxSize);
    }

    /// <summary>Random inserts and resizes against a plain list model: the ring (and its mirror) must agree.</summary>
    [Fact]
    public void Operations_Random_MatchListModel()
    {
        Gen<(int, string, string)> op = Gen.Select(Gen.Int[0, 9], Gen.String[Gen.Char['a', 'z'], 0, 40], Gen.String[Gen.Char[' ', '~'], 0, 90]);
        Gen.Select(Gen.Int[0, 300], op.Array[1, 80]).Sample((capacity, ops) =>
        {
            HPackDynamicTable table = new(capacity);
            List<(string Name, string Value)> model = [];
            int maxSize = capacity;
            foreach ((int kind, string name, string value) in ops)
            {
                if (kind == 0)
                {
                    maxSize = name.Length * capacity / 40;
                    table.SetMaxSize(maxSize);
                }
                else
                {
                    table.Insert(Bytes(name), Bytes(value));
                    model.Insert(0, (name, value));
                }
                while (model.Sum(e => e.Name.Length + e.Value.Length + 32) > maxSize)
                {
                    model.RemoveAt(model.Count - 1);
                }
                Assert.Equal(model, Table(table));
                Assert.Equal(model.Sum(e => e.Name.Length + e.Value.Length + 32), table.Size);
            }
        }, iter: 300);
    }
    /// <summary>
    /// The encoder's hash index against a scan of the model: after random inserts, resizes, growth and clears, every
    /// lookup (present, evicted, never added, same name with another value) finds the newest matching entry or none.
    /// Few distinct names and values make repeats, and so duplicate entries and long bucket chains, common.
    /// </summary>
    [Fact]
    public void FindExact_Indexed_MatchesModelScan()
    {
        Gen<(int, string, string)> op = Gen.Select(Gen.Int[0, 19], Gen.String[Gen.Char['a', 'd'], 0, 12], Gen.String[Gen.Char['0', '3'], 0, 20]);
        Gen.Select(Gen.Int[0, 300], op.Array[1, 120]).Sample((capacity, ops) =>
        {
            HPackDynamicTable table = new(capacity, indexed: true);
            List<(string Name, string Value)> model = [];
            int maxSize = capacity;
            foreach ((int kind, string name, string value) in ops)
            {
                if (kind == 0)
                {
                    maxSize = Math.Min(table.Capacity, name.Length * table.Capacity / 12);
                    table.SetMaxSize(maxSize);
                }
                else if (kind == 1)
                {
                    table.EnsureCapacity(table.Capacity + value.Length * 8);
                }
                else if (kind > 2)
                {
                    table.Insert(Bytes(name), Bytes(value));
                    model.Insert(0, (name, value));
                    if (name.Length + value.Length + 32 > maxSize)
                    {
                        model.Clear();
                    }
                }
                while (model.Sum(e => e.Name.Length + e.Value.Length + 32) > maxSize)
                {
                    model.RemoveAt(model.Count - 1);
                }
                Assert.Equal(model.IndexOf((name, value)), table.FindExact(Bytes(name), Bytes(value)));
                Assert.Equal(model.IndexOf((name, value + "0")), table.FindExact(Bytes(name), Bytes(value + "0")));
                foreach ((string n, string v) in model)
                {
                    Assert.Equal(model.IndexOf((n, v)), table.FindExact(Bytes(n), Bytes(v)));
                }
            }
        }, iter: 300);
    }

    [Fact]
    public void FindExact_IndexedAfterEviction_ReturnsMinusOne()
    {
        HPackDynamicTable table = new(100, indexed: true);
        table.Insert(Bytes("a"), Bytes("1"));
        table.Insert(Bytes("b"), Bytes("22"));
        table.Insert(Bytes("c"), Bytes("333")); // "a" goes
        Assert.Equal(-1, table.FindExact(Bytes("a"), Bytes("1")));
        Assert.Equal(1, table.FindExact(Bytes("b"), Bytes("22")));
        Assert.Equal(0, table.FindExact(Bytes("c"), Bytes("333")));
        table.Insert(Bytes("a"), Bytes("1")); // "b" goes, "a" is back as the newest
        Assert.Equal(0, table.FindExact(Bytes("a"), Bytes("1")));
        Assert.Equal(-1, table.FindExact(Bytes("b"), Bytes("22")));
    }
}
