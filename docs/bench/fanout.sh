#!/usr/bin/env bash
# One fan-out measurement on loopback: start the server with a given synthetic feed rate,
# run the load probe against it, stop the server. Prints the probe's report.
# Usage: [BIN=path/to/tickgate] [TOOLS=path/to/tickgate-tools] docs/bench/fanout.sh FEED_RATE CONNECTIONS PATTERN [FANOUT_PASS_US] [extra load args...]
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:?feed rate}; conns=${2:?connections}; pattern=${3:?pattern}; pass=${4:-200}; shift 4 || shift $#
server=
trap '[ -n "$server" ] && { kill -INT $server 2>/dev/null || true; wait $server 2>/dev/null || true; }' EXIT
# A random port may be taken (by another program, or as the local end of a connection):
# then the server exits at once, and another port is tried.
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 20000))
  ${BIN:-./target/release/tickgate} --listen 127.0.0.1:$port --feed-rate "$rate" --fanout-pass-us "$pass" \
    --summary-symbol none ${SERVER_ARGS:-} > /tmp/tickgate-bench-server.log 2>&1 &
  server=$!
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$port/healthz" >/dev/null && break
    kill -0 $server 2>/dev/null || break
    sleep 0.1
  done
  curl -sf "127.0.0.1:$port/healthz" >/dev/null && break
  kill -INT $server 2>/dev/null || true; wait $server 2>/dev/null || true; server=
done
if [ -z "$server" ]; then
  echo "the server did not come up:" >&2; cat /tmp/tickgate-bench-server.log >&2; exit 1
fi
${TOOLS:-./target/release/tickgate-tools} load --addr 127.0.0.1:$port -n "$conns" --pattern "$pattern" \
  --duration "${DURATION:-8}" --warmup "${WARMUP:-3}" "$@"
