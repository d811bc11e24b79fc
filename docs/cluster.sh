#!/usr/bin/env bash
# A whole deployment on this machine: nats-server, one engine node, two gateway nodes.
#   docs/cluster.sh              # builds the release binary, starts everything, Ctrl-C stops it
# Clients connect to a gateway: http://127.0.0.1:8081/ or :8082/ (web terminal, REST,
# WebSocket /ws, SSE). The engine node (127.0.0.1:8080) serves /healthz, /metrics and
# public market data only. NATS listens on 127.0.0.1:4222 (monitoring: :8222).
# Environment: NATS_PORT, NATS_MONITOR_PORT, ENGINE_PORT, GATEWAY_PORTS ("8081 8082"),
# DATA_DIR, FEED_RATE, TICKGATE_JWT_SECRET (shared by every node; a random one per run by
# default), TICKGATE_NATS_TOKEN (the broker's token, which every node presents: anything
# that can publish on the subjects can place orders for any account; a random one per run
# by default), BIN (a tickgate binary to run instead of building one from this tree).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 1; }
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release -p tickgate-gateway
  bin=./target/release/tickgate
fi
nats_port=${NATS_PORT:-4222}
engine_port=${ENGINE_PORT:-8080}
gateway_ports=${GATEWAY_PORTS:-"8081 8082"}
data=${DATA_DIR:-./data-cluster}
export TICKGATE_JWT_SECRET=${TICKGATE_JWT_SECRET:-$(head -c 32 /dev/urandom | base64)}
export TICKGATE_NATS_TOKEN=${TICKGATE_NATS_TOKEN:-$(head -c 24 /dev/urandom | base64 | tr -d '/+=')}
pids=()
trap 'kill -INT "${pids[@]}" 2>/dev/null; wait; rm -f "${conf:-}"' EXIT INT TERM
# The token goes in a file only this user reads (on the command line, `ps` would show it
# to every local user); the nodes take it from the environment.
conf=$(mktemp)
chmod 600 "$conf"
printf 'authorization { token: "%s" }\n' "$TICKGATE_NATS_TOKEN" > "$conf"
nats-server -a 127.0.0.1 -p "$nats_port" -m "${NATS_MONITOR_PORT:-8222}" -c "$conf" &
pids+=($!)
sleep 0.5
nats=nats://127.0.0.1:$nats_port
$bin --nats "$nats" --role engine --node-id engine-1 --listen 127.0.0.1:"$engine_port" \
  --data-dir "$data" --feed-rate "${FEED_RATE:-20000}" &
pids+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$engine_port/healthz" >/dev/null && break; sleep 0.1; done
n=1
for port in $gateway_ports; do
  $bin --nats "$nats" --role gateway --node-id "gateway-$n" --listen 127.0.0.1:"$port" \
    --summary-symbol none &
  pids+=($!)
  n=$((n + 1))
done
echo "engine node 127.0.0.1:$engine_port; gateways on $gateway_ports; Ctrl-C stops everything"
wait
