#!/usr/bin/env bash
# slurm/local/stop.sh - stop the cluster started by slurm/local/start.sh.
# Cancels all jobs, then stops slurmd, slurmctld, slurmdbd, mariadbd, munged by the PIDs in
# their pid files (each checked against the expected program name), removes the
# /etc/slurm/slurm.conf symlink if it points into $SLURM_LOCAL_DIR.
# Logs and state stay in $SLURM_LOCAL_DIR unless called with --purge (the next start wipes them anyway).
# Safe to run when nothing is running; always exits 0 unless a daemon refuses to die.
set -uo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/local-slurm}
export SLURM_CONF="$DIR/etc/slurm.conf"
PURGE=0; [ "${1:-}" = --purge ] && PURGE=1
T0=$(date +%s%N)
log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[slurm-stop %3d.%01ds] %s\n' $((ms/1000)) $((ms%1000/100)) "$*"; }

# pid_of PIDFILE COMM -> prints the pid if it is alive and really is COMM
pid_of() {
  local pf=$1 comm=$2 pid
  [ -s "$pf" ] || return 1
  pid=$(tr -dc '0-9' < "$pf")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat /proc/$pid/comm)" = "$comm" ] && echo "$pid"
}
stop_daemons() {  # stop_daemons PIDFILE:COMM ... - SIGTERM all of them, wait (SIGKILL after 20s)
  local spec pf comm pid pids="" names="" rc=0
  for spec in "$@"; do
    pf=${spec%%:*}; comm=${spec##*:}
    pid=$(pid_of "$pf" "$comm") || continue
    kill -TERM "$pid" 2>/dev/null && { pids="$pids $pid"; names="$names $comm($pid)"; }
  done
  [ -z "$pids" ] && return 0
  for _ in $(seq 1 100); do
    local alive=""; for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && { log "stopped$names"; return 0; }
    sleep 0.2
  done
  log "still alive after SIGTERM+20s:$alive - sending SIGKILL"; kill -KILL $alive 2>/dev/null; sleep 0.5
  for pid in $alive; do kill -0 "$pid" 2>/dev/null && { log "ERROR: could not stop pid $pid"; rc=1; }; done
  return $rc
}

rc=0
if [ -f "$SLURM_CONF" ] && pid_of "$DIR/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 100); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.3; done
  fi
fi
# slurm daemons first (slurmctld saves its state, slurmdbd flushes), then what they depend on
stop_daemons "$DIR/slurmd.pid:slurmd" "$DIR/slurmctld.pid:slurmctld" "$DIR/slurmdbd.pid:slurmdbd" || rc=1
stop_daemons "$DIR/db/mariadbd.pid:mariadbd" "$DIR/munge/munged.pid:munged" || rc=1
rm -f "$DIR"/slurmd.pid "$DIR"/slurmctld.pid "$DIR"/slurmdbd.pid "$DIR"/db/mariadbd.pid "$DIR"/munge/munged.pid

# cgroup mode (SLURM_CGROUPS=1) leaves empty cgroup directories behind; remove them
for d in /sys/fs/cgroup/*/slurm_localhost /sys/fs/cgroup/slurm_localhost; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
done
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
  rm -f /etc/slurm/slurm.conf; log "removed /etc/slurm/slurm.conf symlink"
fi
[ "$PURGE" = 1 ] && { rm -rf "$DIR"; log "removed $DIR"; }
exit $rc
