#!/usr/bin/env bash
# Side by side: proxied requests/s through a route with a JWT check (HS256, verified-token cache) plus a rate limit
# keyed on the token's subject, against the same proxy and route without policies. Two proxy instances in front of
# a third one that answers a fixed body itself (no other server needed); alternating wrk runs in one invocation.
#
#   bench/load/policies.sh                      # 5 rounds of 10 s each way
#   ROUNDS=3 SECONDS_PER_RUN=5 bench/load/policies.sh
#
# Ports 127.0.0.1:18490-18492. Needs wrk, python3 and a built proxy (dotnet build -c Release src/Proxy).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-5} SECONDS_PER_RUN=${SECONDS_PER_RUN:-10} CONNECTIONS=${CONNECTIONS:-64}
DLL=${DLL:-$ROOT/src/Proxy/bin/Release/net10.0/proxy.dll}
WORK=$(mktemp -d /tmp/proxy-policies-XXXXXX)
ORIGIN=18490 PLAIN=18491 GUARDED=18492
[[ -f $DLL ]] || dotnet build -c Release "$ROOT/src/Proxy" >/dev/null

# An HS256 key as a JWKS "oct" entry, and one long-lived token signed with it.
TOKEN=$(python3 - "$WORK/jwks.json" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret = b"bench-secret-bench-secret-bench-secret!!"
json.dump({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": b64(secret)}]}, open(sys.argv[1], "w"))
head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
body = b64(json.dumps({"iss": "https://idp.bench", "aud": "bench", "sub": "client-1", "scope": "items.read",
                       "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)
cat >"$WORK/origin.yaml" <<YAML
listeners: [{ name: origin, address: "127.0.0.1:$ORIGIN" }]
routes: [{ id: body, match: { path: "/{**rest}" }, respond: { status: 200, body: "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789" } }]
insights: { enabled: false }
YAML
proxy_yaml() { # port policies
    cat <<YAML
listeners: [{ name: public, address: "127.0.0.1:$1" }]
policies:
  jwt-bench: { jwt: { issuer: "https://idp.bench", audiences: [bench], jwks_file: "$WORK/jwks.json", required_scopes: [items.read] } }
  per-subject: { rate_limit: { key: "jwt:sub", rate: 1000000/s, burst: 1000000 } }
routes: [{ id: items, match: { path: "/{**rest}" }, cluster: origin, policies: [$2] }]
clusters: { origin: { destinations: ["http://127.0.0.1:$ORIGIN"] } }
insights: { enabled: false }
YAML
}
proxy_yaml "$PLAIN" "" >"$WORK/plain.yaml"
proxy_yaml "$GUARDED" "jwt-bench, per-subject" >"$WORK/guarded.yaml"

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for name in origin plain guarded; do
    dotnet "$DLL" run --config "$WORK/$name.yaml" >"$WORK/$name.out" 2>&1 &
    PIDS+=($!)
done
for port in $ORIGIN $PLAIN $GUARDED; do
    for _ in $(seq 1 100); do curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GUARDED/items")
[[ $status == 200 ]] || { echo "the guarded route answered $status to a valid token" >&2; exit 1; }
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GUARDED/items") == 401 ]] || { echo "the guarded route let an anonymous request through" >&2; exit 1; }

rps() { wrk -t1 -c"$CONNECTIONS" -d"$2s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/items" | awk '/Requests\/sec/ {print $2}'; }
rps $PLAIN 3 >/dev/null; rps $GUARDED 3 >/dev/null
plain=(); guarded=()
for r in $(seq 1 "$ROUNDS"); do
    if ((r % 2)); then plain+=("$(rps $PLAIN "$SECONDS_PER_RUN")"); guarded+=("$(rps $GUARDED "$SECONDS_PER_RUN")")
    else guarded+=("$(rps $GUARDED "$SECONDS_PER_RUN")"); plain+=("$(rps $PLAIN "$SECONDS_PER_RUN")"); fi
    echo "round $r: no policies ${plain[-1]} req/s, jwt + rate limit ${guarded[-1]} req/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m_plain=$(median "${plain[@]}"); m_guarded=$(median "${guarded[@]}")
echo "| route | req/s median | runs |"
echo "|---|---:|---|"
echo "| no policies | $m_plain | ${plain[*]} |"
echo "| jwt (HS256, cached) + rate limit on jwt:sub | $m_guarded | ${guarded[*]} |"
awk -v a="$m_guarded" -v b="$m_plain" 'BEGIN { printf "with/without: %.3f (%+.1f%%)\n", a / b, (a / b - 1) * 100 }'
