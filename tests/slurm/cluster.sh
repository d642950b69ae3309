#!/usr/bin/env bash
# A real, throw-away SLURM cluster on this host for the SLURM system tests (run as root).
#   tests/slurm/cluster.sh start [--nodes 1|2] [--preempt] [--cpus N] [--restart]
#                                      install + start, wait until idle, print `export SLURM_CONF=...`
#                                      (--cpus: CPUs each node declares, default the machine's)
#   tests/slurm/cluster.sh stop      stop the daemons this script started (by pid file)
#   tests/slurm/cluster.sh status    print sinfo, or "not running"
# Daemons: munged, mariadbd (TCP 127.0.0.1:13306), slurmdbd, slurmctld, slurmd (one node named
# after the host, or n1/n2 on ports 17001/17002 with the CPUs and memory split between them).
# Everything lives under $SLURM_STATE_DIR (default /tmp/distrib-slurm), the MariaDB datadir too,
# so wiping that directory also wipes accounting (job ids restart at 1). Only /run/munge and the
# packages' own files live outside it. All commands are idempotent. `start` with other options
# than the running cluster's refuses (another run may be using it): stop it first, give
# --restart, or use a state directory of your own (SLURM_STATE_DIR=...).
set -euo pipefail

S=${SLURM_STATE_DIR:-/tmp/distrib-slurm}
CONF=$S/etc/slurm.conf
CLUSTER=distrib
DB_PORT=13306
HOST=$(hostname -s)
export SLURM_CONF=$CONF

die() { echo "cluster.sh: $*" >&2; exit 1; }

# running PIDFILE NAME: is the process in PIDFILE alive and called NAME (guards against pid reuse)?
running() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# wait_for SECONDS COMMAND...: retry COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
    local n=$(($1 * 2)); shift
    until "$@" >/dev/null 2>&1; do
        n=$((n - 1)); [ "$n" -gt 0 ] || return 1; sleep 0.5
    done
}

install_packages() {
    local missing=() cmd
    for cmd in slurmctld:slurm-wlm slurmd:slurm-wlm munged:munge slurmdbd:slurmdbd mariadbd:mariadb-server; do
        command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("${cmd#*:}")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "cluster.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# node_lines NODES CPUS: NodeName lines with this machine's memory (split between two nodes)
# and its CPUs, or CPUS per node when given (more than the machine has: slurmd is told to
# trust the configuration, so a 2-core machine can hold two 2-task jobs per node).
node_lines() {
    local cpus mem
    cpus=$(nproc); mem=$(free -m | awk '/^Mem:/ {print $2}')
    [ "$2" = 0 ] || echo "SlurmdParameters=config_overrides"
    if [ "$1" = 1 ]; then
        [ "$2" = 0 ] || cpus=$2
        echo "NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        echo "SlurmdPort=6818"
    else
        cpus=$((cpus / 2 > 0 ? cpus / 2 : 1)); mem=$((mem / 2))
        [ "$2" = 0 ] || cpus=$2
        echo "NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        echo "NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    fi
}

# write_conf NODES PREEMPT CPUS: slurm.conf to stdout.
write_conf() {
    cat <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerParameters=bf_interval=5,sched_interval=5
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/spool/%n
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd-%n.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd-%n.log
SlurmctldPort=6817
EOF
    node_lines "$1" "$3"
    if [ "$2" = 1 ]; then
        echo "PreemptType=preempt/partition_prio"
        echo "PreemptMode=REQUEUE"
        echo "PartitionName=debug Nodes=ALL Default=YES PreemptMode=OFF MaxTime=INFINITE State=UP"
        echo "PartitionName=low Nodes=ALL PriorityTier=1 GraceTime=20 PreemptMode=REQUEUE MaxTime=INFINITE State=UP"
        echo "PartitionName=high Nodes=ALL PriorityTier=10 MaxTime=INFINITE State=UP"
    else
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    fi
}

write_dbd_conf() {
    (umask 077; cat >"$S/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$S/run/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$S/etc/slurmdbd.conf"
}

start_munged() {
    running "$S/run/munged.pid" munged && return 0
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 "$S/munge"
    runuser -u munge -- munged --pid-file="$S/munge/munged.pid" --log-file="$S/munge/munged.log" \
        --seed-file="$S/munge/munged.seed"
    wait_for 10 test -s "$S/munge/munged.pid" || die "munged did not start"
    ln -sf "$S/munge/munged.pid" "$S/run/munged.pid"
}

start_mariadb() {
    local sock=$S/mysql.sock fresh=0
    if [ ! -d "$S/mysql/mysql" ]; then
        fresh=1
        rm -rf "$S/mysql"
        mariadb-install-db --no-defaults --user=root --datadir="$S/mysql" --skip-test-db \
            --auth-root-authentication-method=socket >"$S/log/mariadb-install.out" 2>&1 \
            || { tail -20 "$S/log/mariadb-install.out" >&2; die "mariadb-install-db failed"; }
    fi
    if ! running "$S/run/mariadb.pid" mariadbd; then
        setsid mariadbd --no-defaults --user=root --datadir="$S/mysql" --socket="$sock" \
            --port=$DB_PORT --bind-address=127.0.0.1 --pid-file="$S/run/mariadb.pid" \
            --log-error="$S/log/mariadb.log" --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        wait_for 30 mariadb-admin --socket="$sock" ping || die "mariadb did not start"
    fi
    if [ "$fresh" = 1 ]; then  # fresh state dir: fresh accounting database, job ids restart at 1
        mariadb --socket="$sock" -uroot <<EOF
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE DATABASE slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    fi
}

start_slurmdbd() {
    if ! running "$S/run/slurmdbd.pid" slurmdbd; then
        slurmdbd  # finds slurmdbd.conf next to $SLURM_CONF
    fi
    wait_for 30 sacctmgr -n list cluster || die "slurmdbd did not answer"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    running "$S/run/slurmctld.pid" slurmctld || slurmctld -i -f "$CONF"
}

start_slurmd() {
    local node
    if [ "$1" = 1 ]; then
        mkdir -p "$S/spool/$HOST"
        running "$S/run/slurmd-$HOST.pid" slurmd || slurmd -f "$CONF"
    else
        for node in n1 n2; do
            mkdir -p "$S/spool/$node"
            running "$S/run/slurmd-$node.pid" slurmd || slurmd -f "$CONF" -N "$node"
        done
    fi
}

# all_idle NODES: sinfo lists NODES nodes, all idle.
all_idle() {
    local states
    states=$(sinfo -h -N -o '%N %t' | sort -u) || return 1
    [ "$(wc -l <<<"$states")" = "$1" ] && ! grep -qv ' idle$' <<<"$states"
}

show_logs() {
    local f
    for f in "$S"/log/*.log "$S/munge/munged.log"; do
        [ -f "$f" ] && { echo "=== $f"; tail -n 20 "$f"; }
    done >&2
}

# stop_group NAME PIDFILE...: TERM the live daemons in PIDFILEs, wait (30 s, then KILL) for them.
stop_group() {
    local name=$1 f pid pids=(); shift
    for f in "$@"; do
        running "$f" "$name" || continue
        pid=$(cat "$f"); kill "$pid" 2>/dev/null || true; pids+=("$pid"); stopped=$((stopped + 1))
    done
    for pid in "${pids[@]}"; do
        wait_for 30 sh -c "! kill -0 $pid" && continue
        echo "cluster.sh: $name ($pid) ignored TERM, killing" >&2; kill -9 "$pid" 2>/dev/null || true
    done
}

# Stop in reverse start order: slurmctld flushes to slurmdbd, slurmdbd to mariadb.
stop_all() {
    local stopped=0
    stop_group slurmd "$S"/run/slurmd-*.pid
    stop_group slurmctld "$S/run/slurmctld.pid"
    stop_group slurmdbd "$S/run/slurmdbd.pid"
    stop_group mariadbd "$S/run/mariadb.pid"
    stop_group munged "$S/run/munged.pid"
    echo "stopped $stopped daemon(s)"
}

cmd_start() {
    local nodes=1 preempt=0 cpus=0 restart=0 options="$*"
    while [ $# -gt 0 ]; do
        case $1 in
            --nodes) nodes=${2:-}; shift 2 ;;
            --cpus) cpus=${2:-}; shift 2 ;;
            --preempt) preempt=1; shift ;;
            --restart) restart=1; shift ;;
            *) die "unknown option $1" ;;
        esac
    done
    [ "$nodes" = 1 ] || [ "$nodes" = 2 ] || die "--nodes must be 1 or 2"
    [ "$(id -u)" = 0 ] || die "run as root"
    install_packages
    mkdir -p "$S"/{etc,ctld,spool,run,log}
    [[ "$cpus" =~ ^[0-9]+$ ]] || die "--cpus must be a number of CPUs per node"
    write_conf "$nodes" "$preempt" "$cpus" >"$S/etc/slurm.conf.new"
    if ! cmp -s "$S/etc/slurm.conf.new" "$CONF"; then
        if running "$S/run/slurmctld.pid" slurmctld && [ "$restart" = 0 ]; then
            rm -f "$S/etc/slurm.conf.new"
            die "a cluster with other options runs from $S (started with: $(cat "$S/etc/options" 2>/dev/null || echo '?')); stop it first ($0 stop), pass --restart, or use SLURM_STATE_DIR=<a directory of your own>"
        fi
        stop_all >/dev/null  # configuration changed: restart everything with the new one
        mv "$S/etc/slurm.conf.new" "$CONF"
        echo "${options/--restart/}" >"$S/etc/options"
    else
        rm -f "$S/etc/slurm.conf.new"
        [ -f "$S/etc/options" ] || echo "${options/--restart/}" >"$S/etc/options"
    fi
    write_dbd_conf
    start_munged; start_mariadb; start_slurmdbd; start_slurmctld; start_slurmd "$nodes"
    if ! wait_for 60 all_idle "$nodes"; then
        sinfo -N >&2 || true; show_logs; die "nodes not idle after 60 s"
    fi
    echo "export SLURM_CONF=$CONF"
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) stop_all ;;
    status) if running "$S/run/slurmctld.pid" slurmctld; then sinfo; else echo "not running"; fi ;;
    *) die "usage: $0 start [--nodes 1|2] [--preempt] [--cpus N] [--restart] | stop | status" ;;
esac
