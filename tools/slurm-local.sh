#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for the tests of `--scheduler slurm` (and for trying
# the generated array scripts on a laptop). Debian's slurm-wlm and munge; no network beyond
# loopback; everything (config, state, logs) under one folder.
#
#   tools/slurm-local.sh start DIR   # writes DIR/slurm.conf, starts munged, slurmctld, slurmd
#   tools/slurm-local.sh stop DIR    # stops them
#   export SLURM_CONF=DIR/slurm.conf # then sbatch, squeue, sacct, scancel use this cluster
#
# Runs as root (the daemons run as root). When a daemon does not come up, its own log is
# printed and the script fails.
set -euo pipefail
cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/slurm.conf"

stop() {
  for p in slurmd slurmctld munged; do
    if [ -f "$dir/$p.pid" ]; then
      pid=$(cat "$dir/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      rm -f "$dir/$p.pid"
    fi
  done
}

fail() {
  echo "slurm-local: $1 did not start; its log:" >&2
  cat "$2" >&2 2>/dev/null || echo "(no log at $2)" >&2
  stop
  exit 1
}

case "$cmd" in
start)
  for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "slurm-local: $tool not found: apt-get install slurm-wlm munge" >&2
      exit 1
    }
  done
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  # readable by all, so that a user other than root can reach the socket
  chmod 755 "$dir/munge"
  # munge: a key of its own and a socket under DIR, so the system's munge is not touched
  if [ ! -f "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
  fi
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed" \
    || fail munged "$dir/munged.log"
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat >"$conf" <<EOF
ClusterName=robustlens-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=30
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$conf"
  slurmctld -f "$conf" || fail slurmctld "$dir/slurmctld.log"
  slurmd -f "$conf" || fail slurmd "$dir/slurmd.log"
  # up when the node is idle
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -q idle; then
      echo "slurm-local: up (export SLURM_CONF=$conf)"
      exit 0
    fi
    sleep 1
  done
  echo "slurm-local: the node did not become idle: sinfo says $(sinfo -h -o '%T %E' 2>&1)" >&2
  cat "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  stop
  exit 1
  ;;
stop)
  stop
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
