#!/usr/bin/env bash
# SSE alert streams with U users (default 1,000, cheap argon2 hashes so logins are fast)
# and N streams spread over them (default 10,000: 10 tabs per user):
# 1. server memory per idle stream (RSS before and while N idle streams are open);
# 2. price-alert delivery latency, engine timestamp of the triggering trade/BBO change to
#    receipt, while the synthetic market (feed on) fires repeating `crosses` alerts set
#    around the BTC-USD mid by every user.
# Usage: docs/bench/sse.sh [N] [U] [feed rate]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-10000}
u=${2:-1000}
rate=${3:-20000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
users=/tmp/tickgate-sse-users-$u.json
[ -f "$users" ] || ./target/release/tickgate-tools users --count "$u" --cheap --out "$users"
port=$((20000 + RANDOM % 20000))
./target/release/tickgate --listen 127.0.0.1:$port --durability off --feed-rate "$rate" \
  --users "$users" --summary-symbol none --rest-rate 0 --sse-streams-per-user "$n" \
  --sse-streams-max $((n + 100)) > /tmp/tickgate-sse-server.log 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
sleep 2
rss() { awk '/VmRSS/ {print $2}' /proc/$server/status; }
before=$(rss)
./target/release/tickgate-tools sse --addr 127.0.0.1:$port -n "$n" --users "generated:$u" \
  --duration 4 --warmup 8 > /tmp/tickgate-sse-idle.txt &
client=$!
sleep 10
during=$(rss)
open=$(curl -s 127.0.0.1:$port/metrics | awk '/^tickgate_sse_streams / {print $2}')
wait $client
echo "idle streams open: $open"
echo "server RSS before: ${before} KiB, with streams: ${during} KiB"
echo "per idle stream: $(( (during - before) * 1024 / open )) bytes"
echo "--- $n streams of $u users; user i has repeating crosses alerts at the BTC-USD mid + (i - u/2) ticks + k x 1000 ticks, k = -2..2; feed $rate commands/s"
./target/release/tickgate-tools sse --addr 127.0.0.1:$port -n "$n" --users "generated:$u" \
  --alert BTC-USD --stagger --alert-spread 2 --alert-step 1000 --duration 10 --warmup 8
curl -s 127.0.0.1:$port/metrics | grep -E '^tickgate_sse_(slow|resets)'
