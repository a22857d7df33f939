# shellcheck shell=bash
# Shared pieces of the load benchmarks (sourced by run.sh, tls.sh, paired.sh and idle-connections.sh, not run directly):
# configuration of the origin and the peer proxies, building our proxy, starting and stopping
# processes by PID, and reading CPU time and memory from /proc.
#
# Everything listens on 127.0.0.1 only. Every process is started by these scripts in the foreground
# (no daemons, no services) and stopped by PID when the script exits.

LOAD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LOAD_DIR/../.." && pwd)

WORK=${WORK:-/tmp/proxy-bench}
RUN=$WORK/run
ORIGIN_PORT=${ORIGIN_PORT:-8080};   ORIGIN_H2_PORT=${ORIGIN_H2_PORT:-8090}
NGINX_PORT=${NGINX_PORT:-8081};     NGINX_H2_PORT=${NGINX_H2_PORT:-8091}
HAPROXY_PORT=${HAPROXY_PORT:-8082}; HAPROXY_H2_PORT=${HAPROXY_H2_PORT:-8092}
YARP_PORT=${YARP_PORT:-8083};       YARP_H2_PORT=${YARP_H2_PORT:-8093}
PROXY_PORT=${PROXY_PORT:-8084}
PROXY_H2_PORT=${PROXY_H2_PORT:-}     # empty: our proxy has no HTTP/2 listener yet, S4 is skipped for it
PROXY_BIN=${PROXY_BIN:-}             # prebuilt proxy executable; empty = publish from this checkout
PROXY_CONFIG=${PROXY_CONFIG:-}       # own config file for our proxy; empty = generated (see write_proxy_yaml)
PROXY_ENV=${PROXY_ENV:-}             # extra "K=V K=V" environment for our proxy (runtime knobs under test)
YARP_ENV=${YARP_ENV:-}               # same for YARP
INSTALL=${INSTALL:-1}                # apt-get install missing tools
# Used when pinned; PROXY_CPUS is the CPU the proxy under test gets to itself.
LG_CPUS=${LG_CPUS:-0}; ORIGIN_CPUS=${ORIGIN_CPUS:-0}; PROXY_CPUS=${PROXY_CPUS:-1}

# 100 bytes including the trailing newline.
ORIGIN_BODY='Proxy load bench origin: a fixed 100-byte body for measuring reverse proxy overhead. 0123456789abcd'

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ------------------------------------------------------------------------------------------ tools
ensure_tools() { # binaries...
    local pkgs=() b
    for b in "$@"; do
        command -v "$b" >/dev/null && continue
        case $b in
        h2load) pkgs+=(nghttp2-client) ;;
        taskset) pkgs+=(util-linux) ;;
        pgrep) pkgs+=(procps) ;;
        *) pkgs+=("$b") ;;
        esac
    done
    ((${#pkgs[@]})) || return 0
    [[ $INSTALL == 1 ]] || die "missing tools: ${pkgs[*]} (INSTALL=0)"
    log "installing ${pkgs[*]}"
    mkdir -p "$WORK"
    # The Debian packages may start nginx/haproxy as services; remember which were running before.
    local svc_before=""
    command -v systemctl >/dev/null && svc_before=$(systemctl is-active nginx haproxy 2>/dev/null | tr '\n' ' ')
    apt-get update -qq >"$WORK/apt.log" 2>&1 || die "apt-get update failed (see $WORK/apt.log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
        >>"$WORK/apt.log" 2>&1 || die "apt-get install failed (see $WORK/apt.log)"
    if command -v systemctl >/dev/null; then
        local i=0 s
        for s in nginx haproxy; do
            i=$((i + 1))
            [[ $(cut -d' ' -f$i <<<"$svc_before") == active ]] && continue
            systemctl is-active --quiet "$s" 2>/dev/null && systemctl stop "$s"
        done
    fi
    return 0
}

# ------------------------------------------------------------------------------------------ processes
declare -A PIDS=()

# Raise the open-file limit to the hard limit; every process started afterwards inherits it, and the
# peers' configs are sized from it (NOFILE).
raise_nofile() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    NOFILE=$(ulimit -n)
    [[ $NOFILE == unlimited ]] && NOFILE=1048576
}
NOFILE=$(ulimit -n); [[ $NOFILE == unlimited ]] && NOFILE=1048576

# start_bg NAME CPUS CMD... : runs CMD in the background, pinned to CPUS when not empty. taskset, env and
# the command itself all exec in place, so the recorded PID is the measured process.
start_bg() {
    local name=$1 cpus=$2; shift 2
    if [[ -n $cpus ]]; then taskset -c "$cpus" "$@" >"$RUN/$name.out" 2>&1 &
    else "$@" >"$RUN/$name.out" 2>&1 &
    fi
    PIDS[$name]=$!
}

# stop_proc NAME : SIGTERM, up to 5 s to exit, then SIGKILL.
stop_proc() {
    local name=$1 pid=${PIDS[$1]:-} i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM for 5 s; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null
    unset "PIDS[$name]"
}

stop_all() { local n; for n in "${!PIDS[@]}"; do stop_proc "$n"; done; }

pin() { local cpus=$1; shift; if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi; }

# A process and its descendants (nginx: master + workers).
tree_pids() { local p=$1 c; echo "$p"; for c in $(pgrep -P "$p" 2>/dev/null); do tree_pids "$c"; done; }
# utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat; the command name may contain spaces).
cpu_ticks() { local t=0 p v; for p in "$@"; do v=$(awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$p/stat" 2>/dev/null) && t=$((t + ${v:-0})); done; echo "$t"; }
status_kb() { local f=$1 t=0 p v; shift; for p in "$@"; do v=$(awk -v f="$f:" '$1==f{print $2}' "/proc/$p/status" 2>/dev/null) && t=$((t + ${v:-0})); done; echo "$t"; }
hwm_kb() { status_kb VmHWM "$@"; }
rss_kb() { status_kb VmRSS "$@"; }
# Writing 5 to clear_refs resets VmHWM to the current RSS, so the next reading is the peak of one run.
reset_hwm() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }

# Fails if anything listens on one of the ports (typically a previous run that is still alive).
require_free_ports() { local p; for p in "$@"; do [[ -n $p ]] || continue; [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] || die "port $p is already in use"; done; }

# Scratch folder for configs and logs of this run; output of an earlier run is removed.
fresh_run_dir() { mkdir -p "$RUN"; rm -f "$RUN"/*.out "$RUN"/*.log "$RUN"/load-* "$RUN"/prewarm-* "$RUN"/idle-client-*; }

http_ok() { # URL [h2]
    local code
    if [[ ${2:-} == h2 ]]; then code=$(curl -s -m 2 --http2-prior-knowledge -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)
    else code=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null); fi
    [[ $code == 200 ]]
}

# wait_ready NAME URL : up to 30 s for a 200, failing early if the process died.
wait_ready() {
    local i
    for i in $(seq 1 150); do
        http_ok "$2" && return 0
        kill -0 "${PIDS[$1]}" 2>/dev/null || { log "$1 exited; last output:"; tail -20 "$RUN/$1.out" >&2; return 1; }
        sleep 0.2
    done
    log "$1 did not answer 200 at $2 within 30 s"; return 1
}

# ------------------------------------------------------------------------------------------ configs
write_origin_conf() { # -> $RUN/origin.conf
    mkdir -p "$RUN/www/static" "$RUN/tmp-origin"
    [[ -s $RUN/www/static/16k.bin ]] || head -c 16384 /dev/zero | tr '\0' 'x' >"$RUN/www/static/16k.bin"
    cat >"$RUN/origin.conf" <<EOF
# Origin for the load benchmark: one nginx worker, no logging, a fixed small body and a static file.
# Kept as cheap as possible so the proxy in front of it is what the numbers show.
user $(id -un);
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $RUN/origin.pid;
error_log $RUN/origin-error.log warn;
events { worker_connections $((NOFILE - 100)); use epoll; }
http {
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # nginx closes a keep-alive connection after 1000 requests by default; the proxies' pools should not see that.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $RUN/tmp-origin/body;
    proxy_temp_path $RUN/tmp-origin/proxy;
    fastcgi_temp_path $RUN/tmp-origin/fastcgi;
    uwsgi_temp_path $RUN/tmp-origin/uwsgi;
    scgi_temp_path $RUN/tmp-origin/scgi;
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        listen 127.0.0.1:$ORIGIN_H2_PORT http2 backlog=4096;   # h2c with prior knowledge: the direct S4 baseline
        root $RUN/www;
        location / {
            default_type text/plain;
            return 200 "$ORIGIN_BODY\n";
        }
        location /static/ {
            default_type application/octet-stream;
        }
    }
}
EOF
}

write_nginx_conf() { # NAME WORKERS LISTEN_LINES -> $RUN/NAME.conf
    # nginx as the reverse proxy under comparison: HTTP/1.1 with a keep-alive pool to the origin; the caller gives the
    # server's listen (and TLS) directives.
    mkdir -p "$RUN/tmp-nginx"
    cat >"$RUN/$1.conf" <<EOF
user $(id -un);
worker_processes $2;
worker_rlimit_nofile $NOFILE;
pid $RUN/$1.pid;
error_log $RUN/$1-error.log warn;
events { worker_connections $((NOFILE - 100)); use epoll; }
http {
    access_log off;
    server_tokens off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $RUN/tmp-nginx/body;
    proxy_temp_path $RUN/tmp-nginx/proxy;
    fastcgi_temp_path $RUN/tmp-nginx/fastcgi;
    uwsgi_temp_path $RUN/tmp-nginx/uwsgi;
    scgi_temp_path $RUN/tmp-nginx/scgi;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
$3
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            # Without this nginx forwards "Connection: close" upstream and the pool is useless.
            proxy_set_header Connection "";
        }
    }
}
EOF
}

write_nginx_proxy_conf() { # WORKERS -> $RUN/nginx-proxy.conf
    write_nginx_conf nginx-proxy "$1" "        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        listen 127.0.0.1:$NGINX_H2_PORT http2 backlog=4096;"
}

write_haproxy_conf() { # THREADS [NAME BIND_LINES] -> $RUN/NAME.cfg (default haproxy.cfg, the cleartext h1 + h2c binds)
    local name=${2:-haproxy}
    local binds=${3:-"    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_H2_PORT proto h2"}
    cat >"$RUN/$name.cfg" <<EOF
# HAProxy as the reverse proxy under comparison: http mode, keep-alive on both sides.
global
    nbthread $1
    # two descriptors per proxied connection, within the open-file limit
    maxconn $(((NOFILE - 200) / 2))
    pidfile $RUN/$name.pid

defaults
    mode http
    option http-keep-alive
    # Share idle origin connections between client connections, as nginx's pool and ours do
    # (the default, "safe", opens a fresh origin connection for each client connection's first request).
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend fe
$binds
    default_backend be

backend be
    server origin 127.0.0.1:$ORIGIN_PORT
EOF
}

# write_proxy_config FILE LISTENERS : Proxy's config for the benchmarks, every path to the origin; LISTENERS are the
# entries under "listeners:" (see proxy_tls_listener for a TLS one).
write_proxy_config() {
    cat >"$1" <<EOF
listeners:
$2
routes:
  - { id: all, match: { path: "/{**rest}" }, cluster: origin }
clusters:
  origin:
    destinations: [{ address: "http://127.0.0.1:$ORIGIN_PORT" }]
EOF
}

write_proxy_yaml() { # -> $RUN/proxy.yaml
    write_proxy_config "$RUN/proxy.yaml" "  - { name: bench, address: 127.0.0.1:$PROXY_PORT }"
}

# ------------------------------------------------------------------------------------------ TLS
# The same ECDSA P-256 certificate for every TLS listener (tls.sh, paired.sh): $RUN/tls.pem and tls.key, and
# $RUN/tls-haproxy.pem, which is both in one file as HAProxy takes them.
make_tls_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/tls.key" -out "$RUN/tls.pem" \
        -days 30 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1 || die "openssl req failed"
    cat "$RUN/tls.pem" "$RUN/tls.key" >"$RUN/tls-haproxy.pem"
}

nginx_tls_listen() { # PORT : nginx's listen and ssl directives (TLS 1.2 and 1.3, ALPN h2 and http/1.1)
    printf '%s\n' "        listen 127.0.0.1:$1 ssl http2 backlog=4096;" \
        "        ssl_certificate $RUN/tls.pem;" \
        "        ssl_certificate_key $RUN/tls.key;" \
        "        ssl_protocols TLSv1.2 TLSv1.3;" \
        "        ssl_session_cache shared:SSL:10m;"
}

haproxy_tls_bind() { # PORT
    echo "    bind 127.0.0.1:$1 ssl crt $RUN/tls-haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2"
}

proxy_tls_listener() { # NAME PORT : a listeners entry of Proxy's YAML
    printf '%s\n' "  - name: $1" "    address: 127.0.0.1:$2" \
        "    tls: { certificates: [{ cert: \"$RUN/tls.pem\", key: \"$RUN/tls.key\" }] }"
}

# ------------------------------------------------------------------------------------------ builds
# Our proxy, published from this checkout (Release). The release build is NativeAOT (AOT=1, the default):
# same CPU per request as the JIT build in our runs, a quarter of its resident memory. AOT=0 publishes the
# JIT build instead. dotnet publish is incremental, so a rerun is quick.
build_proxy() {
    if [[ -n $PROXY_BIN ]]; then
        [[ -x $PROXY_BIN ]] || die "PROXY_BIN=$PROXY_BIN is not an executable"
        return 0
    fi
    mkdir -p "$WORK"
    local out args=()
    if [[ ${AOT:-1} == 1 ]]; then
        out=$WORK/proxy-publish-aot
        args=(-r linux-x64 -p:PublishAot=true)
        if ! command -v clang >/dev/null && ! command -v gcc >/dev/null; then
            [[ $INSTALL == 1 ]] || die "NativeAOT needs clang or gcc (AOT=0 builds without)"
            apt-get install -y -q --no-install-recommends clang zlib1g-dev >>"$WORK/apt-install.log" 2>&1 || die "installing clang failed"
        fi
    else
        out=$WORK/proxy-publish
    fi
    log "publishing proxy (Release${args:+, NativeAOT}) from $REPO_ROOT -> $out"
    dotnet publish "$REPO_ROOT/src/Proxy/Proxy.csproj" -c Release "${args[@]}" -o "$out" \
        >"$WORK/proxy-publish.log" 2>&1 || die "dotnet publish of the proxy failed (see $WORK/proxy-publish.log)"
    PROXY_BIN=$out/proxy
}

# YARP on Kestrel, the .NET reference point. Generated here so the repository carries no second app.
build_yarp() {
    local src=$WORK/yarp-src out=$WORK/yarp-publish
    mkdir -p "$src"
    cat >"$src/YarpBench.csproj.new" <<'EOF'
<Project Sdk="Microsoft.NET.Sdk.Web">
  <PropertyGroup>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <InvariantGlobalization>true</InvariantGlobalization>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Yarp.ReverseProxy" Version="2.3.0" />
  </ItemGroup>
</Project>
EOF
    cat >"$src/Program.cs.new" <<'EOF'
// YARP with a config-based catch-all route; endpoints and origin come from environment variables.
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.Logging.SetMinimumLevel(LogLevel.Warning);
builder.Services.AddReverseProxy().LoadFromConfig(builder.Configuration.GetSection("ReverseProxy"));
var app = builder.Build();
app.MapReverseProxy();
Console.WriteLine($"yarp: {System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription} " +
    $"ProcessorCount={Environment.ProcessorCount} ServerGC={System.Runtime.GCSettings.IsServerGC}");
app.Run();
EOF
    cat >"$src/appsettings.json.new" <<'EOF'
{
  "Logging": { "LogLevel": { "Default": "Warning" } },
  "Kestrel": {
    "Endpoints": {
      "h1": { "Url": "http://127.0.0.1:8083", "Protocols": "Http1" },
      "h2": { "Url": "http://127.0.0.1:8093", "Protocols": "Http2" }
    }
  },
  "ReverseProxy": {
    "Routes": { "all": { "ClusterId": "origin", "Match": { "Path": "{**rest}" } } },
    "Clusters": {
      "origin": {
        "HttpRequest": { "Version": "1.1", "VersionPolicy": "RequestVersionOrLower" },
        "Destinations": { "d1": { "Address": "http://127.0.0.1:8080/" } }
      }
    }
  }
}
EOF
    local f changed=0
    for f in YarpBench.csproj Program.cs appsettings.json; do
        if cmp -s "$src/$f.new" "$src/$f"; then rm "$src/$f.new"; else mv "$src/$f.new" "$src/$f"; changed=1; fi
    done
    [[ $changed == 0 && -f $out/YarpBench.dll ]] && return 0
    log "publishing YARP 2.3.0 app (Release) -> $out"
    # Keep the repository's Directory.Build.props / central package management out of this build.
    # (matters only when WORK lies inside the repository: MSBuild looks for these files upwards).
    [[ -e $WORK/Directory.Build.props ]] || echo '<Project />' >"$WORK/Directory.Build.props"
    [[ -e $WORK/Directory.Packages.props ]] || echo '<Project />' >"$WORK/Directory.Packages.props"
    dotnet publish "$src/YarpBench.csproj" -c Release -o "$out" >"$WORK/yarp-publish.log" 2>&1 \
        || die "dotnet publish of the YARP app failed (see $WORK/yarp-publish.log)"
    cp "$src/appsettings.json" "$out/appsettings.json"
}

# ------------------------------------------------------------------------------------------ targets
h1_port() { case $1 in direct) echo "$ORIGIN_PORT" ;; nginx) echo "$NGINX_PORT" ;; haproxy) echo "$HAPROXY_PORT" ;; yarp) echo "$YARP_PORT" ;; proxy) echo "$PROXY_PORT" ;; esac; }
h2_port() { case $1 in direct) echo "$ORIGIN_H2_PORT" ;; nginx) echo "$NGINX_H2_PORT" ;; haproxy) echo "$HAPROXY_H2_PORT" ;; yarp) echo "$YARP_H2_PORT" ;; proxy) echo "$PROXY_H2_PORT" ;; esac; }

start_origin() { # CPUS
    write_origin_conf
    start_bg origin "$1" nginx -p "$RUN" -c "$RUN/origin.conf" -e "$RUN/origin-error.log" -g 'daemon off;'
    wait_ready origin "http://127.0.0.1:$ORIGIN_PORT/" || die "origin did not start"
    wait_ready origin "http://127.0.0.1:$ORIGIN_PORT/static/16k.bin" || die "origin static file not served"
}

# start_target NAME CPUS WORKERS : starts one proxy and waits until / and /static/16k.bin answer 200 through it.
start_target() {
    local t=$1 cpus=$2 workers=$3 envs=()
    case $t in
    direct) return 0 ;;
    nginx)
        write_nginx_proxy_conf "$workers"
        start_bg nginx "$cpus" nginx -p "$RUN" -c "$RUN/nginx-proxy.conf" -e "$RUN/nginx-proxy-error.log" -g 'daemon off;' ;;
    haproxy)
        write_haproxy_conf "$workers"
        start_bg haproxy "$cpus" haproxy -db -f "$RUN/haproxy.cfg" ;;
    yarp)
        envs=(Kestrel__Endpoints__h1__Url="http://127.0.0.1:$YARP_PORT"
              Kestrel__Endpoints__h2__Url="http://127.0.0.1:$YARP_H2_PORT"
              ReverseProxy__Clusters__origin__Destinations__d1__Address="http://127.0.0.1:$ORIGIN_PORT/"
              DOTNET_CLI_TELEMETRY_OPTOUT=1)
        [[ -n $cpus ]] && envs+=(DOTNET_PROCESSOR_COUNT="$workers")
        [[ -n $YARP_ENV ]] && { read -r -a extra <<<"$YARP_ENV"; envs+=("${extra[@]}"); }
        start_bg yarp "$cpus" env "${envs[@]}" dotnet "$WORK/yarp-publish/YarpBench.dll" ;;
    proxy)
        local cfg=$PROXY_CONFIG
        [[ -n $cfg ]] || { write_proxy_yaml; cfg=$RUN/proxy.yaml; }
        envs=(DOTNET_CLI_TELEMETRY_OPTOUT=1)
        [[ -n $cpus ]] && envs+=(DOTNET_PROCESSOR_COUNT="$workers")
        [[ -n $PROXY_ENV ]] && { read -r -a extra <<<"$PROXY_ENV"; envs+=("${extra[@]}"); }
        start_bg proxy "$cpus" env "${envs[@]}" "$PROXY_BIN" run --config "$cfg" ;;
    *) die "unknown target '$t' (known: direct nginx haproxy yarp proxy)" ;;
    esac
    wait_ready "$t" "http://127.0.0.1:$(h1_port "$t")/" || return 1
    wait_ready "$t" "http://127.0.0.1:$(h1_port "$t")/static/16k.bin" || return 1
}
