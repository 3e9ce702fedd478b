#!/usr/bin/env bash
# Bring up a private single-node Slurm cluster (munge, slurmctld, slurmd; no accounting) for the
# `slurm`-marked tests, or for trying the Slurm executor on one machine. Needs root and the Debian
# packages slurmctld slurmd slurm-client munge (installed here when missing). Everything lives
# under $QLORA_SLURM_DIR (default /tmp/qlora-slurm); the daemons talk over 127.0.0.1 only.
# Afterwards: export SLURM_CONF=$QLORA_SLURM_DIR/slurm.conf. Stop with .ci/slurm-down.sh.
set -euo pipefail
DIR=${QLORA_SLURM_DIR:-/tmp/qlora-slurm}
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
  echo "a cluster already runs from $DIR (stop it with .ci/slurm-down.sh)" >&2
  exit 1
fi
mkdir -p "$DIR"/{munge,state,spool,log,gpus}
chown munge:munge "$DIR/munge"
chmod 711 "$DIR/munge"
[ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                 chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
# Two fake GPUs: character devices (copies of /dev/null) so that Slurm sets CUDA_VISIBLE_DEVICES.
for i in 0 1; do [ -c "$DIR/gpus/fakegpu$i" ] || mknod -m 666 "$DIR/gpus/fakegpu$i" c 1 3; done
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat > "$DIR/slurm.conf" <<CONF
ClusterName=qlora
SlurmctldHost=localhost(127.0.0.1)
CommunicationParameters=NoInAddrAny
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmctldPort=${QLORA_SLURMCTLD_PORT:-16817}
SlurmdPort=${QLORA_SLURMD_PORT:-16818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
KillWait=10
InactiveLimit=0
DefMemPerCPU=1024
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=localhost Name=gpu Type=fake File=$DIR/gpus/fakegpu[0-1]" > "$DIR/gres.conf"
start=$(date +%s)
runuser -u munge -- munged --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
  --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
export SLURM_CONF=$DIR/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 1 100); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm up in $(( $(date +%s) - start )) s: export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.3
done
echo "slurm did not come up; logs in $DIR/log" >&2
tail -n 20 "$DIR"/log/*.log "$DIR"/munge/munged.log >&2 || true
exit 1
