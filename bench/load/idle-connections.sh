#!/usr/bin/env bash
# Memory at scale: how much resident memory does a proxy need per idle keep-alive client connection?
#
# For each target (default: Proxy, then nginx, in the same run, in front of the same origin):
# start it, measure its RSS (VmRSS, summed over its processes), open N client connections that each
# complete one request and then stay idle, measure RSS again, print (after - before) / N, close them.
#
#   bench/load/idle-connections.sh                       # N=10000, proxy and nginx
#   N=2000 TARGETS=nginx bench/load/idle-connections.sh
#   TARGETS="proxy nginx haproxy yarp" bench/load/idle-connections.sh
#
# Knobs (default): N (10000), TARGETS ("proxy nginx"), PIN (1: target on PROXY_CPUS, client and origin on
# LG_CPUS; 0: unpinned), SETTLE (2, seconds between the last response and the second reading),
# SETUP_TIMEOUT (120 s to open all connections), WARM (2, seconds of light wrk load before the first
# reading, so that one-time costs such as JIT compilation and the origin pool are not counted per
# connection; 0 = none), PROXY_BIN, PROXY_CONFIG, PROXY_ENV, YARP_ENV, WORK.
# The client and the target each need N open files; both inherit the hard limit (`ulimit -Hn`).
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=${N:-10000}
TARGETS=${TARGETS:-proxy nginx}
PIN=${PIN:-1}
SETTLE=${SETTLE:-2}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-120}
WARM=${WARM:-2}

trap stop_all EXIT
trap 'log interrupted; exit 130' INT TERM

for t in $TARGETS; do case $t in nginx | haproxy | yarp | proxy) ;; *) die "unknown target '$t' (known: proxy nginx haproxy yarp)" ;; esac; done
fresh_run_dir
ensure_tools nginx curl taskset pgrep python3 wrk
[[ " $TARGETS " == *" haproxy "* ]] && ensure_tools haproxy
raise_nofile
((N + 200 <= NOFILE)) || die "N=$N needs more open files than the limit ($NOFILE) allows"
[[ " $TARGETS " == *" proxy "* ]] && build_proxy
[[ " $TARGETS " == *" yarp "* ]] && build_yarp
if [[ $PIN == 1 ]]; then WORKERS=1; CLIENT_CPUS=$LG_CPUS; T_CPUS=$PROXY_CPUS; O_CPUS=$ORIGIN_CPUS
else WORKERS=$(nproc); CLIENT_CPUS=""; T_CPUS=""; O_CPUS=""; fi

require_free_ports $ORIGIN_PORT $ORIGIN_H2_PORT
for t in $TARGETS; do require_free_ports "$(h1_port "$t")" "$(h2_port "$t")"; done
start_origin "$O_CPUS"
ROWS=()
for t in $TARGETS; do
    port=$(h1_port "$t")
    if ! start_target "$t" "$T_CPUS" "$WORKERS"; then log "$t failed to start; skipped"; stop_proc "$t"; continue; fi
    mapfile -t tpids < <(tree_pids "${PIDS[$t]}")
    ((WARM > 0)) && pin "$CLIENT_CPUS" timeout -k 5 $((WARM + 30)) wrk -t1 -c8 -d"${WARM}s" "http://127.0.0.1:$port/" >"$RUN/idle-warm-$t.log" 2>&1
    sleep "$SETTLE"
    before=$(rss_kb "${tpids[@]}")
    log "$t: RSS before ${before} KiB; opening $N connections"

    coproc CLIENT { exec ${CLIENT_CPUS:+taskset -c "$CLIENT_CPUS"} timeout -k 5 $((SETUP_TIMEOUT + 180)) \
        python3 "$LOAD_DIR/idle_client.py" --port "$port" --count "$N" \
        --setup-timeout "$SETUP_TIMEOUT" --hold-timeout 120 2>"$RUN/idle-client-$t.err"; }
    PIDS[idle-client]=$CLIENT_PID
    ready=""
    read -r -t $((SETUP_TIMEOUT + 30)) ready <&"${CLIENT[0]}" || true
    read -r _ open failed took <<<"${ready:-READY 0 $N 0}"
    sleep "$SETTLE"
    after=$(rss_kb "${tpids[@]}")
    established=$(ss -Htn state established "sport = :$port" 2>/dev/null | wc -l)
    log "$t: $open open ($failed failed, ${took}s to open); target sees $established; RSS after ${after} KiB"
    echo close >&"${CLIENT[1]}" 2>/dev/null
    closed=""
    read -r -t 30 closed <&"${CLIENT[0]}" || true
    read -r _ still peer_closed <<<"${closed:-CLOSED ? ?}"
    stop_proc idle-client
    [[ $peer_closed =~ ^[1-9] ]] && log "$t: warning: closed $peer_closed idle connections while measuring"
    per=$(awk -v b="$before" -v a="$after" -v n="$open" 'BEGIN{ if (n > 0) printf "%.2f", (a - b) / n; else print "-" }')
    ROWS+=("| $t | $open | $failed | $(awk -v k="$before" 'BEGIN{printf "%.1f", k/1024}') | $(awk -v k="$after" 'BEGIN{printf "%.1f", k/1024}') | $per | ${peer_closed:-?} |")
    stop_proc "$t"
done
stop_proc origin

echo
echo "### idle keep-alive connections: N=$N, each after one request ($( [[ $PIN == 1 ]] && echo "pinned, 1 worker" || echo "unpinned, $WORKERS workers"))"
echo
echo "| target | open | failed | RSS before MiB | RSS after MiB | KiB per connection | closed by target while idle |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
