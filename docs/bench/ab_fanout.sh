#!/usr/bin/env bash
# Two builds of the server, alternating, against the same probe: 1,000 subscribers
# (spread:3), --fanout-pass-us 200, --durability off.
# Usage: docs/bench/ab_fanout.sh OLD_BINARY NEW_BINARY FEED_RATE ROUNDS
set -euo pipefail
cd "$(dirname "$0")/../.."
old=${1:?old binary}; new=${2:?new binary}; feed=${3:?feed rate}; rounds=${4:-3}
one() {
  local bin=$1 label=$2 port=$((20000 + RANDOM % 20000))
  "$bin" --listen 127.0.0.1:$port --feed-rate "$feed" --fanout-pass-us 200 --summary-symbol none \
    --durability off > /dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  ./target/release/tickgate-tools load --addr 127.0.0.1:$port -n 1000 --pattern spread:3 \
    --duration "${DURATION:-8}" --warmup "${WARMUP:-4}" --json 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin); l = d['latency_ns']
print('$label', round(d['messages_per_sec']), 'msgs/s  p50 %.1f  p99 %.1f  p99.9 %.1f ms' % (l['p50'] / 1e6, l['p99'] / 1e6, l['p999'] / 1e6))"
  kill -INT $pid; wait $pid 2>/dev/null || true
}
for _ in $(seq "$rounds"); do one "$old" old; one "$new" new; done
