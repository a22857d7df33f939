#!/usr/bin/env bash
# Memory after a burst: how much resident memory does a proxy keep once a burst of connections is over?
#
# For each target in turn (default: Proxy, then nginx, in front of the same origin, each with a cleartext and a TLS
# listener): start it, then ROUNDS bursts of five loads at once for DURATION seconds each, 600 client connections
# in all (cleartext: wrk with 100 keep-alive connections, wrk with 50 connections that each send one request with
# "Connection: close", h2load with 25 h2c connections of 10 streams; TLS: wrk with 100 keep-alive connections,
# h2load with 25 connections of 10 streams), then wait IDLE seconds with no client connected. Prints the resident
# set (VmRSS, summed over the target's processes) before, right after the last burst and after the idle wait, and
# the peak (VmHWM). Up to 750 requests are in flight at once: Proxy's default max_connections (256 per upstream
# destination) makes the excess wait in line for a connection an exchange gives back (503 only for a request that
# waits past connect_timeout); nginx and HAProxy, configured without a cap, open more upstream connections instead.
#
#   bench/load/burst-memory.sh                        # proxy and nginx
#   TARGETS="proxy nginx haproxy" ROUNDS=6 bench/load/burst-memory.sh
#   PROXY_ENV="PROXY_RELEASE_IDLE_MEMORY=0" TARGETS=proxy bench/load/burst-memory.sh   # without the idle release
#
# Knobs (default): TARGETS ("proxy nginx"), TLS_PORT (8446), ROUNDS (4), DURATION (3), GAP (2, seconds between bursts), IDLE (25:
# Proxy releases memory at the end of a 10 s heartbeat period once the connections have gone), PIN (0: unpinned,
# the target's default worker count; 1: target on PROXY_CPUS with one worker, clients and origin on LG_CPUS),
# PROXY_BIN, PROXY_ENV, WORK.
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TARGETS=${TARGETS:-proxy nginx}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-3}
GAP=${GAP:-2}
IDLE=${IDLE:-25}
PIN=${PIN:-0}
TLS_PORT=${TLS_PORT:-8446}

trap stop_all EXIT
trap 'log interrupted; exit 130' INT TERM

for t in $TARGETS; do case $t in nginx | haproxy | proxy) ;; *) die "unknown target '$t' (known: proxy nginx haproxy)" ;; esac; done
fresh_run_dir
ensure_tools nginx curl taskset pgrep wrk h2load openssl
[[ " $TARGETS " == *" haproxy "* ]] && ensure_tools haproxy
raise_nofile
[[ " $TARGETS " == *" proxy "* ]] && build_proxy
if [[ $PIN == 1 ]]; then WORKERS=1; CLIENT_CPUS=$LG_CPUS; T_CPUS=$PROXY_CPUS; O_CPUS=$ORIGIN_CPUS
else WORKERS=$(nproc); CLIENT_CPUS=""; T_CPUS=""; O_CPUS=""; fi

require_free_ports $ORIGIN_PORT $ORIGIN_H2_PORT "$TLS_PORT"
for t in $TARGETS; do require_free_ports "$(h1_port "$t")" "$(h2_port "$t")"; done
make_tls_cert
start_origin "$O_CPUS"

https_ok() { [[ $(curl -s -m 2 --cacert "$RUN/tls.pem" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$TLS_PORT/" 2>/dev/null) == 200 ]]; }

# start_burst_target NAME : the target with its cleartext listeners (as run.sh has them) and a TLS one on TLS_PORT.
start_burst_target() {
    local t=$1 i
    case $t in
    nginx)
        write_nginx_conf nginx-burst "$WORKERS" "        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        listen 127.0.0.1:$NGINX_H2_PORT http2 backlog=4096;
$(nginx_tls_listen "$TLS_PORT")"
        start_bg nginx "$T_CPUS" nginx -p "$RUN" -c "$RUN/nginx-burst.conf" -e "$RUN/nginx-burst-error.log" -g 'daemon off;' ;;
    haproxy)
        write_haproxy_conf "$WORKERS" haproxy-burst "    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_H2_PORT proto h2
$(haproxy_tls_bind "$TLS_PORT")"
        start_bg haproxy "$T_CPUS" haproxy -db -f "$RUN/haproxy-burst.cfg" ;;
    proxy)
        write_proxy_config "$RUN/proxy-burst.yaml" "  - { name: bench, address: 127.0.0.1:$PROXY_PORT }
$(proxy_tls_listener secure "$TLS_PORT")"
        PROXY_CONFIG=$RUN/proxy-burst.yaml start_target proxy "$T_CPUS" "$WORKERS" || return 1 ;;
    esac
    wait_ready "$t" "http://127.0.0.1:$(h1_port "$t")/" || return 1
    for i in $(seq 1 100); do https_ok && return 0; sleep 0.1; done
    return 1
}
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
ROWS=()
for t in $TARGETS; do
    h1=$(h1_port "$t") h2=$(h2_port "$t")
    if ! start_burst_target "$t"; then log "$t failed to start; skipped"; stop_proc "$t"; continue; fi
    mapfile -t tpids < <(tree_pids "${PIDS[$t]}")
    sleep 2
    before=$(rss_kb "${tpids[@]}")
    requests=0 errors=0
    for r in $(seq 1 "$ROUNDS"); do
        pids=()
        load() { # NAME COMMAND...
            local name=$1; shift
            pin "$CLIENT_CPUS" timeout -k 5 $((DURATION + 30)) "$@" >"$RUN/load-$t-$name.log" 2>&1 &
            pids+=($!)
        }
        load keepalive wrk -t1 -c100 -d"${DURATION}s" "http://127.0.0.1:$h1/"
        load close wrk -t1 -c50 -d"${DURATION}s" -H "Connection: close" "http://127.0.0.1:$h1/"
        load h2 h2load -c25 -m10 -D "$DURATION" "http://127.0.0.1:$h2/"
        load tls wrk -t1 -c100 -d"${DURATION}s" "https://127.0.0.1:$TLS_PORT/"
        load tls-h2 h2load -c25 -m10 -D "$DURATION" "https://127.0.0.1:$TLS_PORT/"
        wait "${pids[@]}"
        for f in keepalive close tls; do
            n=$(awk '/requests in/{print $1}' "$RUN/load-$t-$f.log")
            e=$(awk '/Non-2xx|Socket errors/{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i} END{print s + 0}' "$RUN/load-$t-$f.log")
            requests=$((requests + ${n:-0})) errors=$((errors + ${e:-0}))
        done
        for f in h2 tls-h2; do
            n=$(awk '/^requests:/{print $8}' "$RUN/load-$t-$f.log") e=$(awk '/^requests:/{print $10 + $12}' "$RUN/load-$t-$f.log")
            requests=$((requests + ${n:-0})) errors=$((errors + ${e:-0}))
        done
        ((r < ROUNDS)) && sleep "$GAP"
    done
    sleep 1
    burst=$(rss_kb "${tpids[@]}")
    sleep "$IDLE"
    idle=$(rss_kb "${tpids[@]}")
    peak=$(hwm_kb "${tpids[@]}")
    log "$t: RSS before $(mib "$before") MiB, after the bursts $(mib "$burst"), after ${IDLE}s idle $(mib "$idle"), peak $(mib "$peak"); $requests requests, $errors errors"
    ROWS+=("| $t | $requests | $errors | $(mib "$before") | $(mib "$peak") | $(mib "$burst") | $(mib "$idle") |")
    stop_proc "$t"
done
stop_proc origin

echo
echo "### memory after bursts: $ROUNDS bursts of ${DURATION}s (cleartext: 100 keep-alive + 50 close-per-request HTTP/1.1, 25x10 h2c; TLS: 100 HTTP/1.1, 25x10 h2), then ${IDLE}s idle ($( [[ $PIN == 1 ]] && echo "pinned, 1 worker" || echo "unpinned, $WORKERS workers"))"
echo
echo "| target | requests | errors | RSS before MiB | peak MiB | right after MiB | after ${IDLE}s idle MiB |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
