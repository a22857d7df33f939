using Proxy.Configuration;
using Proxy.Model;

namespace Proxy.Core.Tests.Trailers;

public class GrpcRetryConfigTests
{
    private static ConfigLoadResult Load(string retry) => ConfigLoader.LoadText(
        "listeners:\n  - { name: public, address: \"127.0.0.1:8080\" }\nclusters:\n  backend:\n"
        + "    destinations: [\"http://127.0.0.1:9000\"]\n" + retry + "\n", "t.yaml");

    [Fact]
    public void Load_RetryOnUnavailableNonIdempotent_Compiles()
    {
        var result = Load("    retry: { on: [unavailable, connect_failure], non_idempotent: true }");

        Assert.Empty(result.Errors);
        RetryModel retry = result.Snapshot!.Clusters["backend"].Retry!;
        Assert.Equal(RetryOn.Unavailable | RetryOn.ConnectFailure, retry.On);
        Assert.True(retry.NonIdempotent);
    }

    [Fact]
    public void Load_RetryDefaults_IdempotentOnly()
    {
        var result = Load("    retry: { attempts: 1 }");

        Assert.Empty(result.Errors);
        Assert.False(result.Snapshot!.Clusters["backend"].Retry!.NonIdempotent);
    }

    [Fact]
    public void Load_NonIdempotentNotBool_ReportsError()
    {
        var result = Load("    retry: { non_idempotent: maybe }");

        Assert.Contains(result.Errors, e => e.ToString().Contains("non_idempotent", StringComparison.Ordinal));
    }
}
