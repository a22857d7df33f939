using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/Proxy.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
