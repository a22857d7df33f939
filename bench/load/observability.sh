#!/usr/bin/env bash
# Side-by-side load benchmark: proxied requests/s with observability ON (access log to a file, tracing with
# sampling 0 propagating traceparent, traffic insights, metrics) against OFF (metrics only: they cannot be turned
# off), two proxy instances in front of the same origin, measured in alternating wrk runs in one invocation.
#
#   bench/load/observability.sh                 # 5 rounds of 10 s each way
#   ROUNDS=3 SECONDS_PER_RUN=5 bench/load/observability.sh
#
# The origin is a third proxy instance answering a fixed 100-byte body itself (respond: route), so no other
# server is needed. Every process is started here and stopped by PID on exit. Ports: 127.0.0.1:18480-18482.
set -euo pipefail
LOAD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LOAD_DIR/../.." && pwd)
WORK=${WORK:-/tmp/proxy-bench-observability}
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-32}
ORIGIN_PORT=${ORIGIN_PORT:-18480}; OFF_PORT=${OFF_PORT:-18481}; ON_PORT=${ON_PORT:-18482}
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }

mkdir -p "$WORK"
rm -f "$WORK"/access.log
dotnet build "$REPO_ROOT/src/Proxy/Proxy.csproj" -c Release -v q -nologo >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
DLL=$REPO_ROOT/src/Proxy/bin/Release/net10.0/proxy.dll

cat >"$WORK/origin.yaml" <<YAML
server: { watch_config: false }
listeners: [{ name: origin, address: "127.0.0.1:$ORIGIN_PORT" }]
routes: [{ id: origin, match: { path: "/{**rest}" }, respond: { status: 200, body: "Proxy observability bench origin: a fixed 100-byte body for measuring proxy overhead. 0123456789ab\n" } }]
insights: { enabled: false }
YAML
common() { # port
    cat <<YAML
server: { watch_config: false }
listeners: [{ name: public, address: "127.0.0.1:$1" }]
routes: [{ id: all, match: { path: "/{**rest}" }, cluster: origin }]
clusters: { origin: { destinations: ["http://127.0.0.1:$ORIGIN_PORT"] } }
YAML
}
{ common "$OFF_PORT"; echo "insights: { enabled: false }"; } >"$WORK/off.yaml"
{ common "$ON_PORT"; cat <<YAML
tracing: { sampling: 0 }
access_log: { path: "$WORK/access.log" }
insights: { enabled: true }
YAML
} >"$WORK/on.yaml"

declare -A PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for name in origin off on; do
    dotnet "$DLL" run --config "$WORK/$name.yaml" >"$WORK/$name.out" 2>&1 &
    PIDS[$name]=$!
done
for port in "$ORIGIN_PORT" "$OFF_PORT" "$ON_PORT"; do
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

TP='traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
run() { # port seconds -> req/s
    wrk -t1 -c"$CONNECTIONS" -d"$2s" -H "$TP" "http://127.0.0.1:$1/api/items" | awk '/Requests\/sec/ {print $2}'
}
echo "warming up..." >&2
run "$OFF_PORT" 3 >/dev/null; run "$ON_PORT" 3 >/dev/null
off=(); on=()
for r in $(seq 1 "$ROUNDS"); do
    # Alternate which goes first, so a drift in machine load does not favour one side.
    if ((r % 2)); then off+=("$(run "$OFF_PORT" "$SECONDS_PER_RUN")"); on+=("$(run "$ON_PORT" "$SECONDS_PER_RUN")")
    else on+=("$(run "$ON_PORT" "$SECONDS_PER_RUN")"); off+=("$(run "$OFF_PORT" "$SECONDS_PER_RUN")"); fi
    echo "round $r: off ${off[-1]} req/s, on ${on[-1]} req/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m_off=$(median "${off[@]}"); m_on=$(median "${on[@]}")
lines=$(wc -l <"$WORK/access.log")
echo "| mode | req/s median | runs |"
echo "|------|-------------:|------|"
echo "| off (metrics only) | $m_off | ${off[*]} |"
echo "| on (metrics, access log, tracing sampling 0, insights) | $m_on | ${on[*]} |"
awk -v a="$m_on" -v b="$m_off" 'BEGIN { printf "on/off: %.3f (%+.1f%%)\n", a / b, (a / b - 1) * 100 }'
echo "access log lines written: $lines"
