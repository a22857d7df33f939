#!/usr/bin/env bash
# Side-by-side load benchmark on loopback: Proxy against nginx, HAProxy and (optionally) YARP, all in
# front of the same nginx origin, plus the origin alone ("direct") as the ceiling.
#
#   bench/load/run.sh                                   # quick run, about 4 minutes
#   REPS=3 DURATION=10 bench/load/run.sh                # full run, medians of 3
#   ROUNDS=3 REPS=1 bench/load/run.sh                   # targets take turns: nginx, haproxy, proxy, nginx, ...
#   TARGETS="direct nginx haproxy yarp proxy" bench/load/run.sh
#   SCENARIOS="S1 S3" TARGETS="nginx proxy" bench/load/run.sh
#   PROXY_ENV="DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1" bench/load/run.sh
#   ONLY_SUMMARY=/tmp/proxy-bench/results/runs-XXXX.tsv bench/load/run.sh   # reprint a table
#
# Scenarios (each load is bounded by `timeout`):
#   S1  64 keep-alive connections, 100-byte response          wrk -t2 -c64
#   S2  one keep-alive connection, latency p50/p99            wrk -t1 -c1
#   S3  64 keep-alive connections, 16 KiB response            wrk -t2 -c64 /static/16k.bin
#   S4  HTTP/2 cleartext (prior knowledge), 16 conns x 10 streams   h2load -t1 -c16 -m10
#       (Proxy serves h2c on its HTTP/1.1 listener, so PROXY_H2_PORT defaults to PROXY_PORT)
#   S5  a new connection per request (Connection: close)      wrk -t2 -c32
#
# Knobs (default):
#   TARGETS ("direct nginx haproxy proxy")   any of: direct nginx haproxy yarp proxy
#   SCENARIOS ("S1 S2 S3 S4 S5")
#   DURATION (5) WARMUP (2) PREWARM (10) REPS (1)   seconds measured / seconds of discarded load before
#       each measurement / seconds of discarded S1 load after each proxy starts (lets the JIT tier up) /
#       repetitions (the table shows the median)
#   LATENCY_DURATION (3)   S4's percentiles come from a separate h2load run this long, with its per-request log
#   ROUNDS (1)   the whole target sequence this many times, each target restarted in each round, so a
#       minutes-long slowdown of the machine hits every target alike; the paired table then gives, per round,
#       each target's ratio to nginx measured minutes apart rather than a quarter of an hour apart
#   PIN (1)   1: proxy alone on PROXY_CPUS (1), load generator on LG_CPUS (0), origin on ORIGIN_CPUS (0),
#             one worker per proxy; 0: no pinning, one worker per CPU; "1 0": both, one after the other
#   WORKERS   override the worker/thread count of the proxies
#   PROXY_BIN (publish from this checkout)  PROXY_CONFIG (generated)  PROXY_ENV ("")  YARP_ENV ("")
#   PROXY_PORT (8084) PROXY_H2_PORT (PROXY_PORT)   WORK (/tmp/proxy-bench)   RESULTS_DIR ($WORK/results)
#   INSTALL (1)   apt-get install missing tools
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# A cleartext Proxy listener detects the HTTP/2 preface (h2c with prior knowledge) on the same port.
PROXY_H2_PORT=${PROXY_H2_PORT:-$PROXY_PORT}

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
LATENCY_DURATION=${LATENCY_DURATION:-3}
PREWARM=${PREWARM:-10}
REPS=${REPS:-1}
ROUNDS=${ROUNDS:-1}
PIN=${PIN:-1}
TARGETS=${TARGETS:-direct nginx haproxy proxy}
SCENARIOS=${SCENARIOS:-S1 S2 S3 S4 S5}
RESULTS=${RESULTS_DIR:-$WORK/results}
LOAD_TIMEOUT=$((DURATION + 30))
STAMP=$(date +%Y%m%d-%H%M%S)
HZ=$(getconf CLK_TCK)
U_LG_CPUS=$LG_CPUS U_ORIGIN_CPUS=$ORIGIN_CPUS U_PROXY_CPUS=$PROXY_CPUS U_WORKERS=${WORKERS:-}

# ------------------------------------------------------------------------------------------ load
# load_cmd SCENARIO TARGET SECONDS : sets LOAD (command array) and KIND (wrk|h2load); fails if the
# target cannot run the scenario.
load_cmd() {
    local sc=$1 t=$2 d=$3 p h2
    p=$(h1_port "$t"); h2=$(h2_port "$t")
    case $sc in
    S1) KIND=wrk; LOAD=(wrk -t2 -c64 -d"${d}s" --latency "http://127.0.0.1:$p/") ;;
    S2) KIND=wrk; LOAD=(wrk -t1 -c1 -d"${d}s" --latency "http://127.0.0.1:$p/") ;;
    S3) KIND=wrk; LOAD=(wrk -t2 -c64 -d"${d}s" --latency "http://127.0.0.1:$p/static/16k.bin") ;;
    S4) KIND=h2load; [[ -n $h2 ]] || return 1
        LOAD=(h2load -t1 -c16 -m10 -D "$d" "http://127.0.0.1:$h2/") ;;
    S5) KIND=wrk; LOAD=(wrk -t2 -c32 -d"${d}s" --latency -H 'Connection: close' "http://127.0.0.1:$p/") ;;
    *) die "unknown scenario $sc (known: S1 S2 S3 S4 S5)" ;;
    esac
}

to_us() { # wrk duration ("45.00us", "1.20ms", "1.00s") -> microseconds
    awk -v v="$1" 'BEGIN{ m=1; if (v ~ /us$/) sub(/us$/,"",v); else if (v ~ /ms$/) {sub(/ms$/,"",v); m=1000}
                         else if (v ~ /m$/) {sub(/m$/,"",v); m=60000000} else if (v ~ /s$/) {sub(/s$/,"",v); m=1000000}
                         printf "%.1f", v*m }'
}

# Both parsers print: req/s p50_us p90_us p99_us errors requests
parse_wrk() {
    local f=$1 rps p50 p90 p99 err bad req
    rps=$(awk '/^Requests\/sec:/{print $2}' "$f")
    p50=$(awk '$1=="50%"{print $2}' "$f"); p90=$(awk '$1=="90%"{print $2}' "$f"); p99=$(awk '$1=="99%"{print $2}' "$f")
    err=$(awk '/Socket errors:/{gsub(/,/,""); print $4+$6+$8+$10}' "$f")   # connect read write timeout
    bad=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$f")
    req=$(awk '/requests in/{print $1}' "$f")
    echo "${rps:-0} $(to_us "${p50:-0us}") $(to_us "${p90:-0us}") $(to_us "${p99:-0us}") $((${err:-0} + ${bad:-0})) ${req:-0}"
}
parse_h2load() { # output per-request-log
    local f=$1 lg=$2 rps err bad req pct="0 0 0"
    rps=$(awk '/^finished in/{for(i=1;i<=NF;i++) if($i ~ /^req\/s/) {v=$(i-1); gsub(/,/,"",v); print v}}' "$f")
    err=$(awk '/^requests:/{gsub(/,/,""); print $10+$12+$14}' "$f")   # failed errored timeout
    bad=$(awk '/^status codes:/{gsub(/,/,""); print $5+$7+$9}' "$f")  # 3xx 4xx 5xx
    req=$(awk '/^requests:/{gsub(/,/,""); print $8}' "$f")            # succeeded
    # h2load prints no percentiles; its --log-file has one line per request, the 3rd field in microseconds.
    [[ -s $lg ]] && pct=$(cut -f3 "$lg" | sort -n | awk '{a[NR]=$1} END{ if (!NR) {print "0 0 0"; exit}
        n50=int(NR*0.50); n90=int(NR*0.90); n99=int(NR*0.99); if (n50<1) n50=1; if (n90<1) n90=1; if (n99<1) n99=1
        printf "%.1f %.1f %.1f", a[n50], a[n90], a[n99] }')
    echo "${rps:-0} $pct $((${err:-0} + ${bad:-0})) ${req:-0}"
}

# busy clock ticks (all CPUs): everything but idle and iowait
sys_busy() { awk '$1=="cpu"{b=0; for(i=2;i<=NF;i++) b+=$i; print b-$5-$6}' /proc/stat; }
secs() { awk -v v="$1" 'BEGIN{ split(v,a,"m"); sub(/s$/,"",a[2]); printf "%.2f", a[1]*60 + a[2] }'; }   # "0m1.23s"

TSV_HEADER="stamp\tmode\ttarget\tscenario\trep\trps\tp50_us\tp90_us\tp99_us\terrors\trequests\tproxy_cpu_s\tproxy_hwm_kb\torigin_cpu_s\tloadgen_cpu_s\tother_cpu_s\tloadavg1"

# measure MODE TARGET SCENARIO REP : warm-up, then one measured load; appends a line to the runs TSV.
measure() {
    local mode=$1 t=$2 sc=$3 rep=$4 out ppids=() opids=() res
    if ! load_cmd "$sc" "$t" "$WARMUP"; then log "$t: $sc skipped (no HTTP/2 cleartext listener)"; return 0; fi
    out=$RUN/load-$mode-$t-$sc-$rep
    ((WARMUP > 0)) && pin "$LG_CPUS" timeout -k 5 "$LOAD_TIMEOUT" "${LOAD[@]}" >"$out.warmup" 2>&1
    load_cmd "$sc" "$t" "$DURATION"
    [[ $t != direct ]] && mapfile -t ppids < <(tree_pids "${PIDS[$t]}")
    mapfile -t opids < <(tree_pids "${PIDS[origin]}")
    reset_hwm "${ppids[@]}"
    local pc0 oc0 sb0 pc1 oc1 sb1 hwm la lg
    la=$(cut -d' ' -f1 /proc/loadavg)
    pc0=$(cpu_ticks "${ppids[@]}"); oc0=$(cpu_ticks "${opids[@]}"); sb0=$(sys_busy)
    # The subshell's `times` gives the CPU the load generator (its only child) used.
    ( pin "$LG_CPUS" timeout -k 5 "$LOAD_TIMEOUT" "${LOAD[@]}" >"$out.txt" 2>&1; times >"$out.times" )
    pc1=$(cpu_ticks "${ppids[@]}"); oc1=$(cpu_ticks "${opids[@]}"); sb1=$(sys_busy)
    hwm=$(hwm_kb "${ppids[@]}")
    if [[ $KIND == h2load ]]; then
        # h2load's percentiles come from its per-request log, written in a run of their own: the log costs h2load,
        # on the core it shares with the origin, about a quarter of its rate, and a slower client changes how a
        # target batches its work. Requests/s and CPU come from the run above, without it.
        rm -f "$out.h2log"
        load_cmd "$sc" "$t" "$LATENCY_DURATION"
        LOAD=("${LOAD[@]:0:${#LOAD[@]}-1}" --log-file="$out.h2log" "${LOAD[-1]}")
        pin "$LG_CPUS" timeout -k 5 "$LOAD_TIMEOUT" "${LOAD[@]}" >"$out.latency" 2>&1
    fi
    if [[ $KIND == wrk ]]; then res=$(parse_wrk "$out.txt"); else res=$(parse_h2load "$out.txt" "$out.h2log"); rm -f "$out.h2log"; fi
    lg=$(sed -n 2p "$out.times"); lg=$(awk -v u="$(secs "${lg% *}")" -v s="$(secs "${lg#* }")" 'BEGIN{printf "%.2f", u+s}')
    local line
    line=$(awk -v st="$STAMP" -v mode="$mode" -v t="$t" -v sc="$sc" -v rep="$rep" -v res="$res" -v hz="$HZ" \
        -v pc=$((pc1 - pc0)) -v oc=$((oc1 - oc0)) -v sb=$((sb1 - sb0)) -v hwm="$hwm" -v lg="$lg" -v la="$la" 'BEGIN{
            split(res, r, " "); p = pc/hz; o = oc/hz
            # other: busy CPU that neither the proxy, the origin nor the load generator used (other tenants, noise)
            other = sb/hz - p - o - lg
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%s\n",
                st, mode, t, sc, rep, r[1], r[2], r[3], r[4], r[5], r[6],
                (t == "direct" ? "-" : sprintf("%.2f", p)), (t == "direct" ? "-" : hwm), o, lg, other, la }')
    printf '%s\n' "$line" >>"$RESULTS/runs-$STAMP.tsv"
    awk -F'\t' '{ printf "  %-8s %-3s rep %s: %8.0f req/s  p50 %7.0f us  p99 %7.0f us  errors %s  proxy CPU %s s  peak RSS %s KiB\n",
        $3, $4, $5, $6, $7, $9, $10, $12, $13 }' <<<"$line" >&2
}

# ------------------------------------------------------------------------------------------ summary
# summarize RUNS.TSV : markdown tables (one per mode), medians over repetitions.
summarize() {
    awk -F'\t' '
    function med(s,   n, v, i, j, x) { n = split(s, v, " "); if (!n) return 0
        for (i = 2; i <= n; i++) { x = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
    function lo(s,   n, v, i, m) { n = split(s, v, " "); m = v[1] + 0; for (i = 2; i <= n; i++) if (v[i] + 0 < m) m = v[i] + 0; return m }
    function hi(s,   n, v, i, m) { n = split(s, v, " "); m = v[1] + 0; for (i = 2; i <= n; i++) if (v[i] + 0 > m) m = v[i] + 0; return m }
    function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "-" }
    function k3(a, b, c) { return a SUBSEP b SUBSEP c }
    NR == 1 { next }
    {
        if (!($2 in seen_m)) { seen_m[$2] = 1; modes[++nm] = $2 }
        if (!($3 in seen_t)) { seen_t[$3] = 1; tgs[++nt] = $3 }
        if (!($4 in seen_s)) { seen_s[$4] = 1; scs[++ns] = $4 }
        k = k3($2, $3, $4); n[k]++
        rps[k] = rps[k] " " $6; p50[k] = p50[k] " " $7; p99[k] = p99[k] " " $9; err[k] += $10; other[k] = other[k] " " $16
        if ($12 != "-") { cpu[k] = cpu[k] " " ($11 > 0 ? $12 / $11 * 1e6 : 0); hwm[k] = hwm[k] " " $13 }
        # per repetition, for the paired ratios: a target against nginx in the same round
        rrep[k, $5] = $6; if ($12 != "-" && $11 > 0) crep[k, $5] = $12 / $11 * 1e6
        if (!(($5) in seen_r)) { seen_r[$5] = 1; reps[++nr] = $5 }
    }
    END {
        for (a = 1; a <= nm; a++) {
            m = modes[a]
            if (m == "pinned") printf "\n### pinned: proxy alone on its CPU, one worker; load generator and origin on the other CPU\n\n"
            else printf "\n### %s: no CPU pinning, one worker per CPU\n\n", m
            print "| scenario | target | runs | req/s median (min-max) | vs direct | req/s vs nginx | p50 us | p99 us | CPU us/req | CPU/req vs nginx | peak RSS MiB | errors | other CPU s |"
            print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            for (b = 1; b <= ns; b++) for (c = 1; c <= nt; c++) {
                s = scs[b]; t = tgs[c]; k = k3(m, t, s); if (!(k in n)) continue
                dk = k3(m, "direct", s); gk = k3(m, "nginx", s)
                r = med(rps[k])
                vs_direct = (dk in n) ? ratio(r, med(rps[dk])) : "-"
                vs_nginx = (gk in n) ? ratio(r, med(rps[gk])) : "-"
                c_us = (k in cpu) ? med(cpu[k]) : -1
                cpu_vs = (c_us >= 0 && (gk in cpu)) ? ratio(c_us, med(cpu[gk])) : "-"
                printf "| %s | %s | %d | %.0f (%.0f-%.0f) | %s | %s | %.0f | %.0f | %s | %s | %s | %d | %.1f |\n",
                    s, t, n[k], r, lo(rps[k]), hi(rps[k]), vs_direct, vs_nginx, med(p50[k]), med(p99[k]),
                    (c_us >= 0 ? sprintf("%.1f", c_us) : "-"), cpu_vs,
                    ((k in hwm) ? sprintf("%.1f", med(hwm[k]) / 1024) : "-"), err[k], med(other[k])
            }
            # Paired ratios: each repetition of a target divided by the same repetition of nginx (with ROUNDS > 1,
            # measured in the same round), then the median and spread of those ratios.
            paired = 0
            for (b = 1; b <= ns; b++) for (c = 1; c <= nt; c++) {
                s = scs[b]; t = tgs[c]; k = k3(m, t, s); gk = k3(m, "nginx", s)
                if (t == "nginx" || t == "direct" || !(k in n) || !(gk in n)) continue
                rr = ""; cr = ""
                for (i = 1; i <= nr; i++) {
                    q = reps[i]
                    if ((k, q) in rrep && (gk, q) in rrep && rrep[gk, q] > 0) rr = rr " " rrep[k, q] / rrep[gk, q]
                    if ((k, q) in crep && (gk, q) in crep && crep[gk, q] > 0) cr = cr " " crep[k, q] / crep[gk, q]
                }
                if (rr == "") continue
                if (!paired) {
                    paired = 1
                    printf "\nPaired with nginx, repetition by repetition (median (min-max) of the ratios):\n\n"
                    print "| scenario | target | pairs | req/s vs nginx | CPU/req vs nginx |"
                    print "|---|---|---|---|---|"
                }
                printf "| %s | %s | %d | %.2f (%.2f-%.2f) | %s |\n", s, t, split(rr, tmp, " "), med(rr), lo(rr), hi(rr),
                    (cr == "" ? "-" : sprintf("%.2f (%.2f-%.2f)", med(cr), lo(cr), hi(cr)))
            }
        }
    }' "$1"
}

# ------------------------------------------------------------------------------------------ main
if [[ -n ${ONLY_SUMMARY:-} ]]; then summarize "$ONLY_SUMMARY"; exit 0; fi

trap stop_all EXIT
trap 'log interrupted; exit 130' INT TERM

for t in $TARGETS; do case $t in direct | nginx | haproxy | yarp | proxy) ;; *) die "unknown target '$t'" ;; esac; done
for sc in $SCENARIOS; do case $sc in S1 | S2 | S3 | S4 | S5) ;; *) die "unknown scenario '$sc'" ;; esac; done
fresh_run_dir; mkdir -p "$RESULTS"
ensure_tools nginx haproxy wrk h2load curl taskset pgrep
raise_nofile
require_free_ports $ORIGIN_PORT $ORIGIN_H2_PORT $NGINX_PORT $NGINX_H2_PORT $HAPROXY_PORT $HAPROXY_H2_PORT \
    $YARP_PORT $YARP_H2_PORT $PROXY_PORT $PROXY_H2_PORT
[[ " $TARGETS " == *" proxy "* ]] && build_proxy
[[ " $TARGETS " == *" yarp "* ]] && build_yarp

{
    echo "date: $(date -Is)"
    echo "host: $(uname -r), $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
    [[ " $TARGETS " == *" proxy "* ]] && echo "proxy: $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown) ($PROXY_BIN) env: ${PROXY_ENV:-none}"
    echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'); haproxy: $(haproxy -v 2>&1 | head -1 | awk '{print $3}')"
    echo "wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}'); h2load: $(h2load --version 2>&1 | head -1)"
    echo "dotnet: $(dotnet --version 2>/dev/null || echo none)"
    echo "params: TARGETS='$TARGETS' SCENARIOS='$SCENARIOS' PIN='$PIN' DURATION=$DURATION WARMUP=$WARMUP PREWARM=$PREWARM REPS=$REPS ROUNDS=$ROUNDS"
} | tee "$RESULTS/versions-$STAMP.txt" >&2
printf "$TSV_HEADER\n" >"$RESULTS/runs-$STAMP.tsv"

for pinmode in $PIN; do
    if [[ $pinmode == 1 ]]; then
        LG_CPUS=$U_LG_CPUS ORIGIN_CPUS=$U_ORIGIN_CPUS PROXY_CPUS=$U_PROXY_CPUS WORKERS=${U_WORKERS:-1}
        mode=pinned
        log "mode: pinned: proxy on CPU $PROXY_CPUS, load generator on CPU $LG_CPUS, origin on CPU $ORIGIN_CPUS, $WORKERS worker(s)"
    else
        LG_CPUS="" ORIGIN_CPUS="" PROXY_CPUS="" WORKERS=${U_WORKERS:-$(nproc)}
        mode=unpinned
        log "mode: unpinned, $WORKERS worker(s) per proxy"
    fi
    start_origin "$ORIGIN_CPUS"
    for round in $(seq 1 "$ROUNDS"); do
        ((ROUNDS > 1)) && log "round $round of $ROUNDS"
        for t in $TARGETS; do
            if ! start_target "$t" "$PROXY_CPUS" "$WORKERS"; then log "$t failed to start; skipped"; stop_proc "$t"; continue; fi
            [[ $t == yarp ]] && log "$(grep -a -m1 '^yarp:' "$RUN/yarp.out")"
            if [[ $t != direct ]] && ((PREWARM > 0)); then
                # A JIT-compiled proxy needs a while under load before its hot code is fully optimised;
                # every proxy gets the same treatment.
                log "$t: prewarm ${PREWARM}s"
                load_cmd S1 "$t" "$PREWARM"
                pin "$LG_CPUS" timeout -k 5 $((PREWARM + 30)) "${LOAD[@]}" >"$RUN/prewarm-$t.txt" 2>&1
            fi
            # Repetitions are interleaved (S1..S5, S1..S5, ...) so slow drifts spread over all scenarios.
            for rep in $(seq 1 "$REPS"); do
                for sc in $SCENARIOS; do measure "$mode" "$t" "$sc" $(((round - 1) * REPS + rep)); done
            done
            stop_proc "$t"
        done
    done
    stop_proc origin
done

summarize "$RESULTS/runs-$STAMP.tsv" | tee "$RESULTS/summary-$STAMP.md"
log "runs: $RESULTS/runs-$STAMP.tsv  summary: $RESULTS/summary-$STAMP.md  versions: $RESULTS/versions-$STAMP.txt"
