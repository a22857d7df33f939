#!/usr/bin/env bash
# TLS side by side: Proxy, nginx and HAProxy each terminating TLS (same ECDSA P-256 certificate, TLS 1.2/1.3, ALPN h2
# and http/1.1) in front of the same nginx origin. Loads: HTTP/1.1 keep-alive with wrk over https, and HTTP/2 over TLS
# with h2load (16 connections x 10 streams, as S4 in run.sh). Steady state: the clients keep their connections, so this
# measures record encryption and proxying, not handshakes (HANDSHAKES=1 adds a wrk run with a new connection per request).
#
#   bench/load/tls.sh                              # nginx, haproxy and proxy; h1 and h2, 5 s each after warm-up
#   DURATION=10 TARGETS="nginx proxy" LOADS=h2 bench/load/tls.sh
#   AOT=1 bench/load/tls.sh                        # NativeAOT build of the proxy (default here: JIT, quicker to build)
#   ROUNDS=5 TARGETS="nginx proxy" bench/load/tls.sh   # targets take turns 5 times; medians and paired ratios vs nginx
#
# Knobs: TARGETS ("nginx haproxy proxy")  LOADS ("h1 h2")  DURATION (5)  WARMUP (2)  PREWARM (10)  CONNECTIONS (64)
#        LATENCY_DURATION (3: h2's percentiles come from a separate h2load run with a per-request log)
#        ROUNDS (1: with more, each round restarts every target in turn, and a summary gives per target and load the
#        median req/s and CPU us/req, and the medians of the ratios to nginx's in the same round)  HANDSHAKES (0)  TLS_NGINX_PORT (8443)  TLS_PROXY_PORT (8444)  TLS_HAPROXY_PORT (8445)
#        plus common.sh's PIN CPUs (proxy on PROXY_CPUS, load generator and origin on 0).
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DURATION=${DURATION:-5}
LATENCY_DURATION=${LATENCY_DURATION:-3}
WARMUP=${WARMUP:-2}
PREWARM=${PREWARM:-10}
CONNECTIONS=${CONNECTIONS:-64}
HANDSHAKES=${HANDSHAKES:-0}
TARGETS=${TARGETS:-nginx haproxy proxy}
LOADS=${LOADS:-h1 h2}
ROUNDS=${ROUNDS:-1}
TLS_NGINX_PORT=${TLS_NGINX_PORT:-8443}
TLS_PROXY_PORT=${TLS_PROXY_PORT:-8444}
TLS_HAPROXY_PORT=${TLS_HAPROXY_PORT:-8445}
AOT=${AOT:-0}
HZ=$(getconf CLK_TCK)

ensure_tools nginx haproxy wrk h2load openssl curl taskset pgrep
raise_nofile
mkdir -p "$RUN"; fresh_run_dir
trap stop_all EXIT
require_free_ports "$ORIGIN_PORT" "$TLS_NGINX_PORT" "$TLS_PROXY_PORT" "$TLS_HAPROXY_PORT"

make_tls_cert

write_nginx_tls_conf() { # -> $RUN/nginx-tls.conf
    write_nginx_conf nginx-tls 1 "$(nginx_tls_listen "$TLS_NGINX_PORT")"
}

write_haproxy_tls_conf() { # -> $RUN/haproxy-tls.cfg
    write_haproxy_conf 1 haproxy-tls "$(haproxy_tls_bind "$TLS_HAPROXY_PORT")"
}

write_proxy_tls_yaml() { # -> $RUN/proxy-tls.yaml
    write_proxy_config "$RUN/proxy-tls.yaml" "$(proxy_tls_listener bench "$TLS_PROXY_PORT")"
}

https_ok() { [[ $(curl -s -m 2 --cacert "$RUN/tls.pem" -o /dev/null -w '%{http_code}' "$1" 2>/dev/null) == 200 ]]; }

wait_https() { # NAME URL
    local i
    for i in $(seq 1 150); do
        https_ok "$2" && return 0
        kill -0 "${PIDS[$1]}" 2>/dev/null || { log "$1 exited"; tail -20 "$RUN/$1.out" >&2; return 1; }
        sleep 0.2
    done
    return 1
}

port_of() { case $1 in nginx) echo "$TLS_NGINX_PORT" ;; proxy) echo "$TLS_PROXY_PORT" ;; haproxy) echo "$TLS_HAPROXY_PORT" ;; esac; }

[[ " $TARGETS " == *" proxy "* ]] && build_proxy
start_origin "$ORIGIN_CPUS"

load_cmd_tls() { # LOAD SECONDS : sets LOAD_CMD for $url and target $t
    case $1 in
    h1) LOAD_CMD=(wrk -t2 -c"$CONNECTIONS" -d"$2s" --latency "$url") ;;
    handshake) LOAD_CMD=(wrk -t2 -c"$CONNECTIONS" -d"$2s" --latency -H "Connection: close" "$url") ;;
    h2) LOAD_CMD=(h2load -t1 -c16 -m10 -D "$2" "$url") ;;
    # Percentiles come from h2load's per-request log, in a run of their own: writing that log costs h2load, on the
    # core it shares with the origin, about a quarter of its rate, and a slower client changes how the target
    # batches (Proxy's CPU per request went from 19 to 25 us with it on). Requests/s and CPU come from the run without.
    h2-latency) LOAD_CMD=(h2load -t1 -c16 -m10 -D "$2" --log-file="$RUN/h2load-$t.log" "$url") ;;
    *) die "unknown load $1 (h1 h2 handshake)" ;;
    esac
}

printf '%-8s %-10s %12s %10s %10s %14s\n' target load "req/s" "p50" "p99" "proxy us/req"
: >"$RUN/tls-rows.tsv"
for round in $(seq 1 "$ROUNDS"); do
for t in $TARGETS; do
    case $t in
    nginx) write_nginx_tls_conf
        start_bg nginx "$PROXY_CPUS" nginx -p "$RUN" -c "$RUN/nginx-tls.conf" -e "$RUN/nginx-tls-error.log" -g 'daemon off;' ;;
    haproxy) write_haproxy_tls_conf
        start_bg haproxy "$PROXY_CPUS" haproxy -db -f "$RUN/haproxy-tls.cfg" ;;
    proxy) write_proxy_tls_yaml
        start_bg proxy "$PROXY_CPUS" env DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_PROCESSOR_COUNT=1 "$PROXY_BIN" run --config "$RUN/proxy-tls.yaml" ;;
    *) die "unknown target $t (nginx haproxy proxy)" ;;
    esac
    url="https://127.0.0.1:$(port_of "$t")/"
    wait_https "$t" "$url" || die "$t did not answer 200 at $url"
    [[ $t == proxy ]] && pin "$LG_CPUS" timeout $((PREWARM + 20)) wrk -t2 -c"$CONNECTIONS" -d"${PREWARM}s" "$url" >/dev/null 2>&1
    loads=($LOADS)
    [[ $HANDSHAKES == 1 ]] && loads+=("handshake")
    for load in "${loads[@]}"; do
        load_cmd_tls "$load" "$WARMUP"
        pin "$LG_CPUS" timeout $((WARMUP + 20)) "${LOAD_CMD[@]}" >/dev/null 2>&1
        mapfile -t pids < <(tree_pids "${PIDS[$t]}")
        c0=$(cpu_ticks "${pids[@]}")
        load_cmd_tls "$load" "$DURATION"
        out=$(pin "$LG_CPUS" timeout $((DURATION + 30)) "${LOAD_CMD[@]}" 2>&1)
        c1=$(cpu_ticks "${pids[@]}")
        if [[ $load == h2 ]]; then
            rps=$(awk '/^finished in/{for(i=1;i<=NF;i++) if($i ~ /^req\/s/) {v=$(i-1); gsub(/,/,"",v); print v}}' <<<"$out")
            total=$(awk '/^requests:/{gsub(/,/,""); print $8}' <<<"$out")
            # h2load prints no percentiles; its log file has one line per request, the 3rd field in microseconds.
            load_cmd_tls h2-latency "$LATENCY_DURATION"
            rm -f "$RUN/h2load-$t.log"
            pin "$LG_CPUS" timeout $((LATENCY_DURATION + 30)) "${LOAD_CMD[@]}" >/dev/null 2>&1
            read -r p50 p99 < <(cut -f3 "$RUN/h2load-$t.log" 2>/dev/null | sort -n | awk '{a[NR]=$1} END { if (!NR) { print "- -"; exit }
                n50=int(NR*0.50); n99=int(NR*0.99); if (n50<1) n50=1; if (n99<1) n99=1; printf "%.2fms %.2fms\n", a[n50]/1000, a[n99]/1000 }')
        else
            rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
            total=$(awk '/requests in/ {print $1}' <<<"$out")
            p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
        fi
        us=$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v n="${total:-0}" 'BEGIN { if (n > 0) printf "%.1f", c / hz * 1e6 / n; else print "-" }')
        printf '%-8s %-10s %12s %10s %10s %14s\n' "$t" "$load" "${rps:--}" "${p50:--}" "${p99:--}" "$us"
        printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$load" "${rps:--}" "$us" >>"$RUN/tls-rows.tsv"
    done
    stop_proc "$t"
done
done

if ((ROUNDS > 1)); then
    # Per target and load: median req/s and CPU; against nginx, each round's ratio first (same round, same machine
    # state), then the median and spread of those ratios.
    printf '\n%-8s %-6s %12s %12s %22s %22s\n' target load "req/s med" "us/req med" "req/s vs nginx" "us/req vs nginx"
    awk -F'\t' '
        function median(list,   n, a, i, j, t) {
            n = split(list, a, " "); for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
            return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
        function spread(list,   n, a, i, lo, hi) {
            n = split(list, a, " "); lo = hi = a[1]; for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
            return sprintf("%.2f-%.2f", lo, hi) }
        $4 != "-" { key = $2 " " $3; rps[key] = rps[key] " " $4; us[key] = us[key] " " $5; at[$1 " " key] = $4 " " $5
                    if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
        END {
            for (k = 1; k <= n; k++) {
                key = order[k]; split(key, tl, " "); rr = ""; ur = ""
                for (r = 1; r <= '"$ROUNDS"'; r++) {
                    if (!((r " " key) in at) || !((r " nginx " tl[2]) in at)) continue
                    split(at[r " " key], m, " "); split(at[r " nginx " tl[2]], g, " ")
                    if (g[1] > 0) rr = rr " " m[1] / g[1]; if (g[2] > 0) ur = ur " " m[2] / g[2]
                }
                printf "%-8s %-6s %12.0f %12.1f %22s %22s\n", tl[1], tl[2], median(rps[key]), median(us[key]),
                    rr == "" ? "-" : sprintf("%.2f (%s)", median(rr), spread(rr)), ur == "" ? "-" : sprintf("%.2f (%s)", median(ur), spread(ur))
            }
        }' "$RUN/tls-rows.tsv"
fi
