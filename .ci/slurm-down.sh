#!/usr/bin/env bash
# Stop the cluster .ci/slurm-up.sh started: each daemon by its pid file (TERM, then KILL after 10 s).
set -uo pipefail
DIR=${QLORA_SLURM_DIR:-/tmp/qlora-slurm}
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
done
rm -rf "$DIR/state" "$DIR/spool"
echo "slurm stopped ($DIR)"
