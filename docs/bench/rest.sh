#!/usr/bin/env bash
# REST throughput and latency with wrk (keep-alive), server and wrk on the same two cores:
# GET /api/v1/account, then POST /api/v1/orders (IOC buys far below the market: each is
# journaled, matched against nothing and canceled, i.e. a full engine round trip).
# Usage: [SERVER_ARGS="--workers 1"] docs/bench/rest.sh [durability: fsync|batch-async|none|off] [connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
durability=${1:-fsync}
conns=${2:-64}
secs=${3:-10}
port=$((20000 + RANDOM % 20000))
data=$(mktemp -d /tmp/tickgate-rest-bench.XXXX)
${BIN:-./target/release/tickgate} --listen 127.0.0.1:$port --no-feed --summary-symbol none \
  --rest-rate 0 --durability "$durability" --data-dir "$data" ${SERVER_ARGS:-} > /tmp/tickgate-rest-server.log 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
sleep 2
token=$(curl -s -XPOST 127.0.0.1:$port/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-demo-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
echo "--- GET /api/v1/account, $conns connections, durability $durability"
wrk -t1 -c"$conns" -d"${secs}s" --latency -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$port/api/v1/account" | grep -E "Requests/sec|Latency|50%|90%|99%|requests in|Non-2xx"
cat > /tmp/tickgate-order.lua <<'LUA'
wrk.method = "POST"
wrk.body = '{"symbol":"BTC-USD","side":"buy","type":"ioc","price":"1.00","qty":"0.0001"}'
wrk.headers["Content-Type"] = "application/json"
LUA
echo "--- POST /api/v1/orders (IOC), $conns connections, durability $durability"
wrk -t1 -c"$conns" -d"${secs}s" --latency -s /tmp/tickgate-order.lua -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$port/api/v1/orders" | grep -E "Requests/sec|Latency|50%|90%|99%|requests in|Non-2xx"
# The same with a fresh Idempotency-Key on every request: the key is journaled with the
# order and claimed in the gateway's key table (each user keeps 10,000 keys, so the table
# is full and evicting after the first 10,000 requests).
cat > /tmp/tickgate-order-keyed.lua <<'LUA'
wrk.method = "POST"
wrk.body = '{"symbol":"BTC-USD","side":"buy","type":"ioc","price":"1.00","qty":"0.0001"}'
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  wrk.headers["Idempotency-Key"] = "bench-" .. n
  return wrk.format()
end
LUA
echo "--- POST /api/v1/orders (IOC, Idempotency-Key), $conns connections, durability $durability"
wrk -t1 -c"$conns" -d"${secs}s" --latency -s /tmp/tickgate-order-keyed.lua -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$port/api/v1/orders" | grep -E "Requests/sec|Latency|50%|90%|99%|requests in|Non-2xx"
curl -s 127.0.0.1:$port/healthz; echo
