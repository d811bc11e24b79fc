#!/usr/bin/env bash
# Builds pubsub.cpp on uWebSockets and uSockets (see README.md for the commits).
#
# Usage: docs/bench/uws/build.sh [UWS_DIR] [USOCKETS_DIR] [OUTPUT]
#   defaults: /tmp/uws/uWebSockets /tmp/uws/uSockets /tmp/uws/pubsub
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
uws=$(cd "${1:-/tmp/uws/uWebSockets}" && pwd)
usockets=$(cd "${2:-/tmp/uws/uSockets}" && pwd)
out=${3:-/tmp/uws/pubsub}
objs=$(mktemp -d)
trap 'rm -rf "$objs"' EXIT
# uSockets' C sources (no SSL: openssl.c compiles to nothing; the io_uring files only with
# LIBUS_USE_IO_URING), one object each.
for src in "$usockets"/src/*.c "$usockets"/src/eventing/*.c "$usockets"/src/crypto/*.c; do
  name=${src#"$usockets"/src/}
  gcc -std=c11 -O3 -DLIBUS_NO_SSL -I"$usockets/src" -c "$src" -o "$objs/${name//\//_}.o"
done
mkdir -p "$(dirname "$out")"
g++ -std=c++20 -O3 -DUWS_NO_ZLIB -DLIBUS_NO_SSL -I"$uws/src" -I"$usockets/src" \
  "$here/pubsub.cpp" "$objs"/*.o -o "$out"
echo "built $out"
