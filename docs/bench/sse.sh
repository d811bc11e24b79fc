#!/usr/bin/env bash
# SSE alert streams: server memory per idle stream, then price-alert delivery latency with
# N streams open while the synthetic market fires a repeating `crosses` alert per user.
# Usage: docs/bench/sse.sh [N] [feed rate]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-10000}
rate=${2:-20000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
port=$((20000 + RANDOM % 20000))
./target/release/tickgate --listen 127.0.0.1:$port --durability off --feed-rate "$rate" \
  --summary-symbol none --rest-rate 0 --sse-streams-per-user "$n" --sse-streams-max $((n + 100)) \
  > /tmp/tickgate-sse-server.log 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
sleep 2
rss() { awk '/VmRSS/ {print $2}' /proc/$server/status; }
before=$(rss)
./target/release/tickgate-tools sse --addr 127.0.0.1:$port -n "$n" --duration 4 --warmup 6 > /tmp/tickgate-sse-idle.txt &
client=$!
sleep 8
during=$(rss)
open=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_sse_streams / {print $2}')
wait $client
echo "idle streams open: $open"
echo "server RSS before: ${before} KiB, with streams: ${during} KiB"
echo "per idle stream: $(( (during - before) * 1024 / open )) bytes"
echo "--- $n streams, repeating crosses alert on BTC-USD per user, feed $rate commands/s"
./target/release/tickgate-tools sse --addr 127.0.0.1:$port -n "$n" --alert BTC-USD --duration 10 --warmup 6
