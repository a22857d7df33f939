#!/usr/bin/env bash
# Bounded chaos run: three destinations, one of which refuses, resets and answers 503 in turn (a new phase every
# 400 ms), under 16 concurrent HttpClient workers, with retries and outlier detection on. Passes when at least 99%
# of requests get a 200 and the memory the process retains after a full GC does not grow between warm-up (20% into
# the run) and the end. The suite runs the same test for 10 s; this script runs it for $SECONDS_TO_RUN (default 60).
#
#   bench/load/chaos.sh             # 60 s
#   SECONDS_TO_RUN=300 bench/load/chaos.sh
#
# The numbers (requests, success rate, failures by kind, retained memory and working set) are printed at the end.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECONDS_TO_RUN=${SECONDS_TO_RUN:-60}

cd "$REPO_ROOT"
PROXY_CHAOS_SECONDS=$SECONDS_TO_RUN dotnet test tests/Proxy.FunctionalTests -c Release \
  --filter "FullyQualifiedName~ChaosTests" --logger "console;verbosity=detailed" 2>&1 \
  | tee /tmp/proxy-chaos.log | grep -E "chaos:|flaky destination|memory:|Passed!|Failed!|Error Message" || true
grep -q "Passed!" /tmp/proxy-chaos.log
