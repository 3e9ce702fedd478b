#!/usr/bin/env bash
# Run a command against a private single-node Slurm cluster, started before and stopped after:
#   .ci/with-slurm.sh .venv/bin/python -m pytest -m slurm
# The cluster and the command share a new network namespace with loopback only (`unshare --net`),
# so nothing the tests start can be reached from outside (slurmctld binds every interface).
# Runs CMD in the repository root. Needs root. Exit status: the command's.
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
if [ "${QLORA_IN_PRIVATE_NET:-}" != 1 ]; then
  exec env QLORA_IN_PRIVATE_NET=1 unshare --net -- "$SELF" "$@"
fi
ip link set lo up
# glibc's getaddrinfo(AI_ADDRCONFIG) resolves no name while only loopback addresses exist; an
# extra address on lo (still reachable from nowhere else) lets the daemons resolve "localhost".
ip addr add 10.255.255.1/32 dev lo
.ci/slurm-up.sh
trap '.ci/slurm-down.sh' EXIT
export SLURM_CONF=${QLORA_SLURM_DIR:-/tmp/qlora-slurm}/slurm.conf
"$@"
