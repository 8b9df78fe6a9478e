#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, then the sweep's checks on it
# (docs/SWEEPS.md, "Checked on a real cluster"): python -m tools.sweep --backend slurm with jobs
# cancelled while running and while queued, a run reaching --time, a job killed with SIGKILL,
# re-runs with and without --wait, a wrong partition, a job that can never start; every run must
# end finished with the accuracies of the local backend.
#
#   bash scripts/slurm_localhost.sh [WORK]     # as root, on Debian or Ubuntu
#
# It installs slurm-wlm, munge, slurmdbd and mariadb-server with apt-get (unless installed), and
# starts, each with its own configuration, state and ports under WORK (default: a new folder in
# /tmp): munged, MariaDB, slurmdbd (so that sacct works), slurmctld, and slurmd in its own UTS
# namespace as host "node1" (so that the jobs run on "another host" than the sweep), with
# proctrack/linuxproc and task/none. On exit, also on failure or Ctrl-C, it stops exactly the
# daemons it started, by pid. Besides the packages, nothing of the system is read or changed
# (services that apt-get may start for the packages are left as they are and not used). WORK is
# kept: the cluster's logs and database, the sweep's outputs. Not run by CI (no Slurm there):
# tests/test_sweep_slurm.py has the same answers as stand-in commands.
#
# env: PYTHON (python3), SLURM_PORT (16817: slurmctld; slurmd, slurmdbd and MariaDB take the
#      next three), CHECKS (all: the checks to run, see python -m tools.sweep.cluster_checks -h),
#      KEEP=1 (leave the cluster up until Enter is pressed, e.g. to try squeue and sacct).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PORT=${SLURM_PORT:-16817}
WORK=$(realpath "${1:-$(mktemp -d /tmp/slurm_localhost.XXXXXX)}")
CLUSTER=sweepcheck
NODE=node1

if [[ $(id -u) != 0 ]]; then
    echo "error: run as root (apt-get, munged and the Slurm daemons need it)" >&2
    exit 1
fi
for port in "$PORT" $((PORT + 1)) $((PORT + 2)) $((PORT + 3)); do
    if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "error: port $port is in use; set SLURM_PORT to the first of four free ports" >&2
        exit 1
    fi
done
for daemon in slurmctld slurmd slurmdbd munged mariadbd; do
    if ! command -v "$daemon" >/dev/null; then
        apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server
        break
    fi
done
echo "# $(slurmctld -V), $(mariadbd --version | cut -d' ' -f2-4), state in $WORK"

# The daemons this script started (name -> pid), stopped in reverse order on exit.
declare -a NAMES=() PIDS=()
stop_daemons() {
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "# stopped ${NAMES[i]} (pid $pid)"
    done
}
trap stop_daemons EXIT
trap 'exit 130' INT TERM
started() {  # started NAME PID
    NAMES+=("$1")
    PIDS+=("$2")
}
wait_for() {  # wait_for WHAT COMMAND...: up to 60 s
    for _ in $(seq 120); do
        timeout 10 "${@:2}" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "error: $1 did not come up; logs in $WORK/log" >&2
    exit 1
}

mkdir -p "$WORK"/{etc,log,munge,mysql,spool/ctld,spool/slurmd}

# munge, with its own key and socket.
if [[ ! -f $WORK/munge/munge.key ]]; then
    head -c 1024 /dev/urandom >"$WORK/munge/munge.key"
    chmod 400 "$WORK/munge/munge.key"
fi
munged --foreground --force --key-file="$WORK/munge/munge.key" --socket="$WORK/munge/socket" \
    --pid-file="$WORK/munge/munged.pid" --seed-file="$WORK/munge/seed" \
    --log-file="$WORK/log/munged.log" 2>>"$WORK/log/munged.out" &
started munged $!
wait_for munged test -S "$WORK/munge/socket"

# MariaDB for slurmdbd, on 127.0.0.1 only.
if [[ ! -d $WORK/mysql/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$WORK/mysql" --user=root --auth-root-authentication-method=socket \
        >"$WORK/log/mariadb-install.log" 2>&1
fi
mariadbd --no-defaults --datadir="$WORK/mysql" --user=root --bind-address=127.0.0.1 \
    --port=$((PORT + 3)) --socket="$WORK/mysql/socket" --pid-file="$WORK/mysql/pid" \
    --log-error="$WORK/log/mariadb.log" --innodb-lock-wait-timeout=900 2>>"$WORK/log/mariadb.out" &
started mariadbd $!
wait_for MariaDB mariadb --no-defaults --socket="$WORK/mysql/socket" -u root -e "select 1"
mariadb --no-defaults --socket="$WORK/mysql/socket" -u root -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

AUTH="AuthType=auth/munge
AuthInfo=socket=$WORK/munge/socket,cred_expire=10"
cat >"$WORK/etc/slurmdbd.conf" <<EOF
$AUTH
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$WORK/log/slurmdbd.log
PidFile=$WORK/spool/slurmdbd.pid
EOF
chmod 600 "$WORK/etc/slurmdbd.conf"

CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ { print int($2 / 1024 * 0.8) }' /proc/meminfo)
cat >"$WORK/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
$AUTH
StateSaveLocation=$WORK/spool/ctld
SlurmdSpoolDir=$WORK/spool/slurmd/%n
SlurmctldPidFile=$WORK/spool/slurmctld.pid
SlurmdPidFile=$WORK/spool/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
# The munge socket of the connections to slurmdbd (AuthInfo's is not used for them).
AccountingStoragePass=$WORK/munge/socket
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
MpiDefault=none
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# slurmdbd reads slurmdbd.conf beside $SLURM_CONF.
export SLURM_CONF=$WORK/etc/slurm.conf

slurmdbd -D >>"$WORK/log/slurmdbd.out" 2>&1 &
started slurmdbd $!
wait_for slurmdbd sacctmgr -i show cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
slurmctld -D -f "$SLURM_CONF" >>"$WORK/log/slurmctld.out" 2>&1 &
started slurmctld $!
wait_for slurmctld scontrol ping
# slurmd in a UTS namespace of its own, as host node1: the jobs' socket.gethostname() is
# node1, not this machine's name, as on a cluster where the sweep runs on a login node.
unshare --uts sh -c "hostname $NODE && exec slurmd -D -N $NODE -f '$SLURM_CONF'" \
    >>"$WORK/log/slurmd.out" 2>&1 &
started slurmd $!
wait_for "node $NODE" sh -c "sinfo -h -n $NODE -o %t | grep -qx idle"
sinfo
echo "# up: munged, MariaDB, slurmdbd, slurmctld, slurmd ($NODE, $CPUS CPUs); SLURM_CONF=$SLURM_CONF"

if [[ ${KEEP:-0} == 1 ]]; then
    read -r -p "the cluster is up (export SLURM_CONF=$SLURM_CONF); press Enter to stop it " _
    exit 0
fi
"$PYTHON" -m tools.sweep.cluster_checks --work "$WORK" --python "$PYTHON" ${CHECKS:+--checks $CHECKS}
