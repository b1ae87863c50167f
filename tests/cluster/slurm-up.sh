#!/usr/bin/env bash
# slurm-up.sh - install (Debian 12 packages), configure and start a local Slurm 22.05 test cluster
# that mimics Quest and KLC at once, as root and without systemd. Idempotent: a re-run with the
# same config only checks the daemons; a changed config restarts them.
#
# Nodes/partitions: cluster.conf next to this script; GPUs: gres.conf next to this script.
# Every NodeName gets its own slurmd on this machine (`slurmd -N NAME`, NodeAddr=127.0.0.1 and a
# distinct Port=), which Debian's build supports as is.
# Accounting: none (no slurmdbd, so no `sacct`); finished jobs go to jobcomp/filetxt and stay
# visible to `scontrol show job` / `squeue` for MinJobAge (1 h).
# Env: SLURM_UP_WAIT_S  how long to wait for all nodes to become usable (default 60).
# Stop with slurm-down.sh (--purge also removes state, logs and the generated config).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER_CONF="$HERE/cluster.conf"
GRES_CONF="$HERE/gres.conf"
WAIT_S="${SLURM_UP_WAIT_S:-60}"
CLUSTER=kittest
CONF_DIR=/etc/slurm
STATE=/var/spool/slurm-mini
LOG=/var/log/slurm-mini
CTLD_PID=/run/slurmctld-mini.pid
SLURMD_PID_PREFIX=/run/slurmd-mini-      # + node name + .pid (SlurmdPidFile uses %n)
export DEBIAN_FRONTEND=noninteractive
die() { echo "slurm-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts munged, slurmctld and slurmd)"
[ -r "$CLUSTER_CONF" ] || die "missing $CLUSTER_CONF"
[ -r "$GRES_CONF" ] || die "missing $GRES_CONF"
# one slurm-up at a time (e.g. pytest-xdist workers each run the session fixture); the daemons
# are started with `9>&-` so that none of them inherits (and holds) the lock
exec 9>/run/slurm-up-mini.lock
flock -w 300 9 || die "another slurm-up.sh holds /run/slurm-up-mini.lock"

# alive PIDFILE [COMM]: the pid in the file runs, is not a zombie, and (if given) is named COMM.
alive() {
  [ -s "$1" ] || return 1
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  [ -z "${2:-}" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
# stop PIDFILE COMM: SIGTERM, wait up to 20 s, then SIGKILL; only if the pid is still COMM.
stop() {
  alive "$1" "$2" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do alive "$1" "$2" || break; sleep 0.1; done
  alive "$1" "$2" && kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
show_log() {  # the daemon's own fatal/error lines (a bad config makes it exit with "fatal: ...")
  grep -hE 'fatal|error' "$@" 2>/dev/null | grep -v -e 'pmix' -e 'MPI: Cannot create context' | tail -5 >&2 || true
}
need_pkgs() { for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || return 0; done; return 1; }
apt_install() {
  need_pkgs "$@" || return 0
  command -v apt-get >/dev/null || die "packages $* are missing and there is no apt-get (Debian 12 expected)"
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
    timeout 300 apt-get update -qq
    timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"; }
}

# 1. packages ------------------------------------------------------------------------------
apt_install slurm-wlm slurmctld slurmd slurm-client munge

# 2. munge (as user munge; Debian's postinst made /etc/munge/munge.key) --------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 9>&- || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 1 50); do timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge/munged.log)"

# 3. config --------------------------------------------------------------------------------
install -d -m 0755 "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$STATE/fakegpu" "$LOG"
# Fake GPUs: every File= of gres.conf becomes a symlink to /dev/null (stat() follows it to a
# character device; Slurm 22.05 drops file-less GPUs and rejects plain files).
while read -r spec; do
  case "$spec" in "$STATE/fakegpu/"*) ;; *) die "gres.conf File=$spec is not under $STATE/fakegpu/";; esac
  case "$spec" in *..*) die "gres.conf File=$spec must not contain '..'";; esac
  if [[ "$spec" =~ ^(.*)\[([0-9,-]+)\]$ ]]; then
    base="${BASH_REMATCH[1]}"; IFS=',' read -ra parts <<<"${BASH_REMATCH[2]}"
    for part in "${parts[@]}"; do
      lo="${part%-*}"; hi="${part#*-}"
      for i in $(seq "$lo" "$hi"); do install -d -m 0755 "$(dirname "$base$i")"; ln -sfn /dev/null "$base$i"; done
    done
  elif [[ "$spec" == *[* ]]; then die "gres.conf File=$spec: only one trailing [a-b,c] range is supported"
  else install -d -m 0755 "$(dirname "$spec")"; ln -sfn /dev/null "$spec"; fi
done < <(grep -v '^[[:space:]]*#' "$GRES_CONF" | grep -oE 'File=[^[:space:]]+' | cut -d= -f2-)

cat > "$CONF_DIR/slurm.conf.new" <<CONF
# local test cluster mimicking Quest + KLC (generated by tests/cluster/slurm-up.sh; do not edit)
ClusterName=${CLUSTER}
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
EnforcePartLimits=ALL
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/d/%n
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID_PREFIX}%n.pid
SlurmctldLogFile=${LOG}/slurmctld.log
SlurmdLogFile=${LOG}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG}/jobcomp.log
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
DefMemPerCPU=1000

# ---- tests/cluster/cluster.conf ----
$(cat "$CLUSTER_CONF")
CONF
{ echo "# generated by tests/cluster/slurm-up.sh from tests/cluster/gres.conf; do not edit"; cat "$GRES_CONF"; } > "$CONF_DIR/gres.conf.new"
changed=0
for f in slurm.conf gres.conf; do
  if cmp -s "$CONF_DIR/$f.new" "$CONF_DIR/$f"; then rm -f "$CONF_DIR/$f.new"; else mv "$CONF_DIR/$f.new" "$CONF_DIR/$f"; changed=1; fi
done

# Node names (hostlist-expanded by Slurm itself; scontrol needs no controller for this).
spec=$(grep -oE '^[[:space:]]*NodeName=[^[:space:]]+' "$CLUSTER_CONF" | sed 's/.*NodeName=//' | grep -vx DEFAULT | paste -sd, -)
[ -n "$spec" ] || die "no NodeName lines in $CLUSTER_CONF"
mapfile -t NODES < <(timeout 10 scontrol show hostnames "$spec")
[ "${#NODES[@]}" -gt 0 ] || die "cannot expand node names '$spec' (does scontrol accept the generated $CONF_DIR/slurm.conf? see above)"

# 4. slurmctld + one slurmd per node -------------------------------------------------------
if [ "$changed" = 1 ]; then   # a changed config restarts everything (also slurmds of removed nodes)
  for p in "$SLURMD_PID_PREFIX"*.pid /run/slurmd-mini.pid; do [ -e "$p" ] && stop "$p" slurmd; done
  stop "$CTLD_PID" slurmctld
fi
started=0
if ! alive "$CTLD_PID" slurmctld; then
  /usr/sbin/slurmctld </dev/null >>"$LOG/slurmctld.stderr" 2>&1 9>&- || { show_log "$LOG/slurmctld.stderr" "$LOG/slurmctld.log"; die "slurmctld did not start"; }
  started=1
fi
for n in "${NODES[@]}"; do
  install -d -m 0755 "$STATE/d/$n"
  if ! alive "$SLURMD_PID_PREFIX$n.pid" slurmd; then
    /usr/sbin/slurmd -N "$n" </dev/null >>"$LOG/slurmd-$n.stderr" 2>&1 9>&- || { show_log "$LOG/slurmd-$n.stderr" "$LOG/slurmd-$n.log"; die "slurmd -N $n did not start"; }
    started=1
  fi
done
check_daemons() {
  alive "$CTLD_PID" slurmctld || { echo "slurm-up: slurmctld is not running:" >&2; show_log "$LOG/slurmctld.stderr" "$LOG/slurmctld.log"; exit 1; }
  for n in "${NODES[@]}"; do
    alive "$SLURMD_PID_PREFIX$n.pid" slurmd || { echo "slurm-up: slurmd for $n is not running:" >&2; show_log "$LOG/slurmd-$n.stderr" "$LOG/slurmd-$n.log"; exit 1; }
  done
}
[ "$started" = 1 ] && sleep 0.3
check_daemons

# 5. wait until every node is usable (a node drained by an earlier bad config is resumed) ---
# sinfo blocks for a long time when slurmctld is down, hence `timeout` and the deadline.
deadline=$((SECONDS + WAIT_S)); tries=0; bad=""
while :; do
  tries=$((tries + 1))
  check_daemons
  states=$(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)
  bad=""
  for n in "${NODES[@]}"; do
    st=$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$states")
    case "$st" in
      idle|mixed|allocated|completing) ;;
      *drain*|down*|inval*|fail*)
        bad="$bad $n=$st"
        [ "$tries" -gt 4 ] && { timeout 5 scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true; } ;;
      *) bad="$bad $n=${st:-unknown}";;
    esac
  done
  [ -z "$bad" ] && break
  if [ $SECONDS -ge $deadline ]; then
    timeout 5 sinfo -R -h -o '  %N: %E' >&2 2>/dev/null || true   # slurmctld's reason, e.g. a GRES count mismatch
    die "nodes not usable after ${WAIT_S}s:$bad (see $LOG/slurmctld.log and $LOG/slurmd-NODE.log)"
  fi
  sleep 0.3
done
timeout 10 sinfo
