#!/usr/bin/env bash
# Alternates old/new criterion bench binaries; prints median per benchmark per run.
set -u
old=$1; new=$2; filter=$3; rounds=${4:-2}
for r in $(seq $rounds); do
  for side in old new; do
    bin=${!side}
    CRITERION_HOME=/tmp/crit-$side "$bin" --bench "$filter" --noplot --measurement-time 4 --warm-up-time 1 2>/dev/null \
      | awk -v s=$side -v r=$r '/^[a-z_\/0-9]+ *$/{name=$1} /time:/{ if (name=="") name=$1; for(i=1;i<=NF;i++) if ($i ~ /\[/) {print r, s, name, $(i+2), $(i+3); break}; name=""}'
  done
done
