#!/usr/bin/env bash
# Healthy clients beside clients that stop reading (issue 20's set-up): the server with a
# 50,000 commands/s feed; 50 healthy clients following book + trades of four symbols,
# measured from second 6 for 15 s; once they are connected, STALLED more clients that
# subscribe the same, read for 2 s, then hold their sockets without reading. Prints the
# healthy clients' count, delivered rate and latency, the server's slow-consumer closes and
# the share of the CPUs' time the hypervisor stole (and any healthy connection closed or
# refused); then per measured second (p99 ms, stolen ms).
# Usage: [SERVER_ARGS=...] [BIN=...] [TOOLS=...] docs/bench/stalled.sh STALLED
#   SERVER_ARGS: more server flags (not the ones set below: a flag given twice is refused)
set -euo pipefail
cd "$(dirname "$0")/../.."
stalled=${1:?stalled clients (0 for the baseline)}
ulimit -n "$(ulimit -Hn)"
port=$((20000 + RANDOM % 20000))
out=$(mktemp -d /tmp/tickgate-stalled-bench.XXXX)
${BIN:-./target/release/tickgate} --listen 127.0.0.1:$port --feed-rate 50000 --fanout-pass-us 200 \
  --durability off --summary-symbol none --max-connections 12000 ${SERVER_ARGS:-} > "$out/server.log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
if ! curl -sf "127.0.0.1:$port/healthz" >/dev/null; then
  echo "the server did not come up:" >&2; cat "$out/server.log" >&2; exit 1
fi
tools=${TOOLS:-./target/release/tickgate-tools}
follow=(--pattern all --symbols BTC-USD,ETH-USD,SOL-USD,XRP-USD --kinds book,trades)
# The healthy clients connect first: arriving beside thousands from the same address,
# most of them were refused by the server's limit of connections pending per address
# (42 of 50 in one run), and the rest measured alone.
"$tools" load --addr 127.0.0.1:$port -n 50 "${follow[@]}" --duration 15 --warmup 6 --json \
  > "$out/healthy.json" 2>"$out/healthy.err" &
healthy=$!
for _ in $(seq 50); do
  n=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_ws_connections / { print $2 }' || true)
  [ "${n:-0}" -ge 50 ] && break
  sleep 0.1
done
if [ "$stalled" -gt 0 ]; then
  "$tools" load --addr 127.0.0.1:$port -n 1 "${follow[@]}" --stalled "$stalled" --stall-after 2 \
    --duration 22 --warmup 0 > "$out/stalled.txt" 2>&1 &
fi
wait $healthy
closes=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_ws_slow_closes_total/ { print $2 }')
python3 - "$stalled" "$closes" "$out/healthy.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[3])); l = d["latency_ns"]
seconds = [(round(t["p99_ns"] / 1e6, 1), t.get("steal_ms")) for t in d["timeline"]]
print("stalled %s  healthy %d  %.2fM msgs/s  p50 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  slow closes %s  gaps %d  steal %.1f %%"
      % (sys.argv[1], d["connections"], d["messages_per_sec"] / 1e6, l["p50"] / 1e6, l["p99"] / 1e6,
         l["p999"] / 1e6, sys.argv[2], d["gaps"], d.get("steal_share", 0) * 100))
if d["closes"]:
    print("  healthy connections closed or refused:", d["closes"])
print("  per second (p99 ms, stolen ms):", seconds)
PY
