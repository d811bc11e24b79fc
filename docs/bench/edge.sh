#!/usr/bin/env bash
# The edge's costs on loopback, server and clients on the same two cores: TLS handshakes
# per second (openssl s_time, full handshakes, one client), and REST requests per second
# over HTTP/1.1 and HTTP/2, cleartext and TLS (h2load, from Debian's nghttp2-client).
# Usage: docs/bench/edge.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}; conns=${2:-64}
dir=$(mktemp -d /tmp/tickgate-edge.XXXX)
printf '[req]\ndistinguished_name=dn\nx509_extensions=leaf\n[dn]\n[leaf]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > "$dir/openssl.cnf"
openssl req -x509 -config "$dir/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -days 2 -subj /CN=localhost -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
servers=()
trap 'for s in "${servers[@]}"; do kill -INT $s 2>/dev/null; wait $s 2>/dev/null || true; done; rm -rf "$dir"' EXIT
start() { # start NAME ARGS...: sets $port
  port=$((20000 + RANDOM % 20000))
  ./target/release/tickgate --listen 127.0.0.1:$port --no-feed --summary-symbol none --rest-rate 0 \
    --durability off "${@:2}" ${SERVER_ARGS:-} > "/tmp/tickgate-edge-$1.log" 2>&1 &
  servers+=($!)
  sleep 2
}
start plain; plain=$port
start tls --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem"; tls=$port
token=$(curl -s -XPOST 127.0.0.1:$plain/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-demo-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
tls_token=$(curl -sk -XPOST https://127.0.0.1:$tls/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-demo-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
echo "--- TLS handshakes, new sessions, one client (openssl s_time), ${secs} s"
openssl s_time -connect 127.0.0.1:$tls -new -time "$secs" 2>/dev/null | grep -E "connections in [0-9.]+s|real seconds" | head -2
run() { # run LABEL URL TOKEN H2LOAD_ARGS...
  local out
  out=$(h2load -D "$secs" -c "$conns" -t 1 -H "authorization: Bearer $3" "${@:4}" "$2" 2>&1)
  printf '%-28s %s  %s\n' "$1" "$(echo "$out" | grep -oE 'finished in [0-9.]+s, [0-9.]+ req/s' | cut -d, -f2)" \
    "$(echo "$out" | grep -E '^requests:' | sed 's/requests: //')"
}
echo "--- GET /api/v1/account, $conns connections, ${secs} s (h2load)"
run "cleartext HTTP/1.1" "http://127.0.0.1:$plain/api/v1/account" "$token" --h1
run "cleartext HTTP/2 (h2c)" "http://127.0.0.1:$plain/api/v1/account" "$token"
run "cleartext HTTP/2, 10 streams" "http://127.0.0.1:$plain/api/v1/account" "$token" -m 10
run "TLS HTTP/1.1" "https://127.0.0.1:$tls/api/v1/account" "$tls_token" --h1
run "TLS HTTP/2" "https://127.0.0.1:$tls/api/v1/account" "$tls_token"
run "TLS HTTP/2, 10 streams" "https://127.0.0.1:$tls/api/v1/account" "$tls_token" -m 10
# SSE streams over HTTP/2: many streams per connection; server memory per open stream.
sse() { # sse LABEL URL TOKEN H2LOAD_ARGS...
  local pid=$4 before during
  before=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  h2load -D 6 -c 10 -m 250 -n 2500 -t 1 -H "authorization: Bearer $3" "${@:5}" "$2" > /dev/null 2>&1 &
  local load=$!
  sleep 4
  during=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  local open
  open=$(curl -sk "${2%%/api/*}/metrics" | awk '/^tickgate_sse_streams / {print $2}')
  wait $load || true
  printf '%-28s %s streams open, RSS %s -> %s KB: %s B per stream\n' "$1" "$open" "$before" "$during" \
    $(( (during - before) * 1024 / open ))
}
echo "--- 2,500 SSE streams on 10 HTTP/2 connections (h2load), server RSS"
start sse-plain --sse-streams-per-user 100000; sse_plain=$port; sse_plain_pid=${servers[-1]}
start sse-tls --sse-streams-per-user 100000 --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem"
sse_tls=$port; sse_tls_pid=${servers[-1]}
t1=$(curl -s -XPOST 127.0.0.1:$sse_plain/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-demo-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
t2=$(curl -sk -XPOST https://127.0.0.1:$sse_tls/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-demo-password"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
sse "cleartext HTTP/2 (h2c)" "http://127.0.0.1:$sse_plain/api/v1/alerts/stream" "$t1" "$sse_plain_pid"
sse "TLS HTTP/2" "https://127.0.0.1:$sse_tls/api/v1/alerts/stream" "$t2" "$sse_tls_pid"
