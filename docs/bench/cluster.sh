#!/usr/bin/env bash
# The cost of the NATS hop, on one machine (server, broker, gateways and probes all share
# the same cores: this measures the hop, not the gain of more machines).
#   single : one process (--role all)
#   gw1    : nats-server + engine node + one gateway node
#   gw2    : nats-server + engine node + two gateway nodes (half the subscribers each)
#   single+: the single process again, with the engine node and nats-server running beside
#            it (nothing subscribed to them): what sharing the cores with them costs, apart
#            from the hop itself (gw1 - single+ is the hop at equal load on the cores)
# For each: 1,000 subscribers (spread:3, binary), delivered msgs/s and latency from the
# engine timestamp; NATS messages/s and bytes/s out of the engine node; then the order
# round trip (POST /api/v1/orders, IOC far from the market, wrk -c8) p50/p99. A run with
# 10 subscribers first shows the hop itself, apart from the contention for the cores.
# Usage: docs/bench/cluster.sh [FEED_RATE] [ROUNDS]    (DURATION, WARMUP in seconds;
#        BIN, TOOLS: other builds of the server and the probe; SERVER_ARGS: more flags
#        for every tickgate process, not those in $common below: a flag given twice is
#        refused)
set -euo pipefail
cd "$(dirname "$0")/../.."
feed=${1:-20000}; rounds=${2:-2}
bin=${BIN:-./target/release/tickgate}; tools=${TOOLS:-./target/release/tickgate-tools}
secret=bench-secret-of-at-least-32-bytes
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
wait_up() { for _ in $(seq 200); do curl -sf "127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" 'index($1, m) == 1 { print $2 }'; }
load() { # port subscribers output-file
  "$tools" load --addr 127.0.0.1:$1 -n "$2" --pattern spread:3 \
    --duration "${DURATION:-8}" --warmup "${WARMUP:-4}" --json > "$3" 2>/dev/null
}
report() { # label report-files...
  local label=$1; shift
  python3 - "$label" "$@" <<'PY'
import json, sys
label, files = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f)) for f in files]
rate = sum(r['messages_per_sec'] for r in runs)
p50 = max(r['latency_ns']['p50'] for r in runs) / 1e6
p99 = max(r['latency_ns']['p99'] for r in runs) / 1e6
gaps = sum(r.get('gaps', 0) for r in runs)
print('%s  delivered %9.0f msgs/s  p50 %6.2f ms  p99 %6.2f ms  gaps %d' % (label, rate, p50, p99, gaps))
PY
}
out=$(mktemp -d /tmp/tickgate-cluster-bench.XXXX)
orders() { # port label
  local token
  token=$(curl -s -XPOST 127.0.0.1:$1/api/v1/auth/login -H 'content-type: application/json' \
    -d '{"username":"alice","password":"alice-demo-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
  cat > /tmp/tickgate-cluster-order.lua <<'LUA'
wrk.method = "POST"
wrk.body = '{"symbol":"BTC-USD","side":"buy","type":"ioc","price":"1.00","qty":"0.0001"}'
wrk.headers["Content-Type"] = "application/json"
LUA
  wrk -t1 -c8 -d5s --latency -s /tmp/tickgate-cluster-order.lua -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$1/api/v1/orders" | awk -v l="$2" '/Requests\/sec/ { r = $2 } / 50%/ { p50 = $2 } / 99%/ { p99 = $2 } END { printf "%s  orders %7.0f/s  round trip p50 %s  p99 %s\n", l, r, p50, p99 }'
}
common="--durability off --summary-symbol none --rest-rate 0 --fanout-pass-us 200 ${SERVER_ARGS:-}"
for round in $(seq "$rounds"); do
  echo "=== round $round, feed $feed commands/s"
  port=$((20000 + RANDOM % 20000))
  $bin --listen 127.0.0.1:$port --feed-rate "$feed" $common > /dev/null 2>&1 & pids+=($!)
  wait_up $port
  load $port 10 "$out/a"; report "single (10 subscribers)" "$out/a"
  load $port 1000 "$out/a"; report single "$out/a"
  orders $port single
  cleanup

  nport=$((20000 + RANDOM % 20000)); e=$((nport + 1)); g1=$((nport + 2)); g2=$((nport + 3))
  nats-server -a 127.0.0.1 -p $nport > /dev/null 2>&1 & pids+=($!)
  sleep 0.5
  nats="--nats nats://127.0.0.1:$nport --jwt-secret $secret"
  $bin $nats --role engine --listen 127.0.0.1:$e --feed-rate "$feed" $common > /dev/null 2>&1 & pids+=($!)
  wait_up $e
  $bin --listen 127.0.0.1:$g1 --feed-rate "$feed" $common > /dev/null 2>&1 & beside=$!; pids+=($beside)
  wait_up $g1
  load $g1 1000 "$out/a"; report "single+" "$out/a"
  kill -INT $beside; wait $beside 2>/dev/null || true
  $bin $nats --role gateway --listen 127.0.0.1:$g1 $common > /dev/null 2>&1 & pids+=($!)
  wait_up $g1
  m0=$(metric $e tickgate_nats_messages_out_total); b0=$(metric $e tickgate_nats_bytes_out_total); t0=$(date +%s.%N)
  load $g1 10 "$out/a"; report "gw1    (10 subscribers)" "$out/a"
  load $g1 1000 "$out/a"; report "gw1   " "$out/a"
  m1=$(metric $e tickgate_nats_messages_out_total); b1=$(metric $e tickgate_nats_bytes_out_total); t1=$(date +%s.%N)
  python3 -c "d = $t1 - $t0; print('gw1     NATS out %7.0f msgs/s  %6.0f KB/s' % (($m1 - $m0) / d, ($b1 - $b0) / d / 1e3))"
  orders $g1 "gw1   "
  $bin $nats --role gateway --listen 127.0.0.1:$g2 $common > /dev/null 2>&1 & pids+=($!)
  wait_up $g2
  m0=$(metric $e tickgate_nats_messages_out_total); b0=$(metric $e tickgate_nats_bytes_out_total); t0=$(date +%s.%N)
  load $g1 500 "$out/a" & first=$!
  load $g2 500 "$out/b"; wait $first
  report "gw2   " "$out/a" "$out/b"
  m1=$(metric $e tickgate_nats_messages_out_total); b1=$(metric $e tickgate_nats_bytes_out_total); t1=$(date +%s.%N)
  python3 -c "d = $t1 - $t0; print('gw2     NATS out %7.0f msgs/s  %6.0f KB/s (to each gateway)' % (($m1 - $m0) / d, ($b1 - $b0) / d / 1e3))"
  cleanup
done
