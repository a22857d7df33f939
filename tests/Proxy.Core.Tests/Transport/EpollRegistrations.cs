using Proxy.Transport.Epoll;

namespace Proxy.Core.Tests.Transport;

/// <summary>What an engine's epoll instance watches, read from the kernel's own account in /proc/self/fdinfo.</summary>
internal static class EpollRegistrations
{
    /// <summary>The inode of a socket fd, from its /proc/self/fd link ("socket:[12345]"), in hex as fdinfo prints it.</summary>
    public static string SocketInode(int fd)
    {
        string target = new FileInfo($"/proc/self/fd/{fd}").LinkTarget!;
        long inode = long.Parse(target.AsSpan("socket:[".Length, target.Length - "socket:[".Length - 1));
        return inode.ToString("x");
    }

    /// <summary>
    /// The inodes an epoll instance watches and the event mask of each: its fdinfo has a line
    /// "tfd: N events: HEX data: HEX pos:0 ino:HEX sdev: ..." per registration.
    /// </summary>
    public static Dictionary<string, uint> Of(EpollEngine engine)
    {
        var registrations = new Dictionary<string, uint>();
        foreach (string line in File.ReadAllLines($"/proc/self/fdinfo/{engine.Descriptor}"))
        {
            if (!line.StartsWith("tfd:", StringComparison.Ordinal))
            {
                continue;
            }
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            int events = Array.IndexOf(fields, "events:");
            string? inode = fields.FirstOrDefault(f => f.StartsWith("ino:", StringComparison.Ordinal));
            if (events >= 0 && inode is not null)
            {
                registrations[inode["ino:".Length..]] = Convert.ToUInt32(fields[events + 1], 16);
            }
        }
        return registrations;
    }
}
