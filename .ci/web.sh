#!/usr/bin/env bash
# The web terminal in headless Chromium against a real server (gateway/web/e2e.mjs), plus
# the reference client's unit tests. Needs `chromium` (Debian) and `npm ci` in gateway/web.
# Usage: .ci/web.sh [path to the tickgate binary]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/tickgate}
command -v chromium >/dev/null || { echo "chromium is not installed (apt-get install chromium)" >&2; exit 1; }
node --test gateway/web/
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp /tmp/tickgate-web.XXXX.log)
"$bin" --listen "127.0.0.1:$port" --durability off --feed-rate 2000 --summary-symbol none > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
TICKGATE_URL="http://127.0.0.1:$port" timeout 300 node gateway/web/e2e.mjs
