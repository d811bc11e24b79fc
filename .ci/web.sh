#!/usr/bin/env bash
# The web terminal in headless Chromium against a real server (gateway/web/e2e.mjs), plus
# the reference client's unit tests. Needs `chromium` (Debian) and `npm ci` in gateway/web.
# Usage: .ci/web.sh [path to the tickgate binary]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/tickgate}
command -v chromium >/dev/null || { echo "chromium is not installed (apt-get install chromium)" >&2; exit 1; }
node --test gateway/web/
source .ci/server.sh
start_server "$bin" --durability off --feed-rate 2000 --token-lifetime-secs 3
TICKGATE_URL="http://127.0.0.1:$port" timeout 300 node gateway/web/e2e.mjs
