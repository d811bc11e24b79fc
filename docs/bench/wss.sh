#!/usr/bin/env bash
# WSS against cleartext WS fan-out, alternating in one run: the same server flags, the same
# feed, the same probe, with and without TLS (a self-signed certificate made here).
# Usage: docs/bench/wss.sh [ROUNDS] [CONNECTIONS] [FEED_RATE] [PATTERN]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; conns=${2:-1000}; rate=${3:-20000}; pattern=${4:-spread:3}
dir=$(mktemp -d /tmp/tickgate-wss.XXXX)
trap 'rm -rf "$dir"' EXIT
# A leaf certificate (not a CA: webpki refuses a CA as the server's own certificate).
printf '[req]\ndistinguished_name=dn\nx509_extensions=leaf\n[dn]\n[leaf]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > "$dir/openssl.cnf"
openssl req -x509 -config "$dir/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -days 2 -subj /CN=localhost -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
one() {
  local tls=$1 port=$((20000 + RANDOM % 20000)) tls_args=() probe_args=()
  if [ "$tls" = wss ]; then
    tls_args=(--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
    probe_args=(--tls-ca "$dir/cert.pem")
  fi
  ./target/release/tickgate --listen 127.0.0.1:$port --feed-rate "$rate" --summary-symbol none \
    --durability off "${tls_args[@]}" ${SERVER_ARGS:-} > /tmp/tickgate-wss-server.log 2>&1 &
  local server=$!
  sleep 2
  ./target/release/tickgate-tools load --addr 127.0.0.1:$port -n "$conns" --pattern "$pattern" \
    --duration "${DURATION:-8}" --warmup "${WARMUP:-3}" "${probe_args[@]}" --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print('$tls', r['connections'], 'conns', round(r['messages_per_sec']), 'msgs/s  p50', round(r['latency_ns']['p50']/1e6, 2), 'ms  p99', round(r['latency_ns']['p99']/1e6, 2), 'ms  breaks', r['sequence_breaks'], 'gaps', r['gaps'], 'resyncs', r['resyncs'])"
  kill -INT $server; wait $server 2>/dev/null || true
}
for _ in $(seq "$rounds"); do one ws; one wss; done
