using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/Proxy.Benchmarks -- --filter '*'
// dotnet run -c Release --project bench/Proxy.Benchmarks -- resilience-ab [rounds]   (interleaved side-by-side run)
if (args.Length > 0 && args[0] == "resilience-ab")
{
    Proxy.Benchmarks.Upstream.ResilienceOverheadBenchmarks.RunSideBySide(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 30);
    return;
}
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
