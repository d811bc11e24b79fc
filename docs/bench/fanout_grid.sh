#!/usr/bin/env bash
# Fan-out at 10 / 100 / 1,000 / 5,000 subscribers. Saturation: the feed rate, among a scan
# of rates, at which the delivered message rate peaks (flooding the engine starves the
# fan-out on two cores, so "as fast as the engine goes" is not it). Then latency at 25, 50
# and 90 % of that feed rate.
# Each subscriber follows book + trades of 3 symbols (spread:3). Prints a markdown table.
# Usage: docs/bench/fanout_grid.sh ["10 100 1000 5000"] [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=${1:-"10 100 1000 5000"}
secs=${2:-6}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
run() { # feed_rate conns -> "cmds/s msgs/s p50 p99 p999" (latency in us)
  local rate=$1 n=$2 port=$((20000 + RANDOM % 20000))
  ./target/release/tickgate --listen 127.0.0.1:$port --feed-rate "$rate" --durability off \
    --summary-symbol none --max-connections $((n + 100)) > /tmp/tickgate-grid-server.log 2>&1 &
  local server=$!
  sleep 1
  local c0 c1 out
  c0=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_engine_commands_total / {print $2}')
  out=$(./target/release/tickgate-tools load --addr 127.0.0.1:$port -n "$n" --pattern spread:3 \
    --kinds book,trades --duration "$secs" --warmup 3 --json)
  c1=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_engine_commands_total / {print $2}')
  kill -INT $server; wait $server 2>/dev/null || true
  python3 - "$out" "$c0" "$c1" "$secs" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); c0, c1, secs = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
l = r["latency_ns"]
# Commands over the whole probe (warm-up included): 3 s + secs.
print(f'{(c1 - c0) / (secs + 3):.0f} {r["messages_per_sec"]:.0f} {l["p50"]/1e3:.0f} {l["p99"]/1e3:.0f} {l["p999"]/1e3:.0f}')
PY
}
echo "| subscribers | load | commands/s | delivered msgs/s | p50 us | p99 us | p99.9 us |"
echo "|---|---|---|---|---|---|---|"
rates=${RATES:-"10000 25000 50000 100000 200000 400000"}
for n in $sizes; do
  best=0; best_rate=0
  for r in $rates; do
    read -r cmds msgs p50 p99 p999 <<< "$(run "$r" "$n")"
    echo "| $n | scan $r/s | $cmds | $msgs | $p50 | $p99 | $p999 |"
    if [ "$msgs" -gt "$best" ]; then best=$msgs; best_rate=$r; fi
  done
  echo "| $n | **saturation: $best_rate/s** | | **$best** | | | |"
  for pct in 25 50 90; do
    rate=$(( best_rate * pct / 100 ))
    read -r c m a b c9 <<< "$(run "$rate" "$n")"
    echo "| $n | $pct % ($rate/s offered) | $c | $m | $a | $b | $c9 |"
  done
done
