#!/usr/bin/env bash
# Paired side by side: nginx and one other proxy pinned to the SAME core and loaded AT THE SAME TIME (two load
# generators on the other core), so that whatever the machine does meanwhile (another tenant, a frequency change)
# hits both alike. Each round gives the other proxy's CPU per request and requests over nginx's in the same seconds;
# the summary is the median and quartiles of those ratios. On a shared VM whose speed changes by 2x from minute to
# minute, run.sh's ratios (targets taking turns) spread over +-30%; these spread over a few percent.
#
# Per round it also takes the ratio of the two wrk loads' p99 latencies (h2load prints no percentiles).
#
# What it measures is not what run.sh measures: each proxy gets about half a core and half the connections, so a
# row says which of two proxies costs less CPU per request under the same load, not how fast either one is alone.
#
#   bench/load/paired.sh                                   # haproxy and proxy against nginx, all scenarios, ~8 min
#   TARGETS="haproxy yarp proxy" ROUNDS=6 bench/load/paired.sh   # YARP too (publishes its app once), ~11 min
#   TARGETS=proxy SCENARIOS="S1 T1" ROUNDS=12 bench/load/paired.sh
#   PROXY_BIN=/path/to/proxy TARGETS=proxy bench/load/paired.sh
#   BASELINE_BIN=/path/to/old/proxy TARGETS=proxy bench/load/paired.sh   # a change: this checkout's proxy against an
#                                              # older build instead of nginx; run it also with the two swapped (two
#                                              # builds' ratio moves by a few points with the order, see bench/load/README.md)
#
# Scenarios (per load generator; both run at once; every load is bounded by `timeout`):
#   S1  32 keep-alive connections, 100-byte response        wrk -t1 -c32
#   S3  32 keep-alive connections, 16 KiB response          wrk -t1 -c32 /static/16k.bin
#   S4  HTTP/2 cleartext, 8 connections x 10 streams        h2load -t1 -c8 -m10
#   S5  a new connection per request (Connection: close)    wrk -t1 -c16
#   T1  TLS HTTP/1.1, 32 keep-alive connections             wrk -t1 -c32 https://
#   T2  TLS HTTP/2, 8 connections x 10 streams              h2load -t1 -c8 -m10 https://
#
# Knobs: TARGETS ("haproxy proxy"; also yarp)  SCENARIOS ("S1 S3 S4 S5 T1 T2")  ROUNDS (8)  DURATION (4 s per round)
#        WARMUP (3)  PREWARM (10 s of S1 and T1 load after Proxy starts)  TLS_NGINX_PORT (8443)  TLS_PROXY_PORT (8444)
#        TLS_HAPROXY_PORT (8445), TLS_YARP_PORT (8447), BASELINE_BIN (unset: nginx is the baseline), BASELINE_PORT (8086) and
#        TLS_BASELINE_PORT (8446), plus common.sh's PROXY_BIN, PROXY_ENV and CPUs (both proxies on PROXY_CPUS; load
#        generators and origin on LG_CPUS and ORIGIN_CPUS).
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TARGETS=${TARGETS:-haproxy proxy}
SCENARIOS=${SCENARIOS:-S1 S3 S4 S5 T1 T2}
ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-3}
PREWARM=${PREWARM:-10}
TLS_NGINX_PORT=${TLS_NGINX_PORT:-8443}
TLS_PROXY_PORT=${TLS_PROXY_PORT:-8444}
TLS_HAPROXY_PORT=${TLS_HAPROXY_PORT:-8445}
TLS_YARP_PORT=${TLS_YARP_PORT:-8447}
BASELINE_BIN=${BASELINE_BIN:-}
BASELINE_PORT=${BASELINE_PORT:-8086}
TLS_BASELINE_PORT=${TLS_BASELINE_PORT:-8446}
# The reference every ratio is taken against: nginx, or with BASELINE_BIN another build of Proxy ("baseline").
REF=nginx
[[ -n $BASELINE_BIN ]] && { [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"; REF=baseline; }
HZ=$(getconf CLK_TCK)
LOAD_TIMEOUT=$((DURATION + 30))

for sc in $SCENARIOS; do case $sc in S1 | S3 | S4 | S5 | T1 | T2) ;; *) die "unknown scenario '$sc' (S1 S3 S4 S5 T1 T2)" ;; esac; done
for t in $TARGETS; do case $t in haproxy | yarp | proxy) ;; *) die "unknown target '$t' (haproxy yarp proxy)" ;; esac; done

ensure_tools nginx haproxy wrk h2load openssl curl taskset pgrep
raise_nofile
mkdir -p "$RUN"; fresh_run_dir
trap stop_all EXIT
require_free_ports "$ORIGIN_PORT" "$NGINX_PORT" "$NGINX_H2_PORT" "$HAPROXY_PORT" "$HAPROXY_H2_PORT" "$PROXY_PORT" \
    "$TLS_NGINX_PORT" "$TLS_PROXY_PORT" "$TLS_HAPROXY_PORT" "$BASELINE_PORT" "$TLS_BASELINE_PORT"
[[ " $TARGETS " == *" yarp "* ]] && require_free_ports "$YARP_PORT" "$YARP_H2_PORT" "$TLS_YARP_PORT"

make_tls_cert

# One process per proxy serves every scenario: cleartext HTTP/1.1, h2c and TLS listeners side by side.
start_paired() { # NAME
    case $1 in
    nginx)
        write_nginx_conf nginx-paired 1 "        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        listen 127.0.0.1:$NGINX_H2_PORT http2 backlog=4096;
$(nginx_tls_listen "$TLS_NGINX_PORT")"
        start_bg nginx "$PROXY_CPUS" nginx -p "$RUN" -c "$RUN/nginx-paired.conf" -e "$RUN/nginx-paired-error.log" -g 'daemon off;' ;;
    haproxy)
        write_haproxy_conf 1 haproxy-paired "    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_H2_PORT proto h2
$(haproxy_tls_bind "$TLS_HAPROXY_PORT")"
        start_bg haproxy "$PROXY_CPUS" haproxy -db -f "$RUN/haproxy-paired.cfg" ;;
    yarp)
        # Kestrel's HTTP/1.1 and h2c endpoints from common.sh, plus a TLS one (HTTP/1.1 and h2 by ALPN) on the same
        # certificate as the others; one core's worth of thread pool, as the proxies get.
        start_bg yarp "$PROXY_CPUS" env Kestrel__Endpoints__h1__Url="http://127.0.0.1:$YARP_PORT" \
            Kestrel__Endpoints__h2__Url="http://127.0.0.1:$YARP_H2_PORT" \
            Kestrel__Endpoints__tls__Url="https://127.0.0.1:$TLS_YARP_PORT" Kestrel__Endpoints__tls__Protocols=Http1AndHttp2 \
            Kestrel__Endpoints__tls__Certificate__Path="$RUN/tls.pem" Kestrel__Endpoints__tls__Certificate__KeyPath="$RUN/tls.key" \
            ReverseProxy__Clusters__origin__Destinations__d1__Address="http://127.0.0.1:$ORIGIN_PORT/" \
            DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_PROCESSOR_COUNT=1 dotnet "$WORK/yarp-publish/YarpBench.dll" ;;
    proxy | baseline)
        local bin=$PROXY_BIN
        [[ $1 == baseline ]] && bin=$BASELINE_BIN
        write_proxy_config "$RUN/$1-paired.yaml" "  - { name: bench, address: 127.0.0.1:$(paired_h1_port "$1") }
$(proxy_tls_listener secure "$(tls_port "$1")")"
        local envs=(DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_PROCESSOR_COUNT=1)
        [[ -n $PROXY_ENV ]] && { read -r -a extra <<<"$PROXY_ENV"; envs+=("${extra[@]}"); }
        start_bg "$1" "$PROXY_CPUS" env "${envs[@]}" "$bin" run --config "$RUN/$1-paired.yaml" ;;
    esac
    wait_ready "$1" "http://127.0.0.1:$(paired_h1_port "$1")/" || die "$1 did not start"
    local i
    for i in $(seq 1 150); do
        [[ $(curl -s -m 2 --cacert "$RUN/tls.pem" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$(tls_port "$1")/") == 200 ]] && return 0
        sleep 0.2
    done
    die "$1 did not answer 200 over TLS"
}

tls_port() { case $1 in nginx) echo "$TLS_NGINX_PORT" ;; haproxy) echo "$TLS_HAPROXY_PORT" ;; yarp) echo "$TLS_YARP_PORT" ;; proxy) echo "$TLS_PROXY_PORT" ;; baseline) echo "$TLS_BASELINE_PORT" ;; esac; }
# The HTTP/1.1 port: common.sh's, plus the baseline build's.
paired_h1_port() { case $1 in baseline) echo "$BASELINE_PORT" ;; *) h1_port "$1" ;; esac; }
# The h2c port: Proxy serves h2c (prior knowledge) on its HTTP/1.1 listener.
h2c_port() { case $1 in proxy | baseline) paired_h1_port "$1" ;; *) h2_port "$1" ;; esac; }

load_cmd() { # SCENARIO TARGET SECONDS -> LOAD (command array), KIND (wrk|h2load)
    local h1="127.0.0.1:$(paired_h1_port "$2")" tls="127.0.0.1:$(tls_port "$2")"
    case $1 in
    S1) KIND=wrk; LOAD=(wrk -t1 -c32 -d"$3s" --latency "http://$h1/") ;;
    S3) KIND=wrk; LOAD=(wrk -t1 -c32 -d"$3s" --latency "http://$h1/static/16k.bin") ;;
    S4) KIND=h2load; LOAD=(h2load -t1 -c8 -m10 -D "$3" "http://127.0.0.1:$(h2c_port "$2")/") ;;
    S5) KIND=wrk; LOAD=(wrk -t1 -c16 -d"$3s" --latency -H 'Connection: close' "http://$h1/") ;;
    T1) KIND=wrk; LOAD=(wrk -t1 -c32 -d"$3s" --latency "https://$tls/") ;;
    T2) KIND=h2load; LOAD=(h2load -t1 -c8 -m10 -D "$3" "https://$tls/") ;;
    esac
}

# requests completed, from a load generator's output file
completed() { # KIND FILE
    if [[ $1 == wrk ]]; then awk '/requests in/ {print $1}' "$2"
    else awk '/^requests:/ {gsub(/,/, ""); print $8}' "$2"; fi
}

# 99th percentile latency in microseconds from wrk --latency's distribution ("99%  5.67ms"); "-" for h2load, which
# prints no percentiles
p99_us() { # KIND FILE
    [[ $1 == wrk ]] || { echo -; return; }
    awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
                       f = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : 0; if (f) { printf "%.0f\n", v * f; exit } }' "$2" | grep . || echo -
}

# run_both SCENARIO OTHER SECONDS : both loads at once; sets N_REF N_OTHER (requests) C_REF C_OTHER (clock ticks)
# P_REF P_OTHER (p99 latency, us, or "-")
run_both() {
    local sc=$1 o=$2 secs=$3 kind_n kind_o pn po
    local -a load_n load_o
    load_cmd "$sc" "$REF" "$secs"; load_n=("${LOAD[@]}"); kind_n=$KIND
    load_cmd "$sc" "$o" "$secs"; load_o=("${LOAD[@]}"); kind_o=$KIND
    local -a tn to
    mapfile -t tn < <(tree_pids "${PIDS[$REF]}"); mapfile -t to < <(tree_pids "${PIDS[$o]}")
    local c0n c0o
    c0n=$(cpu_ticks "${tn[@]}"); c0o=$(cpu_ticks "${to[@]}")
    pin "$LG_CPUS" timeout "$LOAD_TIMEOUT" "${load_n[@]}" >"$RUN/paired-ref.txt" 2>&1 & pn=$!
    pin "$LG_CPUS" timeout "$LOAD_TIMEOUT" "${load_o[@]}" >"$RUN/paired-$o.txt" 2>&1 & po=$!
    wait "$pn" "$po"
    C_REF=$(($(cpu_ticks "${tn[@]}") - c0n)); C_OTHER=$(($(cpu_ticks "${to[@]}") - c0o))
    N_REF=$(completed "$kind_n" "$RUN/paired-ref.txt"); N_OTHER=$(completed "$kind_o" "$RUN/paired-$o.txt")
    P_REF=$(p99_us "$kind_n" "$RUN/paired-ref.txt"); P_OTHER=$(p99_us "$kind_o" "$RUN/paired-$o.txt")
}

[[ " $TARGETS " == *" proxy "* ]] && build_proxy
[[ " $TARGETS " == *" yarp "* ]] && build_yarp
start_origin "$ORIGIN_CPUS"
start_paired "$REF"
prewarm() { # NAME : a JIT-free binary still has cold caches and pools: some S1 and T1 load first
    pin "$LG_CPUS" timeout $((PREWARM + 20)) wrk -t1 -c32 -d"${PREWARM}s" "http://127.0.0.1:$(paired_h1_port "$1")/" >/dev/null 2>&1
    pin "$LG_CPUS" timeout $((PREWARM + 20)) wrk -t1 -c32 -d"${PREWARM}s" "https://127.0.0.1:$(tls_port "$1")/" >/dev/null 2>&1
}
[[ $REF == baseline ]] && prewarm baseline

printf '%-8s %-4s %6s %12s %12s %26s %26s %26s\n' target sc rounds "$REF us/req" "us/req" "requests vs $REF" "CPU/request vs $REF" "p99 latency vs $REF"
for o in $TARGETS; do
    start_paired "$o"
    # A JIT-compiled YARP needs its warm-up more than anyone: tiered compilation and dynamic PGO settle under load.
    [[ $o == proxy || $o == yarp ]] && prewarm "$o"
    for sc in $SCENARIOS; do
        run_both "$sc" "$o" "$WARMUP"
        : >"$RUN/paired-rounds.tsv"
        for r in $(seq 1 "$ROUNDS"); do
            run_both "$sc" "$o" "$DURATION"
            [[ ${N_REF:-0} -gt 0 && ${N_OTHER:-0} -gt 0 ]] || { log "$o $sc round $r: no requests completed"; continue; }
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$N_REF" "$C_REF" "$N_OTHER" "$C_OTHER" "$P_REF" "$P_OTHER" >>"$RUN/paired-rounds.tsv"
        done
        awk -F'\t' -v hz="$HZ" -v t="$o" -v sc="$sc" '
            function sorted(list, a,   n, i, j, x) { n = split(list, a, " "); for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { x = a[j]; a[j] = a[j-1]; a[j-1] = x } return n }
            function q(a, n, f,   k) { k = 1 + (n - 1) * f; return a[int(k)] + (k - int(k)) * (a[int(k) + 1] - a[int(k)]) }
            function summary(list,   a, n) { n = sorted(list, a); return sprintf("%.3f (q1-q3 %.3f-%.3f)", q(a, n, 0.5), q(a, n, 0.25), q(a, n, 0.75)) }
            function med(list,   a, n) { n = sorted(list, a); return q(a, n, 0.5) }
            { un = $2 / hz * 1e6 / $1; uo = $4 / hz * 1e6 / $3; usn = usn " " un; uso = uso " " uo; rr = rr " " $3 / $1; cr = cr " " uo / un; n++
              if ($5 + 0 > 0 && $6 + 0 > 0) { pr = pr " " $6 / $5; np++ } }
            END { if (!n) { printf "%-8s %-4s %6d %12s %12s %26s %26s %26s\n", t, sc, 0, "-", "-", "-", "-", "-"; exit }
                  printf "%-8s %-4s %6d %12.1f %12.1f %26s %26s %26s\n", t, sc, n, med(usn), med(uso), summary(rr), summary(cr), np ? summary(pr) : "-" }' "$RUN/paired-rounds.tsv"
    done
    stop_proc "$o"
done
