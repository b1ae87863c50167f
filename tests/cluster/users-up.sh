#!/usr/bin/env bash
# users-up.sh - ordinary (unprivileged) users for the serving tests, as root. Idempotent.
# The tests submit jobs as kit-lab-a and attack them as kit-lab-b, so that file modes, the
# sticky port directory and the key guard are exercised by someone who is not root.
# They run kit with the test virtualenv's Python: if its interpreter sits under a directory
# other users cannot traverse (a Python built in /root), that directory gets o+x (traverse
# only, never read), which is what a shared install on a cluster has anyway.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "users-up: must run as root" >&2; exit 1; }
PYTHON="${1:?usage: users-up.sh PYTHON}"
for user in kit-lab-a kit-lab-b kit-staff kit-other; do
  getent group "$user" >/dev/null || groupadd "$user"
  id -u "$user" >/dev/null 2>&1 || useradd --no-create-home --home-dir /nonexistent --shell /bin/bash -g "$user" "$user"
done
# kit-staff deploys shared services and hands their keys to the labs: it belongs to both labs'
# groups (to chgrp their key files); kit-other belongs to none.
usermod -a -G kit-lab-a,kit-lab-b kit-staff
real=$(readlink -f "$PYTHON")
dir=$(dirname "$real")
while [ "$dir" != / ]; do
  [ -x "$dir" ] && runuser -u kit-lab-a -- test -x "$dir" 2>/dev/null || chmod o+x "$dir"
  dir=$(dirname "$dir")
done
runuser -u kit-lab-a -- "$PYTHON" -c "import kit, torch, transformers" \
  || { echo "users-up: kit-lab-a cannot run $PYTHON with kit, torch and transformers" >&2; exit 1; }
