#!/usr/bin/env bash
# slurm-down.sh - stop what slurm-up.sh started, by PID file (never by process name).
# --purge also deletes the state (job ids restart at 1), the logs and the generated config.
set -uo pipefail
STATE=/var/spool/slurm-mini
LOG=/var/log/slurm-mini
CTLD_PID=/run/slurmctld-mini.pid
case "${1:-}" in ""|--purge) ;; *) echo "usage: $0 [--purge]" >&2; exit 2;; esac

alive() {  # alive PIDFILE COMM: the pid in the file runs, is not a zombie and is named COMM
  [ -s "$1" ] || return 1
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
stop_pidfile() {  # stop_pidfile PIDFILE COMM: SIGTERM, wait up to 20 s, then SIGKILL
  alive "$1" "$2" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 200); do alive "$1" "$2" || break; sleep 0.1; done
  alive "$1" "$2" && kill -9 "$pid" 2>/dev/null
  rm -f "$1"
}

if alive "$CTLD_PID" slurmctld; then
  timeout 10 scancel --quiet --user=root 2>/dev/null || true   # kill queued/running jobs first
fi
for p in /run/slurmd-mini-*.pid /run/slurmd-mini.pid; do [ -e "$p" ] && stop_pidfile "$p" slurmd; done
stop_pidfile "$CTLD_PID" slurmctld
stop_pidfile /run/munge/munged.pid munged
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$STATE" "$LOG" /etc/slurm/slurm.conf /etc/slurm/gres.conf
fi
exit 0
