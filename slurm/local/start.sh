#!/usr/bin/env bash
# slurm/local/start.sh - start a throw-away, single-node SLURM cluster on this machine.
#
# Debian 12 (bookworm), run as root, no systemd needed.  Everything lives under
# $SLURM_LOCAL_DIR (default /tmp/local-slurm); every start wipes the old state
# and begins with job id 1 and an empty accounting database.
#
#   munged     own key + socket under $DIR/munge     (no TCP port)
#   mariadbd   own datadir + socket under $DIR/db     (no TCP port)  [accounting only]
#   slurmdbd   TCP 6819                                                [accounting only]
#   slurmctld  TCP 6817
#   slurmd     TCP 6818, node "localhost" (NodeAddr 127.0.0.1)
#
# The daemons detach (setsid, stdio to log files) so they don't keep a CI step's
# pipes open.  Afterwards:   source $DIR/slurm.env   (exports SLURM_CONF), or rely on
# the /etc/slurm/slurm.conf symlink this script creates when that path is free.
#
# Environment knobs:
#   SLURM_LOCAL_DIR=/tmp/local-slurm   where everything goes
#   SLURM_ACCOUNTING=1                 1 = slurmdbd+MariaDB (sacct works; submitit needs
#                                      it to notice jobs that die without a result);
#                                      0 = no accounting (lighter; sacct fails)
#   SLURM_CGROUPS=0                    1 = proctrack/cgroup + task/cgroup (memory limits enforced,
#                                      OOM kills; works on this cgroup-v1 VM); 0 = linuxproc, no limits
#   SLURM_LINK_ETC=1                   symlink /etc/slurm/slurm.conf -> our config
#   SLURMCTLD_PORT=6817 SLURMD_PORT=6818 SLURMDBD_PORT=6819
#   SLURM_CRED_EXPIRE=5                seconds; a requeued job waits this (+1) before it may restart
#   SLURM_START_TIMEOUT=90             seconds to wait for each daemon / the node
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/local-slurm}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
LINK_ETC=${SLURM_LINK_ETC:-1}
CGROUPS=${SLURM_CGROUPS:-0}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
DBD_PORT=${SLURMDBD_PORT:-6819}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-5}
TIMEOUT=${SLURM_START_TIMEOUT:-90}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[slurm-start %3d.%01ds] %s\n' $((ms/1000)) $((ms%1000/100)) "$*"; }
die() { log "ERROR: $*"; for f in "$DIR"/log/*.log; do [ -f "$f" ] && { echo "--- tail $f"; tail -n 20 "$f"; }; done; exit 1; }
WATCH_PIDFILE=""   # when set, wait_for gives up at once if that daemon has died
wait_for() {  # wait_for DESCRIPTION CMD...
  local what=$1; shift; local end=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$end" ] && die "timed out after ${TIMEOUT}s waiting for $what"
    if [ -n "$WATCH_PIDFILE" ] && [ -s "$WATCH_PIDFILE" ] && ! kill -0 "$(cat "$WATCH_PIDFILE")" 2>/dev/null; then
      die "$what: the daemon died (pid file $WATCH_PIDFILE)"
    fi
    sleep 0.3
  done
}
port_listening() {  # is something listening on TCP port $1 (any address)?
  if command -v ss >/dev/null; then ss -Hltn "sport = :$1" | grep -q .
  else (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; fi
}
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }

# ---------------------------------------------------------------- 1. packages
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCOUNTING" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
MISSING=""
for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || MISSING="$MISSING $p"; done
if [ -n "$MISSING" ]; then
  log "installing:$MISSING"
  # keep package scripts from starting system services (no systemd here anyway)
  POLICY_ADDED=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; POLICY_ADDED=1; fi
  export DEBIAN_FRONTEND=noninteractive
  APT_LOG=$(mktemp /tmp/start_local_slurm-apt.XXXXXX)
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends $MISSING; } >"$APT_LOG" 2>&1; then
    [ "$POLICY_ADDED" = 1 ] && rm -f /usr/sbin/policy-rc.d
    tail -n 30 "$APT_LOG"; die "apt-get failed (full log: $APT_LOG)"
  fi
  [ "$POLICY_ADDED" = 1 ] && rm -f /usr/sbin/policy-rc.d
  rm -f "$APT_LOG"
  log "packages installed"
fi

# ---------------------------------------------------------------- 2. clean slate
if [ -d "$DIR" ]; then
  log "previous instance found in $DIR: stopping it and wiping its state"
  SLURM_LOCAL_DIR="$DIR" bash "$HERE/stop.sh" >/dev/null 2>&1 || true
  rm -rf "$DIR"
fi
for port in $CTLD_PORT $SLURMD_PORT $([ "$ACCOUNTING" = 1 ] && echo $DBD_PORT); do
  port_listening "$port" && die "TCP port $port is already in use (another slurm?): $(ss -Hltnp "sport = :$port" 2>/dev/null)"
done
mkdir -p "$DIR"/{etc,log,state,spool,munge}
chmod 755 "$DIR" "$DIR/munge"          # munged insists its socket dir is world-executable

# ---------------------------------------------------------------- 3. munge
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
MUNGE_SOCKET="$DIR/munge/munge.sock"
/usr/sbin/munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
  --seed-file="$DIR/munge/munged.seed" </dev/null >/dev/null 2>&1 || die "munged failed to start"
wait_for "munged" bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
log "munged up"

# ---------------------------------------------------------------- 4. slurm.conf
# hardware as slurmd itself sees it (RealMemory a little lower so the node is never INVAL)
HW=$(slurmd -C | head -1)
hw() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(hw CPUs); BOARDS=$(hw Boards); SPB=$(hw SocketsPerBoard); CPS=$(hw CoresPerSocket); TPC=$(hw ThreadsPerCore)
MEM=$(( $(hw RealMemory) - 256 ))
if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# with auth/munge this is the munge socket used to talk to slurmdbd (default: /run/munge/munge.socket.2)
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
if [ "$CGROUPS" = 1 ]; then
  TRACK="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity"
  printf 'CgroupPlugin=autodetect\nConstrainCores=yes\nConstrainRAMSpace=yes\n' > "$DIR/etc/cgroup.conf"
else
  TRACK="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none"
fi
cat > "$DIR/etc/slurm.conf" <<EOF
# generated by slurm/local/start.sh - single node, loopback only
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$TRACK
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
$ACCT
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
# preemption: a job in partition "urgent" requeues jobs of "debug", and the victim gets its
# --signal (e.g. submitit's USR2) right away instead of only SIGTERM
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SPB CoresPerSocket=$CPS ThreadsPerCore=$TPC RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
export SLURM_CONF="$DIR/etc/slurm.conf"
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" > "$DIR/slurm.env"

# ---------------------------------------------------------------- 5. accounting (MariaDB + slurmdbd)
if [ "$ACCOUNTING" = 1 ]; then
  mkdir -p "$DIR/db"
  DB_SOCKET="$DIR/db/mysqld.sock"
  mariadb-install-db --no-defaults --user=root --datadir="$DIR/db/data" \
    --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
  setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DIR/db/data" \
    --socket="$DB_SOCKET" --pid-file="$DIR/db/mariadbd.pid" --skip-networking \
    --innodb-buffer-pool-size=64M --log-error="$DIR/log/mariadbd.log" </dev/null >/dev/null 2>&1 &
  WATCH_PIDFILE="$DIR/db/mariadbd.pid" wait_for "mariadbd" mariadb --no-defaults -S "$DB_SOCKET" -u root -e "select 1"
  mariadb --no-defaults -S "$DB_SOCKET" -u root -e "CREATE DATABASE slurm_acct_db;
    CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  log "mariadbd up"
  # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF (it has no -f option)
  cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  # the mysql client library takes its socket path from MYSQL_UNIX_PORT
  MYSQL_UNIX_PORT="$DB_SOCKET" setsid /usr/sbin/slurmdbd </dev/null >"$DIR/log/slurmdbd.stdout" 2>&1 \
    || die "slurmdbd failed to start"
  WATCH_PIDFILE="$DIR/slurmdbd.pid" wait_for "slurmdbd on port $DBD_PORT" port_listening "$DBD_PORT"
  log "slurmdbd up"
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
setsid /usr/sbin/slurmctld -f "$SLURM_CONF" </dev/null >"$DIR/log/slurmctld.stdout" 2>&1 || die "slurmctld failed to start"
WATCH_PIDFILE="$DIR/slurmctld.pid" wait_for "slurmctld" bash -c "scontrol ping | grep -q UP"
log "slurmctld up"
# hostname-independent: this node is called "localhost" whatever the machine is called
setsid /usr/sbin/slurmd -N localhost -f "$SLURM_CONF" </dev/null >"$DIR/log/slurmd.stdout" 2>&1 || die "slurmd failed to start"
WATCH_PIDFILE="$DIR/slurmd.pid" wait_for "node localhost to become idle" bash -c '[ "$(sinfo -h -n localhost -p debug -o %T)" = idle ]'
log "slurmd up, node idle"

if [ "$ACCOUNTING" = 1 ]; then
  # slurmctld registers the cluster in slurmdbd by itself; wait until sacct answers
  wait_for "sacct" sacct -n -X -S now-1minutes
fi

# ---------------------------------------------------------------- 7. client config
if [ "$LINK_ETC" = 1 ]; then
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
  else
    log "WARNING: /etc/slurm/slurm.conf is a real file; not touching it - export SLURM_CONF=$SLURM_CONF"
  fi
fi

sinfo
log "cluster ready: source $DIR/slurm.env (SLURM_CONF=$SLURM_CONF)"
