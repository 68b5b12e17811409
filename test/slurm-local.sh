#!/usr/bin/env bash
# A one-node Slurm cluster on loopback for test/slurm.test.ts, from Debian 12's packages
# (slurmctld slurmd slurm-client munge; .ci/run installs them). Run as root. No systemd, no
# accounting (sacct answers "accounting storage is disabled": the backend then follows jobs with
# squeue and the files its job script writes). Processes are tracked by cgroup (proctrack/cgroup,
# as real clusters do) where the host mounts the cgroup v1 freezer, else by parent links
# (linuxproc); no device constraint. GPUs are fake: gres backed by /dev/null, enough for Slurm to
# hand each job its own CUDA_VISIBLE_DEVICES.
#   start  write the configuration, start munged (unless one answers), slurmctld and slurmd, and
#          wait until the node is idle
#   stop   cancel every job, stop what start started (by pid), remove the configuration and state
# Variables: SLURM_CI_BASE (state, default /tmp/autoresearch-slurm), SLURM_CI_GPUS (fake GPUs,
# default 2), SLURM_CI_KILLWAIT (seconds from SIGTERM to SIGKILL on cancel, default 2),
# SLURM_CI_PROCTRACK (cgroup or linuxproc; default as above).
set -euo pipefail

base=${SLURM_CI_BASE:-/tmp/autoresearch-slurm}
gpus=${SLURM_CI_GPUS:-2}
killwait=${SLURM_CI_KILLWAIT:-2}
conf=/etc/slurm
mark='# written by autoresearch-mcp test/slurm-local.sh'

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || { echo "slurm-local.sh: run as root (the daemons need it)" >&2; exit 1; }
  command -v slurmctld >/dev/null || { echo "slurm-local.sh: install slurmctld slurmd slurm-client munge first" >&2; exit 1; }
  for file in slurm.conf cgroup.conf; do
    if [ -e "$conf/$file" ] && ! grep -qxF "$mark" "$conf/$file"; then
      echo "slurm-local.sh: $conf/$file is someone else's; not overwriting it" >&2; exit 1
    fi
  done
  mkdir -p "$base"/{state,spool,log,run,dev} "$conf"
  # munge: a running one is kept (and not stopped later); else ours, with a key made once.
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$base/run/munged.pid"
    for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  local node gres=""
  node=$(hostname -s)
  rm -f "$conf/gres.conf"
  if [ "$gpus" -gt 0 ]; then
    gres="Gres=gpu:$gpus"
    for ((i = 0; i < gpus; i++)); do
      # slurmd drops a GPU without a File=; any character device does.
      ln -sfn /dev/null "$base/dev/fakegpu$i"
      echo "NodeName=$node Name=gpu File=$base/dev/fakegpu$i" >> "$conf/gres.conf"
    done
  fi
  # proctrack/cgroup: a job's processes are its cgroup's, so none outlives the job (linuxproc
  # follows parent links and loses a process whose parent died). Without systemd, Debian 12's
  # Slurm (22.05) manages cgroup v1 itself; v2 would need a delegated subtree, so linuxproc there.
  local proctrack=${SLURM_CI_PROCTRACK:-}
  if [ -z "$proctrack" ]; then
    if [ "$(stat -fc %T /sys/fs/cgroup/freezer 2>/dev/null)" = cgroupfs ]; then proctrack=cgroup; else proctrack=linuxproc; fi
  fi
  rm -f "$conf/cgroup.conf"
  if [ "$proctrack" = cgroup ]; then
    printf '%s\nCgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n' "$mark" > "$conf/cgroup.conf"
  fi
  cat > "$conf/slurm.conf" <<EOF
$mark
ClusterName=autoresearch
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/$proctrack
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
KillWait=$killwait
MailProg=/bin/true
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool
SlurmctldPidFile=$base/run/slurmctld.pid
SlurmdPidFile=$base/run/slurmd.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd.log
GresTypes=gpu
$(slurmd -C | head -n1) NodeAddr=127.0.0.1 $gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  slurmctld
  slurmd
  local state=""
  for _ in $(seq 300); do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
    [ "$state" = idle ] && return 0
    sleep 0.1
  done
  echo "slurm-local.sh: the node is not idle (state '$state'); logs:" >&2
  tail -n 20 "$base"/log/*.log >&2 || true
  exit 1
}

stop() {
  if running "$base/run/slurmctld.pid"; then
    squeue -h -o %i | xargs -r scancel || true
    for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for daemon in slurmd slurmctld munged; do
    running "$base/run/$daemon.pid" || continue
    pid=$(cat "$base/run/$daemon.pid")
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  done
  grep -qsxF "$mark" "$conf/slurm.conf" && rm -f "$conf/slurm.conf" "$conf/gres.conf" "$conf/cgroup.conf"
  rm -rf "$base"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
