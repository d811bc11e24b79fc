#!/usr/bin/env bash
# Checks the OpenAPI document against the real server with schemathesis (all checks,
# authenticated, bounded): starts the server on a free loopback port, logs in, runs, stops.
# Usage: .ci/schemathesis.sh [path to the tickgate binary] [examples per operation]
# Excluded: /ws (an upgrade, not a REST operation: tests/ws_*.rs cover it) and
# /api/v1/auth/logout (it would revoke the token the run authenticates with:
# tests/rest_auth.rs covers it). The synthetic feed is off: prices then stay still, so a
# one-shot alert the run creates cannot fire (and be removed) before the run deletes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/tickgate}
examples=${2:-30}
command -v schemathesis >/dev/null || { echo "schemathesis is not installed (pip install schemathesis)" >&2; exit 1; }
source .ci/server.sh
start_server "$bin" --durability off --no-feed --rest-rate 0
token=$(curl -sf -XPOST "127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-demo-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
timeout 600 schemathesis --config-file .ci/schemathesis.toml run \
  "http://127.0.0.1:$port/api/v1/openapi.json" \
  --checks all -H "Authorization: Bearer $token" \
  --exclude-path /ws --exclude-path /api/v1/auth/logout \
  --max-examples "$examples" --workers 1 --request-timeout 2 --seed "${SEED:-1}"
