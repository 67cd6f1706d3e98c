#!/usr/bin/env bash
# A one-node Slurm on this machine, for trying MATRIX_EXECUTOR=slurm and for the tests:
#   scripts/slurm_local.sh start    (make slurm-local)       write the configuration, start
#                                    munged, MariaDB, slurmdbd, slurmctld and slurmd, wait
#                                    until sinfo shows the node idle
#   scripts/slurm_local.sh stop     (make slurm-local-stop)  stop what start started
#   scripts/slurm_local.sh status   what runs
# Needs root and the Debian packages slurmctld slurmd slurm-client slurmdbd munge
# mariadb-server (apt-get install -y --no-install-recommends ...). Slurm 22.05 as Debian 12
# ships it; no systemd, no cgroups (proctrack/linuxproc, task/none).
#
# One node with this machine's CPUs and memory (slurmd -C), partition "debug" (the default)
# and "urgent" (higher priority tier: its jobs preempt debug's, which are requeued), job
# accounting through slurmdbd over its own MariaDB, so that sacct answers as on a cluster.
# Everything it writes (configuration, state, logs, the database) is under
# $KMATRIX_SLURM_DIR (default /var/tmp/kmatrix-slurm); only loopback addresses. The clients
# find the configuration through SLURM_CONF=$KMATRIX_SLURM_DIR/slurm.conf, and through
# /etc/slurm/slurm.conf, linked to it when that file does not exist.
# Ports: KMATRIX_SLURM_DB_PORT (MariaDB, 3307), Slurm's own defaults 6817-6819.
set -euo pipefail

DIR=${KMATRIX_SLURM_DIR:-/var/tmp/kmatrix-slurm}
DB_PORT=${KMATRIX_SLURM_DB_PORT:-3307}
CLUSTER=kmatrix
HOST=$(hostname -s)
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
WAIT_S=${KMATRIX_SLURM_WAIT_S:-120}

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the process it names runs
    local pid
    pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

wait_for() {  # wait_for WHAT COMMAND...: retry COMMAND until it succeeds or WAIT_S pass
    local what=$1; shift
    local end=$((SECONDS + WAIT_S))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "$what did not come up within ${WAIT_S} s (logs: $DIR/log)"
        sleep 1
    done
}

check_install() {
    [[ $(id -u) == 0 ]] || die "run as root (it starts munged, MariaDB and the Slurm daemons)"
    local missing=()
    for tool in munged mysqld_safe mariadb-install-db slurmdbd slurmctld slurmd sinfo sacctmgr; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || die "${missing[*]} not found: apt-get install -y \
--no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
}

write_config() {
    mkdir -p "$DIR"/{state,spool,log,run}
    chmod 755 "$DIR"  # the mysql user reaches its data below; secrets are 600
    local node cpus_line
    node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=... RealMemory=...
    cpus_line=${node#NodeName=* }
    [[ -s $DIR/db.pass ]] || { (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DIR/db.pass"); }
    cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm_local.sh: one node, this machine. Loopback only.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=30
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 $cpus_line State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$HOST MaxTime=INFINITE State=UP PriorityTier=2
EOF
    mv "$CONF.tmp" "$CONF"
    (umask 077; cat >"$DIR/slurmdbd.conf.tmp" <<EOF
# Written by scripts/slurm_local.sh
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$DIR/db.pass")
StorageLoc=slurm_acct_db
EOF
    )
    mv "$DIR/slurmdbd.conf.tmp" "$DIR/slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF
    if [[ ! -e /etc/slurm/slurm.conf ]]; then
        mkdir -p /etc/slurm
        ln -s "$CONF" /etc/slurm/slurm.conf
        touch "$DIR/run/etc-link"
    fi
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running"; return
    fi
    [[ -s /etc/munge/munge.key ]] || { say "creating /etc/munge/munge.key"; mungekey --create; }
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    runuser -u munge -- munged
    touch "$DIR/run/munged.ours"
    wait_for munged sh -c 'munge -n </dev/null | unmunge'
    say "munged started"
}

mysql_admin() {  # mysql_admin ARGS...: the mariadb client as root over our socket
    mariadb --socket="$DIR/mysql/mysqld.sock" -u root "$@"
}

start_db() {
    if alive "$DIR/mysql/mysqld.pid"; then say "MariaDB already running"; return; fi
    if [[ ! -d $DIR/mysql/data/mysql ]]; then
        mkdir -p "$DIR/mysql/data"
        chown -R mysql:mysql "$DIR/mysql"
        mariadb-install-db --user=mysql --datadir="$DIR/mysql/data" \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)"
    fi
    chown mysql:mysql "$DIR/mysql"
    # mysqld_safe keeps the server running; setsid: it outlives this shell and `make`.
    setsid mysqld_safe --no-defaults --user=mysql --datadir="$DIR/mysql/data" \
        --socket="$DIR/mysql/mysqld.sock" --pid-file="$DIR/mysql/mysqld.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --log-error="$DIR/mysql/mariadb.log" \
        </dev/null >/dev/null 2>&1 &
    wait_for MariaDB mysql_admin -e "SELECT 1"
    local pass
    pass=$(cat "$DIR/db.pass")
    mysql_admin <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
    say "MariaDB started on 127.0.0.1:$DB_PORT"
}

start_dbd() {
    if alive "$DIR/run/slurmdbd.pid"; then say "slurmdbd already running"; else
        slurmdbd
        wait_for slurmdbd sacctmgr -n list cluster
        say "slurmdbd started"
    fi
    if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=Cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        say "cluster $CLUSTER added to the accounting database"
    fi
}

start_slurm() {
    if alive "$DIR/run/slurmctld.pid"; then say "slurmctld already running"; else
        slurmctld
        wait_for slurmctld scontrol ping
        say "slurmctld started"
    fi
    if alive "$DIR/run/slurmd.pid"; then say "slurmd already running"; else
        slurmd
        say "slurmd started"
    fi
    local end=$((SECONDS + WAIT_S)) state
    while :; do
        state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1)
        [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
        if [[ $state == down* || $state == drain* ]]; then
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        fi
        ((SECONDS < end)) || die "node $HOST is '${state:-unknown}', not idle, after ${WAIT_S} s \
(logs: $DIR/log; sinfo -R says why)"
        sleep 1
    done
    say "node $HOST is $state"
}

start() {
    check_install
    write_config
    start_munge
    start_db
    start_dbd
    start_slurm
    sinfo
    say "ready; clients read $CONF (export SLURM_CONF=$CONF where /etc/slurm/slurm.conf is another cluster's)"
}

stop_pid() {  # stop_pid NAME PIDFILE
    if alive "$2"; then
        kill "$(cat "$2")"
        local end=$((SECONDS + 60))
        while alive "$2" && ((SECONDS < end)); do sleep 0.5; done
        alive "$2" && die "$1 (pid $(cat "$2")) did not stop"
        say "$1 stopped"
    else
        say "$1 not running"
    fi
}

stop() {
    [[ -d $DIR ]] || { say "nothing to stop ($DIR does not exist)"; return; }
    stop_pid slurmd "$DIR/run/slurmd.pid"
    stop_pid slurmctld "$DIR/run/slurmctld.pid"
    stop_pid slurmdbd "$DIR/run/slurmdbd.pid"
    if alive "$DIR/mysql/mysqld.pid"; then
        mysqladmin --socket="$DIR/mysql/mysqld.sock" -u root shutdown
        local end=$((SECONDS + 60))
        while alive "$DIR/mysql/mysqld.pid" && ((SECONDS < end)); do sleep 0.5; done
        say "MariaDB stopped"
    else
        say "MariaDB not running"
    fi
    if [[ -e $DIR/run/munged.ours ]]; then
        stop_pid munged /run/munge/munged.pid
        rm -f "$DIR/run/munged.ours"
    fi
    if [[ -e $DIR/run/etc-link && -L /etc/slurm/slurm.conf ]]; then
        rm -f /etc/slurm/slurm.conf "$DIR/run/etc-link"
    fi
}

status() {
    local name pid
    for name in slurmd slurmctld slurmdbd mysqld; do
        pid=$DIR/run/$name.pid; [[ $name == mysqld ]] && pid=$DIR/mysql/mysqld.pid
        if alive "$pid"; then echo "$name: running (pid $(cat "$pid"))"
        else echo "$name: not running"; fi
    done
    sinfo 2>/dev/null || true
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "unknown command '$1': start, stop or status" ;;
esac
