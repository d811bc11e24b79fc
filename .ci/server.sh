# Sourced by the CI scripts: `start_server BIN ARGS...` starts a tickgate server on a free
# loopback port (sets `port`), stops it when the script exits, and waits until /healthz
# answers (at most 10 s).
start_server() {
  local bin=$1
  shift
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local log
  log=$(mktemp /tmp/tickgate-ci-server.XXXX.log)
  "$bin" --listen "127.0.0.1:$port" --summary-symbol none "$@" > "$log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -sf "127.0.0.1:$port/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "the server did not answer /healthz within 10 s; its log:" >&2
  cat "$log" >&2
  return 1
}
