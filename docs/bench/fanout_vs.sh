#!/usr/bin/env bash
# Fan-out latency of tickgate, alternating with another server that speaks the same
# binary market-data frames (e.g. a uWebSockets pub/sub program you built yourself; see
# docs/BENCHMARKS.md), measured by the same probe. Prints one line per run and the medians.
# steal_pct: the share of the machine's CPU time its hypervisor took during the run.
#
# Usage: docs/bench/fanout_vs.sh RUNS "SUBSCRIBERS:FEED_RATE:PEER_ARG ..." [PEER_CMD]
#   FEED_RATE   tickgate's synthetic feed, commands/s
#   PEER_CMD    started as `PEER_CMD PORT PEER_ARG` (PEER_ARG: the peer's own rate setting);
#               without it only tickgate runs
#   SERVER_ARGS tickgate flags (default: --durability off)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:?runs}; cells=${2:?cells}; peer=${3:-}
out=$(mktemp)
summary() { python3 -c '
import json, sys
d = json.load(sys.stdin); l = d["latency_ns"]
print("%.0f %.0f %.0f %.0f %.0f %d %d %d %.1f" % (d["messages_per_sec"], l["p50"] / 1e3, l["p90"] / 1e3,
      l["p99"] / 1e3, l["p999"] / 1e3, d["resyncs"], d["gaps"], d["sequence_breaks"],
      d.get("steal_share", 0) * 100))'; }
echo "server subscribers rate run msgs/s p50_us p90_us p99_us p999_us resyncs gaps breaks steal_pct"
for run in $(seq "$runs"); do
  for cell in $cells; do
    IFS=: read -r subs feed arg <<< "$cell"
    r=$(SERVER_ARGS="${SERVER_ARGS:---durability off}" docs/bench/fanout.sh "$feed" "$subs" spread:3 200 --json 2>/dev/null | summary)
    echo "tickgate $subs $feed $run $r" | tee -a "$out"
    if [ -n "$peer" ]; then
      # A port still in use (a random pick) makes the peer exit: pick another.
      for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 20000))
        $peer "$port" "$arg" > /tmp/tickgate-bench-peer.log 2>&1 &
        pid=$!
        sleep 0.5
        kill -0 "$pid" 2>/dev/null && break
      done
      r=$(./target/release/tickgate-tools load --addr 127.0.0.1:$port -n "$subs" --pattern spread:3 \
        --duration "${DURATION:-8}" --warmup "${WARMUP:-3}" --json 2>/dev/null | summary)
      kill "$pid"; wait "$pid" 2>/dev/null || true
      echo "peer $subs $arg $run $r" | tee -a "$out"
    fi
  done
done
echo "medians (ms): server subscribers rate msgs/s p50 p90 p99 p99.9 [p99 of each run] p99 max/min;"
echo "  then the same p99 figures over the runs with under 1 % of the CPUs' time stolen"
python3 - "$out" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    rows[(p[0], int(p[1]), p[2])].append([float(x) for x in p[4:9]] + [float(p[12])])
def spread(p99s):
    return "%.2fx" % (max(p99s) / min(p99s)) if p99s and min(p99s) > 0 else "-"
for (server, subs, rate), v in sorted(rows.items(), key=lambda kv: (-kv[0][1], kv[0][0], float(kv[0][2]))):
    m = [statistics.median(x[i] for x in v) for i in range(5)]
    p99s = [x[3] / 1e3 for x in v]
    calm = [x[3] / 1e3 for x in v if x[5] < 1.0]
    calm_median = "%.2f" % statistics.median(calm) if calm else "-"
    print("%s %d %s %.2fM %.2f %.2f %.2f %.2f %s %s; without steal: %d runs, p99 %s, %s" % (
          server, subs, rate, m[0] / 1e6, m[1] / 1e3, m[2] / 1e3, m[3] / 1e3, m[4] / 1e3,
          [round(x, 1) for x in p99s], spread(p99s), len(calm), calm_median, spread(calm)))
EOF
rm -f "$out"
