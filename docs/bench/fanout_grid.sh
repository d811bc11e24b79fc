#!/usr/bin/env bash
# Fan-out at 10 / 100 / 1,000 / 5,000 subscribers. Saturation: the feed rate, among a scan
# of rates, at which the delivered message rate peaks (flooding the engine starves the
# fan-out on two cores, so "as fast as the engine goes" is not it). Then latency at 25, 50
# and 90 % of that feed rate.
# Each subscriber follows book + trades of 3 symbols (spread:3). Prints a markdown table.
# The 25/50/90 % rows are each run REPEAT times (default 3); the row gives the median of
# every column and the p99 of each run.
# Usage: [REPEAT=3] [RATES="..."] docs/bench/fanout_grid.sh ["10 100 1000 5000"] [seconds]
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
  # Ready when it answers (a fixed sleep lost runs to a slow start).
  for _ in $(seq 100); do curl -sf 127.0.0.1:$port/healthz > /dev/null && break; sleep 0.1; done
  local c0 c1 out
  c0=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_engine_commands_total / {print $2}')
  out=$(./target/release/tickgate-tools load --addr 127.0.0.1:$port -n "$n" --pattern spread:3 \
    --kinds book,trades --duration "$secs" --warmup 3 --json) || out=""
  c1=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_engine_commands_total / {print $2}')
  # A metrics read that failed (a server busy with 5,000 connections) counts as unknown.
  c0=${c0:-0}; c1=${c1:-0}
  kill -INT $server; wait $server 2>/dev/null || true
  python3 - "$out" "$c0" "$c1" "$secs" <<'PY'
import json, sys
if not sys.argv[1]:
    print("0 0 0 0 0")  # the probe failed (its error is on stderr)
    sys.exit()
r = json.loads(sys.argv[1]); c0, c1, secs = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
if c0 <= 0 or c1 <= c0:
    c0 = c1 = 0  # commands/s unknown: printed as 0
l = r["latency_ns"]
# Commands over the whole probe (warm-up included): 3 s + secs.
print(f'{(c1 - c0) / (secs + 3):.0f} {r["messages_per_sec"]:.0f} {l["p50"]/1e3:.0f} {l["p99"]/1e3:.0f} {l["p999"]/1e3:.0f}')
PY
}
repeat=${REPEAT:-3}
echo "| subscribers | load | commands/s | delivered msgs/s | p50 us | p99 us | p99.9 us | p99 of each run |"
echo "|---|---|---|---|---|---|---|---|"
rates=${RATES:-"10000 25000 50000 100000 200000 400000"}
for n in $sizes; do
  best=0; best_rate=0
  for r in $rates; do
    read -r cmds msgs p50 p99 p999 <<< "$(run "$r" "$n")"
    echo "| $n | scan $r/s | $cmds | $msgs | $p50 | $p99 | $p999 | |"
    if [ "$msgs" -gt "$best" ]; then best=$msgs; best_rate=$r; fi
  done
  echo "| $n | **saturation: $best_rate/s** | | **$best** | | | | |"
  for pct in 25 50 90; do
    rate=$(( best_rate * pct / 100 ))
    runs=""
    for _ in $(seq "$repeat"); do runs="$runs$(run "$rate" "$n");"; done
    python3 - "$runs" "$n" "$pct" "$rate" <<'PY'
import statistics, sys
runs = [list(map(float, r.split())) for r in sys.argv[1].split(";") if r.strip()]
runs = [r for r in runs if r[1] > 0]  # failed probe runs are left out
if not runs:
    print(f"| {sys.argv[2]} | {sys.argv[3]} % ({sys.argv[4]}/s offered): every run failed | | | | | | |")
    sys.exit()
med = [statistics.median(col) for col in zip(*runs)]
p99s = ", ".join(f"{r[3]:.0f}" for r in runs)
n, pct, rate = sys.argv[2:5]
print(f"| {n} | {pct} % ({rate}/s offered), median of {len(runs)} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} | {med[4]:.0f} | {p99s} |")
PY
  done
done
