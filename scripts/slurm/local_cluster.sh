#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for tests and benchmarks (not for production).
#
#   scripts/slurm/local_cluster.sh start DIR   # munged + slurmctld + slurmd, all state in DIR
#   export SLURM_CONF=DIR/slurm.conf          # then sbatch/squeue/sacct talk to it
#   scripts/slurm/local_cluster.sh stop DIR
#
# Needs Debian's slurm-wlm and munge packages and root (slurmd runs jobs as their owner).
# Everything lives in DIR: its own munge key and socket, free ports, logs, spool and state,
# so it never touches a system cluster or another test's cluster.
set -euo pipefail

action=${1:?usage: local_cluster.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: local_cluster.sh start|stop DIR}" && cd "$2" && pwd)

stop() {
    local pid
    for daemon in slurmd slurmctld munged; do
        if [[ -s "$dir/$daemon.pid" ]]; then
            pid=$(cat "$dir/$daemon.pid")
            kill "$pid" 2>/dev/null || true
            # slurmctld saves its state before it exits: wait, so a restart finds it gone
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            rm -f "$dir/$daemon.pid"
        fi
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    for cmd in munged slurmctld slurmd sbatch; do
        command -v "$cmd" >/dev/null || { echo "local_cluster: $cmd not found (apt-get install slurm-wlm munge)" >&2; exit 2; }
    done
    [[ $(id -u) == 0 ]] || { echo "local_cluster: slurmd must run as root" >&2; exit 2; }
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    chmod 700 "$dir"
    # munge: own key and socket. munged checks that its files are private to it.
    [[ -s "$dir/munge.key" ]] || dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
    chmod 600 "$dir/munge.key"
    munged --force --key-file="$dir/munge.key" --socket="$dir/munge.sock" \
        --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed"

    local host node ctld_port slurmd_port
    host=$(hostname -s)
    # `slurmd -C` reports this machine's CPUs and memory in slurm.conf syntax.
    node=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=bidsharmony
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
$node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$dir/slurm.conf"
    slurmd -f "$dir/slurm.conf"
    # Ready when the node accepts jobs.
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "local_cluster: ready; export SLURM_CONF=$dir/slurm.conf"
            return 0
        fi
        sleep 0.5
    done
    echo "local_cluster: the node did not come up; see $dir/log/" >&2
    tail -n 5 "$dir"/log/*.log >&2 || true
    stop
    exit 1
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: local_cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
