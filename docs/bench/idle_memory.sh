#!/usr/bin/env bash
# Server memory per idle WebSocket connection: RSS before and while N idle clients are
# connected (no subscriptions), feed off. Usage: docs/bench/idle_memory.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-5000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
port=$((20000 + RANDOM % 20000))
${BIN:-./target/release/tickgate} --listen 127.0.0.1:$port --no-feed --summary-symbol none \
  --max-connections $((n + 100)) > /tmp/tickgate-idle-server.log 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2}' /proc/$server/status; }
before=$(rss)
./target/release/tickgate-tools load --addr 127.0.0.1:$port -n "$n" --idle --duration 6 --warmup 4 > /dev/null &
client=$!
sleep 8
during=$(rss)
open=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_ws_connections / {print $2}')
wait $client
echo "connections open: $open"
echo "server RSS before: ${before} KiB, with connections: ${during} KiB"
echo "per idle connection: $(( (during - before) * 1024 / open )) bytes"
