#!/usr/bin/env bash
# A private single-node SLURM cluster with fake GPUs, for testing the SLURM profile for real.
#
#   tools/local_slurm.sh install     # apt-get install slurmctld slurmd slurm-client munge (root)
#   tools/local_slurm.sh start DIR   # write configs under DIR, start munged, slurmctld, slurmd
#   tools/local_slurm.sh env DIR     # the line to eval so sbatch/squeue talk to that cluster
#   tools/local_slurm.sh stop DIR    # stop the three daemons started by `start DIR`, by PID
#
# Everything lives under DIR: slurm.conf, gres.conf, the munge key and socket, state, logs,
# pid files, and the job completion log (DIR/log/jobcomp.log: one line per finished job with its
# TRES, time limit and state: there is no slurmdbd, so `sacct` does not work here).
# SLURM_CONF=DIR/etc/slurm.conf selects the cluster; the only file outside DIR is a link
# /etc/slurm/slurm.conf -> DIR/etc/slurm.conf (srun inside jobs needs it; see cmd_start), made
# only where no SLURM is configured and removed by `stop`. Free ports
# are picked at start, so a system SLURM or a second test cluster on the machine is not
# disturbed. No cgroups (proctrack/linuxproc, task/none), so it runs in containers.
#
# Exit status: 0 ok; 3 = cannot be installed here (not root, no apt-get): the reason on stderr.
# Settings (environment): LOCAL_SLURM_CPUS (4), LOCAL_SLURM_MEM_MB (8000), LOCAL_SLURM_GPUS (2),
# LOCAL_SLURM_MIN_JOB_AGE (300: how long finished jobs stay visible to squeue).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
NODE=ci-node
PARTITION=gpu
START_DIR=
START_OK=0
SYSTEM_CONF=/etc/slurm/slurm.conf  # where srun looks without SLURM_CONF (Debian's build)

die() { echo "local_slurm: $*" >&2; exit 1; }
cannot() { echo "local_slurm: cannot set up SLURM here: $*" >&2; exit 3; }

have_binaries() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null
}

cmd_install() {
  if have_binaries; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || cannot "not root, and slurmctld/slurmd/munged are not installed"
  command -v apt-get >/dev/null || cannot "no apt-get to install ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # the daemons are started by `start`, never by the package scripts
  if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null \
      || cannot "apt-get install ${PACKAGES[*]} failed"
  fi
  have_binaries || cannot "installed ${PACKAGES[*]}, but the binaries are not on PATH"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

read_pid() { [ -s "$1" ] && tr -dc '0-9' <"$1" || true; }

# A link to a config this script wrote for a cluster whose controller is gone (or to nothing).
stale_link() {
  [ -L "$1" ] || return 1
  [ -e "$1" ] || return 0
  local target
  target=$(readlink -f "$1")
  head -n 1 "$target" 2>/dev/null | grep -q '^# written by tools/local_slurm.sh' || return 1
  ! pid_alive "$(read_pid "$(dirname "$(dirname "$target")")/run/slurmctld.pid")"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local i
  for ((i = 0; i < limit * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  echo "local_slurm: timed out after ${limit}s waiting for $what" >&2
  return 1
}

cmd_start() {
  local dir=${1:?usage: local_slurm.sh start DIR}
  [ "$(id -u)" = 0 ] || cannot "the daemons must run as root (SlurmUser=root, munged key ownership)"
  have_binaries || cannot "SLURM is not installed (run: tools/local_slurm.sh install)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if pid_alive "$(read_pid "$dir/run/slurmctld.pid")"; then
    die "a cluster is already running from $dir (stop it first)"
  fi
  mkdir -p "$dir"/{etc,munge,run,state,spool,log}
  # a daemon that started before a failure is stopped again
  START_DIR=$dir
  trap 'if [ "$START_OK" != 1 ]; then cmd_stop "$START_DIR" >/dev/null 2>&1 || true; fi' EXIT
  chmod 0700 "$dir/munge"
  chmod 0755 "$dir" "$dir/run"

  local cpus=${LOCAL_SLURM_CPUS:-4} mem=${LOCAL_SLURM_MEM_MB:-8000} gpus=${LOCAL_SLURM_GPUS:-2}
  local min_job_age=${LOCAL_SLURM_MIN_JOB_AGE:-300}
  local ctld_port slurmd_port host
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  host=$(hostname -s)

  # munge: a private key and socket
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/run/munge.socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" \
    || die "munged did not start (see $dir/log/munged.log)"
  wait_for 10 "munged's socket" test -S "$dir/run/munge.socket"

  # fake GPUs: gres files that exist on every Linux machine; task/none binds nothing
  local gres_files=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty)
  ((gpus >= 1 && gpus <= ${#gres_files[@]})) || die "LOCAL_SLURM_GPUS must be 1..${#gres_files[@]}"
  : >"$dir/etc/gres.conf"
  local i
  for ((i = 0; i < gpus; i++)); do
    echo "NodeName=$NODE Name=gpu File=${gres_files[$i]}" >>"$dir/etc/gres.conf"
  done

  cat >"$dir/etc/slurm.conf" <<EOF
# written by tools/local_slurm.sh: a single-node test cluster, no accounting database
ClusterName=editunlearn-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/run/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
GresTypes=gpu
# no slurmdbd: sacct cannot work; finished jobs stay in squeue for MinJobAge seconds and are
# written to the job completion log (without gres: tracking gres/gpu needs slurmdbd, so the GPU
# request of a job is read with scontrol show job, while MinJobAge keeps it there)
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
MinJobAge=$min_job_age
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
# the node's size comes from this file, not from the hardware
SlurmdParameters=config_overrides
NodeName=$NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$gpus State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/etc/slurm.conf"
  # Inside a job, snakemake's slurm-jobstep executor drops SLURM_* variables (SLURM_CONF too)
  # before it calls srun, which then looks for the config at its default place only: link it
  # there, while no other SLURM is configured on this machine (`stop` removes the link).
  if stale_link "$SYSTEM_CONF"; then
    rm -f "$SYSTEM_CONF"  # left by a test cluster that was killed, not stopped
  fi
  if [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
    cannot "$SYSTEM_CONF exists: this machine has a SLURM of its own (use that one)"
  fi
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -s "$SLURM_CONF" "$SYSTEM_CONF"

  slurmctld -f "$SLURM_CONF" -i || die "slurmctld did not start (see $dir/log/slurmctld.log)"
  wait_for 20 "slurmctld" scontrol ping
  slurmd -f "$SLURM_CONF" -N "$NODE" || die "slurmd did not start (see $dir/log/slurmd.log)"
  wait_for 30 "node $NODE to come up" node_ready
  scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  wait_for 30 "node $NODE to be idle" node_ready
  START_OK=1
  cmd_env "$dir"
}

node_ready() {
  local state
  state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null) || return 1
  [ "$state" = idle ]
}

cmd_env() {
  local dir=${1:?usage: local_slurm.sh env DIR}
  dir=$(cd "$dir" && pwd)
  echo "export SLURM_CONF=$dir/etc/slurm.conf"
}

cmd_stop() {
  local dir=${1:?usage: local_slurm.sh stop DIR}
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  export SLURM_CONF="$dir/etc/slurm.conf"
  local name pid pids=()
  # jobs first, so their processes go with the cluster
  if [ -f "$SLURM_CONF" ] && pid_alive "$(read_pid "$dir/run/slurmctld.pid")"; then
    scancel --full --quiet --partition "$PARTITION" >/dev/null 2>&1 || true
  fi
  for name in slurmd slurmctld munged; do
    pid=$(read_pid "$dir/run/$name.pid")
    if pid_alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 80; i++)); do pid_alive "$pid" || break; sleep 0.25; done
    if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -f "$dir"/run/*.pid
  if [ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" = "$dir/etc/slurm.conf" ]; then
    rm -f "$SYSTEM_CONF"
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  env) shift; cmd_env "$@" ;;
  *) echo "usage: $0 install | start DIR | stop DIR | env DIR" >&2; exit 2 ;;
esac
